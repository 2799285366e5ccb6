"""report.json and the closing summary: what was kept, what was dropped and why, and where time went.

``python -m curate.report OUT [--seed N]`` rebuilds OUT/report.html (curate.html_report) from the
report.json and decisions already in OUT (a local folder or any fsspec path), recomputing nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass

from curate import fs
from curate.decisions import InputCount, recorded_count
from curate.io import read_parquet, write_bytes

# Stages whose rows (kept rows end at 'write') stand for the samples that reached near dedup.
_AFTER_NEAR = ("near_dedup", "semdedup", "write")
_TOP_GROUPS = 10


class ConservationError(Exception):
    """Decision rows and the input counted where it was read disagree; the message is one line."""


@dataclass(frozen=True)
class DecisionFile:
    """One decisions file as the conservation check sees it: its name, its sample rows (shard-level
    rows, source_index < 0, are not samples) and the input its reader counted (None: not counted)."""
    name: str
    rows: int
    count: InputCount | None


def _series(name: str) -> str:
    """The file name without its shard number: files of one series number the same input shards
    (``NNNNN.parquet`` read shards, ``ingest-NNNNN.parquet`` URL-table shards)."""
    return re.sub(r"\d+", "N", name)


def conservation_problems(files: list[DecisionFile], written: int | None = None, kept: int = 0) -> list[str]:
    """Where "every input sample is one decision row" fails, one line each (design principle:
    nothing is lost silently).

    Per counted file: sample rows + rows passed on to a later stage == samples counted where the
    shard was read. Per series: every input shard 0 .. n-1 has its file. An ingest shard's rows
    passed on (downloaded) == the samples later read from that raw shard. ``written``: samples in
    the curated shards (sizes.json), which must equal the kept rows.
    """
    problems = []
    by_name = {f.name: f for f in files}
    series: dict[str, list[DecisionFile]] = {}
    for f in files:
        if f.count is None:
            continue
        series.setdefault(_series(f.name), []).append(f)
        c = f.count
        if f.rows + (c.passed_on or 0) != c.samples:
            passed = f" + {c.passed_on} passed on" if c.passed_on else ""
            problems.append(f"decisions/{f.name} holds {f.rows} sample rows{passed} for the {c.samples} samples "
                            f"read from input shard {c.shard_index}")
        if c.passed_on:
            later = by_name.get(f"{c.shard_index:05d}.parquet")
            read = later.count.samples if later and later.count else None
            if read != c.passed_on:
                problems.append(f"ingest shard {c.shard_index} downloaded {c.passed_on} samples, but "
                                + (f"{read} were read from its raw shard" if read is not None else
                                   f"decisions/{c.shard_index:05d}.parquet does not count them"))
    for name, members in sorted(series.items()):
        totals = {f.count.shards for f in members}
        have = {f.count.shard_index for f in members}
        missing = sorted(set(range(max(totals))) - have)
        if len(totals) > 1:
            problems.append(f"the decisions files ({name.replace('N', '#')}) were written for different numbers of "
                            f"input shards ({' and '.join(map(str, sorted(totals)))}): the input changed between runs "
                            "into this folder; run again with --overwrite")
        if missing:
            problems.append(f"input shard {missing[0]} of {max(totals)} has no decisions file "
                            f"({name.replace('N', f'{missing[0]:05d}')})"
                            + (f", nor do {len(missing) - 1} more" if len(missing) > 1 else ""))
    if written is not None and written != kept:
        problems.append(f"{kept} samples kept by the decisions, but {written} written into the curated shards "
                        "(shards/sizes.json)")
    return problems


def count_decisions(decisions_dir: str, written: int | None = None) -> dict:
    """Counts from OUT/decisions/*.parquet; shard-level rows (unreadable tars) are not samples.

    Also the samples that reached near dedup and the largest duplicate groups (members, the kept
    sample included), for the guard rails (``curate.guard_rails``), and the conservation check
    (``conservation_problems``; ``written``: samples in the curated shards, None when none are written).
    """
    reasons, stages, groups = Counter(), Counter(), Counter()
    kept = samples = shard_errors = near_input = 0
    files = []
    for path in fs.glob(fs.join(decisions_dir, "*.parquet")):
        table = read_parquet(path, columns=["source_index", "kept", "reason", "stage", "dup_group"]).to_pydict()
        rows = 0
        for index, k, reason, stage, group in zip(table["source_index"], table["kept"], table["reason"],
                                                  table["stage"], table["dup_group"], strict=True):
            if index < 0:
                shard_errors += 1
                continue
            rows += 1
            near_input += stage in _AFTER_NEAR
            if k:
                kept += 1
            else:
                reasons[reason] += 1
                stages[stage] += 1
                if group:
                    groups[group] += 1
        samples += rows
        files.append(DecisionFile(fs.basename(path), rows, recorded_count(path)))
    largest = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_GROUPS]
    counted = [f.count for f in files if f.count is not None]
    return {"input": samples, "kept": kept, "dropped": samples - kept,
            "dropped_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "dropped_by_stage": dict(sorted(stages.items())), "unreadable_shards": shard_errors,
            "near_dedup_input": near_input,
            "largest_duplicate_groups": {g: n + 1 for g, n in largest},  # + the kept sample (eval: the item)
            "conservation": {
                # counted where read; a shard's rows passed on to a later stage are counted there again
                "input_read": sum(c.samples - (c.passed_on or 0) for c in counted),
                "files_checked": len(counted),
                "files_uncounted": sorted(f.name for f in files if f.count is None),
                "problems": conservation_problems(files, written, kept)}}


def check_conservation(counts: dict) -> None:
    """Raise ConservationError with the first problem (and how many more) found by count_decisions."""
    problems = counts["conservation"]["problems"]
    if problems:
        more = f" (and {len(problems) - 1} more problems, see report.json)" if len(problems) > 1 else ""
        raise ConservationError(f"samples lost: {problems[0]}{more}")


def write_report(out_dir: str, pipeline: str, config: dict, counts: dict, wall_seconds: float,
                 stage_seconds: dict, shards: dict | None, runner: str, warnings: list[str] = (),
                 synthetic_input: bool = False, cpu_seconds: float | None = None, sections: dict | None = None) -> dict:
    """``stage_seconds``: curate.timing.stage_seconds' {"wall": ..., "cpu": ...}; ``cpu_seconds``:
    CPU time of this process and its ended worker processes over the run (curate.timing.process_cpu_seconds);
    ``shards`` is sizes.json's content, or None for a pipeline that writes no shards;
    ``synthetic_input``: the samples come from curate.synth (read back by runs on stored scores);
    ``sections``: what the pipeline adds (laion_filter: ``coverage``, curate/coverage.py)."""
    report = {
        "pipeline": pipeline,
        "counts": counts,
        "warnings": list(warnings),
        "synthetic_input": synthetic_input,
        "writes_shards": shards is not None,
        "shards": {"count": len(shards or {}), "samples": sum((shards or {}).values())},
        "time": {"wall_seconds": round(wall_seconds, 2),
                 # this process + local worker processes once ended; remote workers are not in it
                 "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 2),
                 "samples_per_second": round(counts["input"] / wall_seconds, 1) if wall_seconds else None,
                 # per stage, summed over workers: where the time went, not elapsed time (curate/timing.py)
                 "stage_wall_seconds": {k: round(v, 2) for k, v in sorted(stage_seconds.get("wall", {}).items())},
                 "stage_cpu_seconds": {k: round(v, 2) for k, v in sorted(stage_seconds.get("cpu", {}).items())}},
        "runner": runner,
        **(sections or {}),
        "config": config,
    }
    # allow_nan=False: bare NaN is not JSON (the config refuses NaN and infinity; counts and times are finite)
    write_bytes(fs.join(out_dir, "report.json"), json.dumps(report, indent=2, sort_keys=False, allow_nan=False).encode())
    return report


def summary(report: dict, out_dir: str, outputs: str | None = None) -> str:
    """The closing lines; ``outputs`` names where a pipeline's outputs are, when not shards or embeddings."""
    c = report["counts"]
    pct = (lambda n: f"{100 * n / c['input']:.1f}%") if c["input"] else (lambda n: "-")
    kept = "kept" if report["writes_shards"] or outputs else "scored"
    lines = [(f"{report['pipeline']}: {c['input']} samples in, {c['kept']} {kept} ({pct(c['kept'])}), "
              f"{c['dropped']} dropped, in {report['time']['wall_seconds']:.1f}s "
              f"({report['time']['samples_per_second']} samples/s)")]
    for reason, n in c["dropped_by_reason"].items():
        lines.append(f"  dropped {reason:<24} {n:>8}  {pct(n)}")
    if c["unreadable_shards"]:
        lines.append(f"  unreadable shards: {c['unreadable_shards']} (see decisions, stage 'read')")
    conservation = c.get("conservation", {})
    if conservation.get("problems"):
        lines.append(f"  conservation check FAILED: {conservation['problems'][0]}")
    if conservation.get("files_uncounted"):
        lines.append(f"  input not counted where read for {len(conservation['files_uncounted'])} decisions files: "
                     "conservation unchecked there")
    where = (f"{report['shards']['count']} curated shards in {fs.join(out_dir, 'shards')}"
             if report["writes_shards"] else outputs or f"embeddings in {fs.join(out_dir, 'embeddings')}")
    if report.get("coverage"):
        from curate.coverage import summary_lines

        lines.extend(summary_lines(report["coverage"]))
    lines.extend(f"  warning: {w}" for w in report.get("warnings", ()))
    lines.append(f"  {where}; decisions in {fs.join(out_dir, 'decisions')}; "
                 f"report {fs.join(out_dir, 'report.json')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m curate.report OUT``: write OUT/report.html again from what OUT holds."""
    from curate import html_report

    ap = argparse.ArgumentParser(prog="python -m curate.report", description=main.__doc__.split(":", 1)[1].strip())
    ap.add_argument("out", help="the output folder of a curate run (local or fsspec path, e.g. gs://bucket/run)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the thumbnail samples (default 0, as a run writes)")
    args = ap.parse_args(argv)
    try:
        path = html_report.write(fs.abspath(args.out), seed=args.seed)
    except html_report.ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
