"""Beam transforms that read raw shards and write curated shards and the decisions table.

Only Create, ParDo, GroupByKey and Flatten are used, so every runner (the Dask runner included)
can run them. Shard ids are assigned here, not by fileio.WriteToFiles, which cannot fix the number
of samples per file; each file is written under a temp name and renamed.
"""
from __future__ import annotations

import io
import json
import logging
import time

import apache_beam as beam
import pyarrow as pa

from curate import fs
from curate.io import (
    IMAGE_EXTS,
    TarGroup,
    TarReadError,
    format_ext,
    is_safe_key,
    is_shard_name,
    iter_tar_groups,
    iter_tar_samples,
    sample_json,
    write_bytes,
    write_parquet,
    write_tar,
)
from curate.outputs import DECISIONS, MAIN, split
from curate.records import DECISION_SCHEMA, READ, UNIQUE_KEYS, WRITE, RawSample, Sample, decision
from curate.timing import add_time

log = logging.getLogger("curate")

UNREADABLE_TAR = "unreadable_tar"
UNSAFE_KEY = "unsafe_key"
# Shapes webdataset itself refuses or splits (see curate.io.TarGroup): refused with their own reason,
# never silently merged or counted twice.
DUPLICATE_MEMBER = "duplicate_member"  # a member name occurs twice in one sample
SPLIT_SAMPLE = "split_sample"          # a key's members come back after other keys' members: the later part
DUPLICATE_KEY = "duplicate_key"


def list_input_shards(spec: str) -> list[str]:
    """A folder, a glob or a single shard (local or gs://, s3://, ...) -> tar paths sorted by path;
    ``.tar``, ``.tar.gz`` and ``.tgz`` may be mixed. Raises ValueError if none match."""
    if fs.isdir(spec):
        paths = [p for p in fs.glob(fs.join(spec, "*")) if is_shard_name(p)]
    else:
        paths = [p for p in fs.glob(spec) if is_shard_name(p)] if any(c in spec for c in "*?[") else (
            [spec] if fs.isfile(spec) else [])
    if not paths:
        raise ValueError(f"no .tar, .tar.gz or .tgz shards found at {spec!r}")
    return sorted(fs.abspath(p) for p in paths)


def is_whole_sample(fields: dict) -> bool:
    """An image member and a caption: a sample that stands on its own."""
    return "txt" in fields and any(ext in fields for ext in IMAGE_EXTS)


def read_problem(group: TarGroup) -> tuple[str, str] | None:
    """(reason, detail) when a sample of a raw tar cannot be taken as it was read, else None.

    A key that comes back after other keys' members is read as webdataset reads it, as a second
    sample: a whole one (image and caption) goes on, and ``UniqueKeys`` keeps one of the two
    (``duplicate_key``); a part (a stray caption, image or json) is refused as ``split_sample``.
    """
    if not is_safe_key(group.key):
        return UNSAFE_KEY, f"member name {group.key!r}"
    if group.earlier_index is not None and not is_whole_sample(group.fields):
        return SPLIT_SAMPLE, (f"key {group.key!r} was read at source_index {group.earlier_index} (members "
                              f"{', '.join(group.earlier_members) or 'none'}) and comes back here, after other keys "
                              f"(members {', '.join(sorted(group.fields)) or 'none'}): a sample's members must be "
                              "adjacent; webdataset reads the parts as separate samples")
    if group.repeated:
        return DUPLICATE_MEMBER, (f"member name repeated in one sample: {', '.join(sorted(set(group.repeated)))} "
                                  "(webdataset refuses it: duplicate file name)")
    return None


