"""``python -m curate.inspect OUT KEY [--image FILE]``: one sample's whole story, in the terminal.

Its decision and every value behind it (the decision row's columns, and the settings of the rule
that dropped it, from report.json), its caption and source shard and position, the sample kept in
its place and that sample's group, where a kept sample sits in the curated shards; ``--image FILE``
writes its image bytes, as the input shard holds them. Read from OUT alone (local or fsspec path):
the decisions, report.json, the curated shards' parquet and the input shard; nothing is recomputed.
A key that names several input samples (``duplicate_key``) tells each one's story.
"""
from __future__ import annotations

import argparse
import json
import sys

import pyarrow as pa
import pyarrow.compute as pc

from curate import fs
from curate.html_report import COLUMNS, decision_files, image_of, iter_decisions

ALL_COLUMNS = (*COLUMNS, "image_format", "caption_chars", "sha256", "phash")
# The settings behind each drop reason (config keys; README "Drop reasons"), shown beside the values.
RULE_SETTINGS = {
    "decompression_bomb": ("filters.max_image_pixels",),
    "image_too_small": ("filters.min_image_size",),
    "extreme_aspect_ratio": ("filters.max_aspect_ratio",),
    "caption_too_short": ("filters.min_caption_words", "filters.min_caption_chars"),
    "boilerplate_caption": ("filters.boilerplate_captions",),
    "low_clip_score": ("select.mode", "select.clip_threshold", "select.language_thresholds"),
    "outside_top_fraction": ("select.mode", "select.fraction"),
    "contaminated": ("decontaminate.eval_set", "decontaminate.threshold"),
    "duplicate_url_caption": ("dedup.url_caption",),
    "near_duplicate": ("dedup.near_method", "dedup.phash_max_distance", "dedup.near_threshold"),
    "semantic_duplicate": ("dedup.semdedup.eps", "dedup.semdedup.target_fraction"),
}
GROUP_LINES = 20  # members of a duplicate group listed


class InspectError(Exception):
    """The folder or the key cannot be inspected; the message is one line."""


def rows_where(out: str, column: str, value: str) -> list[dict]:
    """Decision rows whose ``column`` equals ``value``, in file and row order."""
    rows = []
    for batch in iter_decisions(out, ALL_COLUMNS, where=lambda b: pc.equal(b.column(column), pa.scalar(value))):
        rows.extend(batch.to_pylist())
    return rows


def curated_position(out: str, key: str) -> tuple[str, int] | None:
    """(curated tar, position in it) of a kept sample, from OUT/shards/*.parquet (one row per tar sample)."""
    from curate.io import read_parquet

    for path in sorted(fs.glob(fs.join(out, "shards", "*.parquet"))):
        keys = read_parquet(path, columns=["key"]).column("key").to_pylist()
        if key in keys:
            return fs.join(fs.dirname(path), fs.basename(path)[: -len(".parquet")] + ".tar"), keys.index(key)
    return None


def input_members(row: dict) -> dict | None:
    """The sample's members as its input shard holds them (None: not a readable shard or position)."""
    from curate.io import TarReadError, is_shard_name
    from curate.raw_shards import read_members

    shard, index = row["source_shard"], row["source_index"]
    if index is None or index < 0 or not shard or not is_shard_name(shard):
        return None
    try:
        return read_members(shard, {index}).get((shard, index))
    except (OSError, TarReadError):
        return None


def _value(v) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def _status(row: dict) -> str:
    return f"kept (stage {row['stage']})" if row["kept"] else f"dropped: {row['reason']} (stage {row['stage']})"


def _measures(row: dict) -> str:
    bits = []
    if row.get("dup_similarity") is not None:
        bits.append(f"cos {_value(row['dup_similarity'])}")
    if row.get("dup_hash_distance") is not None:
        bits.append(f"hash distance {row['dup_hash_distance']}")
    return ", ".join(bits)