def read_shard(shard_index: int, path: str, total: int):
    """(MAIN, RawSample) per sample of one raw shard, in order, as webdataset groups members; a sample
    that cannot be taken as read (``read_problem``) is one (DECISIONS, row), and a broken tar ends as
    one (DECISIONS, row) after the samples read before the damage, never as a crash."""
    count, reading = 0, 0.0
    log.info("reading shard %d/%d %s", shard_index + 1, total, fs.basename(path))
    samples = iter_tar_groups(path)
    try:
        while True:
            # Time only the tar reading: downstream work runs inside the yield.
            t0 = time.perf_counter()
            item = next(samples, None)
            reading += time.perf_counter() - t0
            if item is None:
                break
            count += 1
            raw = RawSample(item.key, shard_index, path, count - 1, item.fields)
            problem = read_problem(item)
            if problem is None:
                yield MAIN, raw
            else:
                yield DECISIONS, decision(raw, False, READ, problem[0], detail=problem[1])
    except TarReadError as e:
        log.warning("shard %s: %s (kept the %d samples before the error)", path, e, count)
        stub = RawSample("", shard_index, path, -1, {})
        yield DECISIONS, decision(stub, False, READ, UNREADABLE_TAR, detail=str(e))
    beam.metrics.Metrics.counter("curate", "shards_read").inc()
    beam.metrics.Metrics.counter("curate", "samples_read").inc(count)
    add_time(READ, reading)
    log.info("done with shard %d/%d %s: %d samples", shard_index + 1, total, fs.basename(path), count)


class _WriteDecisionShard(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        shard_index, rows = element
        rows = sorted(rows, key=lambda r: (r["source_index"], r["key"]))
        for r in rows:
            r.pop("_shard_index", None)
        path = fs.join(self._out_dir, f"{shard_index:05d}.parquet")
        write_parquet(path, pa.Table.from_pylist(rows, schema=DECISION_SCHEMA))
        yield path


class WriteDecisions(beam.PTransform):
    """Decision rows -> OUT/decisions/NNNNN.parquet, one file per input shard, rows in input order."""

    def __init__(self, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, rows):
        return (
            rows
            | "ByInputShard" >> beam.Map(lambda r: (r["_shard_index"], r))
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteDecisionShard(self._out_dir))
        )


SHARD_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("language", pa.string()),
    ("clip_score", pa.float32()), ("width", pa.int32()), ("height", pa.int32()),
    ("sha256", pa.string()), ("url", pa.string()), ("source_shard", pa.string()),
    ("source_index", pa.int64()), ("phash", pa.string()), ("image_format", pa.string()),
])


class _KeepFirstOfKey(beam.DoFn):
    def process(self, element):
        _, samples = element
        first, *others = sorted(samples, key=lambda s: s.order)
        yield MAIN, first
        for s in others:
            yield DECISIONS, decision(s, False, UNIQUE_KEYS, DUPLICATE_KEY,
                                      detail=f"key already used by {first.shard_path}#{first.member_index}")


class UniqueKeys(beam.PTransform):
    """Samples -> one sample per key, the earliest in the input (main), and rows for the others.

    Keys name files inside the curated tars, so they must be unique. Two corpora merged (two
    img2dataset downloads, say) can repeat keys; resolving that before deduplication means that a
    duplicate is only ever dropped in favour of a sample that can be written.
    """

    def expand(self, samples):
        return split(samples
                     | "ByKey" >> beam.Map(lambda s: (s.key, s))
                     | "Group" >> beam.GroupByKey()
                     | "KeepFirst" >> beam.ParDo(_KeepFirstOfKey()), "KeepFirst", "unique")


class PlanShards(beam.DoFn):
    """All kept samples (unique keys) -> (output shard id, samples) in input order,
    samples_per_shard each; also each kept sample's final decision."""

    def __init__(self, samples_per_shard: int):
        self._n = samples_per_shard

    def process(self, element):
        _, samples = element
        samples = sorted(samples, key=lambda s: s.order)
        for start in range(0, len(samples), self._n):
            yield MAIN, (start // self._n, samples[start:start + self._n])
        for s in samples:
            yield DECISIONS, decision(s, True, WRITE)


def read_members(path: str, indices: set[int]) -> dict[tuple[str, int], dict]:
    """The members of the samples at ``indices`` of one raw shard, reading no further than the last.

    A shard damaged past its last wanted sample (``unreadable_tar`` at read time) still gives the
    samples before the damage: reading stops before it, and a read error after them is not theirs.
    """
    found: dict[tuple[str, int], dict] = {}
    try:
        for index, (_key, fields) in enumerate(iter_tar_samples(path)):
            if index in indices:
                found[(path, index)] = fields
                if len(found) == len(indices):
                    break
    except TarReadError:
        if len(found) < len(indices):  # a sample read before now cannot be read: the shard changed
            raise
    return found


# What trainers read as they are: open_clip's WebDataset loader takes jpg;png;jpeg;webp members.
TRAINER_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})