def story(out: str, row: dict, config: dict) -> list[str]:
    """The lines about one decision row: decision, values, settings, caption, source, group."""
    lines = [f"{row['key']}: {_status(row)}",
             f"  source            {row['source_shard']} #{row['source_index']} (position in that input shard)"]
    skip = {"key", "kept", "reason", "stage", "source_shard", "source_index"}
    lines += [f"  {name:<17} {_value(row[name])}" for name in ALL_COLUMNS if name not in skip and row.get(name) is not None]
    settings = [f"{k}={json.dumps(config[k])}" for k in RULE_SETTINGS.get(row["reason"], ()) if k in config]
    if settings:
        lines.append(f"  rule settings     {', '.join(settings)}")
    members = input_members(row)
    if members is not None:
        caption = members.get("txt", b"").decode("utf-8", "replace")
        image = image_of(members)
        lines.append(f"  caption           {json.dumps(caption, ensure_ascii=False)}")
        member = f"{row['key']}.{image[0]}, {len(image[1]):,} bytes" if image else "none"
        lines.append(f"  image member      {member}")
    else:
        lines.append("  input sample      not readable here (input shard moved, or not a tar)")
    if row["kept"]:
        where = curated_position(out, row["key"])
        if where:
            lines.append(f"  curated as        {where[0]} #{where[1]}")
    if row.get("kept_instead"):
        kept = [r for r in rows_where(out, "key", row["kept_instead"]) if r["kept"]]
        lines.append(f"kept instead: {row['kept_instead']}"
                     + (f": {_status(kept[0])}, clip_score {_value(kept[0]['clip_score'])}, "
                        f"{kept[0]['source_shard']} #{kept[0]['source_index']}" if kept else " (no kept row found)"))
    keeper = row["kept_instead"] or (row["key"] if row["kept"] else None)
    if keeper:
        lines += group_lines(out, keeper, row)
    return lines


def group_lines(out: str, keeper: str, row: dict) -> list[str]:
    """The samples dropped in favour of ``keeper`` (the kept sample and every row naming it)."""
    group = rows_where(out, "kept_instead", keeper)
    if not group:
        return []
    names = sorted({r["dup_group"] for r in group if r["dup_group"]})
    lines = [f"group of {keeper} ({', '.join(names) or 'no group name'}): {len(group) + 1} samples"]
    lines.append(f"  {keeper:<20} kept" + ("   <- this sample" if row["key"] == keeper and row["kept"] else ""))
    for r in group[:GROUP_LINES]:
        this = "   <- this sample" if (r["source_shard"], r["source_index"]) == (row["source_shard"], row["source_index"]) else ""
        lines.append(f"  {r['key']:<20} {r['reason']:<20} {_measures(r)}{this}")
    if len(group) > GROUP_LINES:
        lines.append(f"  ... and {len(group) - GROUP_LINES:,} more")
    return lines


def inspect(out: str, key: str) -> tuple[list[dict], list[str]]:
    """(rows, lines): the key's decision rows and their stories."""
    if not decision_files(out):
        raise InspectError(f"{out!r} holds no decisions (decisions/*.parquet): not the output folder of a curate run")
    rows = rows_where(out, "key", key)
    if not rows:
        raise InspectError(f"no decision for key {key!r} in {fs.join(out, 'decisions')}")
    report_path = fs.join(out, "report.json")
    config = json.loads(fs.read_bytes(report_path)).get("config", {}) if fs.exists(report_path) else {}
    lines = [f"{key} names {len(rows)} input samples"] if len(rows) > 1 else []
    for i, row in enumerate(rows):
        if i:
            lines.append("")
        lines += story(out, row, config)
    return rows, lines


def write_image(row: dict, path: str) -> str:
    """The sample's image bytes, as the input shard holds them, into ``path``."""
    from curate.io import write_bytes

    members = input_members(row)
    image = image_of(members) if members is not None else None
    if image is None:
        raise InspectError(f"{row['key']} has no image to write: its input shard holds no image member for it "
                           f"({row['source_shard']} #{row['source_index']})")
    from curate import fs
    fs.makedirs(fs.dirname(fs.abspath(path)))  # --image into a folder not made yet
    write_bytes(path, image[1])
    return f"wrote {row['key']}.{image[0]} ({len(image[1]):,} bytes) to {path}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curate.inspect", description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("out", help="the output folder of a curate run (local or fsspec path)")
    ap.add_argument("key", help="the sample's key")
    ap.add_argument("--image", metavar="FILE", help="write the sample's image (its input bytes) to FILE")
    args = ap.parse_args(argv)
    try:
        rows, lines = inspect(fs.abspath(args.out), args.key)
        print("\n".join(lines))
        if args.image:
            print(write_image(rows[0], args.image))
    except InspectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