def trainer_image(sample: Sample, data: bytes) -> tuple[str, bytes]:
    """(member extension, bytes) of a curated image: the original bytes named by their real format
    (a PNG read from KEY.jpg is written as KEY.png) when trainers read that format; otherwise (AVIF,
    HEIF, GIF, TIFF, BMP) the decoded image as it was scored (first frame, upright, RGB), re-encoded
    losslessly as PNG. ``image_format`` in KEY.json keeps the input's format."""
    if sample.image_format in TRAINER_FORMATS or sample.image_format is None:
        return format_ext(sample.image_format, sample.image_ext), data
    from filters.image import PIL_DEFAULT_MAX_PIXELS, decode_image

    # it decoded under the run's pixel cap already: allow at least its own size
    decoded = decode_image(data, max(PIL_DEFAULT_MAX_PIXELS, (sample.width or 0) * (sample.height or 0)))
    buf = io.BytesIO()
    decoded.image.save(buf, format="PNG")
    return "png", buf.getvalue()


class WriteShardFn(beam.DoFn):
    """(shard id, samples) -> NNNNN.tar + NNNNN.parquet, re-reading image bytes from the raw shards."""

    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        shard_id, samples = element
        t0 = time.perf_counter()
        wanted: dict[str, dict[int, Sample]] = {}
        for s in samples:
            wanted.setdefault(s.shard_path, {})[s.member_index] = s
        found: dict[tuple[str, int], dict] = {}
        for path, by_index in wanted.items():
            found.update(read_members(path, set(by_index)))
        members, rows = [], []
        for s in samples:
            fields = found[(s.shard_path, s.member_index)]
            meta = sample_json(fields)
            meta.update(key=s.key, caption=s.caption, language=s.language, clip_score=s.clip_score,
                        width=s.width, height=s.height, sha256=s.sha256, source_key=s.key,
                        source_shard=fs.basename(s.shard_path), image_format=s.image_format)
            ext, data = trainer_image(s, fields[s.image_ext])
            members.append((s.key, {ext: data, "txt": s.caption, "json": meta}))
            rows.append({"key": s.key, "caption": s.caption, "language": s.language,
                         "clip_score": s.clip_score, "width": s.width, "height": s.height,
                         "sha256": s.sha256, "url": meta.get("url") if isinstance(meta.get("url"), str) else None,
                         "source_shard": s.shard_path, "source_index": s.member_index, "phash": s.phash,
                         "image_format": s.image_format})
        name = f"{shard_id:05d}"
        fs.makedirs(self._out_dir)
        write_tar(fs.join(self._out_dir, f"{name}.tar"), members)
        write_parquet(fs.join(self._out_dir, f"{name}.parquet"), pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
        add_time(WRITE, time.perf_counter() - t0)
        log.info("wrote shard %s.tar: %d samples", name, len(samples))
        yield f"{name}.tar", len(samples)



class _WriteSizes(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        _, sizes = element
        write_sizes(self._out_dir, dict(sizes))
        yield len(sizes)


def write_sizes(out_dir: str, sizes: dict[str, int]) -> None:
    """sizes.json, as open_clip_train reads it: {"NNNNN.tar": samples}."""
    fs.makedirs(out_dir)
    write_bytes(fs.join(out_dir, "sizes.json"), json.dumps(dict(sorted(sizes.items())), indent=1).encode())


class WriteCuratedShards(beam.PTransform):
    """Kept samples -> OUT/shards/{NNNNN.tar, NNNNN.parquet, sizes.json}; decisions under tag 'decisions'."""

    def __init__(self, out_dir: str, samples_per_shard: int):
        super().__init__()
        self._out_dir = out_dir
        self._n = samples_per_shard

    def expand(self, kept):
        plans = split(
            kept
            | "All" >> beam.Map(lambda s: (0, s))
            | "Gather" >> beam.GroupByKey()
            | "Plan" >> beam.ParDo(PlanShards(self._n)), "Plan", "shards")
        sizes = (
            plans.shards
            | "Spread" >> beam.Reshuffle()
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._out_dir))
            | "AllSizes" >> beam.Map(lambda kv: (0, kv))
            | "GatherSizes" >> beam.GroupByKey()
            | "WriteSizes" >> beam.ParDo(_WriteSizes(self._out_dir))
        )
        return {"decisions": plans.decisions, "sizes": sizes}
