"""report.json and the closing summary: what was kept, what was dropped and why, and where time went."""
from __future__ import annotations

import json
from collections import Counter

from curate import fs
from curate.io import read_parquet, write_bytes

# Stages whose rows (kept rows end at 'write') stand for the samples that reached near dedup.
_AFTER_NEAR = ("near_dedup", "semdedup", "write")
_TOP_GROUPS = 10


def count_decisions(decisions_dir: str) -> dict:
    """Counts from OUT/decisions/*.parquet; shard-level rows (unreadable tars) are not samples.

    Also the samples that reached near dedup and the largest duplicate groups (members, the kept
    sample included), for the guard rails (``curate.guard_rails``).
    """
    reasons, stages, groups = Counter(), Counter(), Counter()
    kept = samples = shard_errors = near_input = 0
    for path in fs.glob(fs.join(decisions_dir, "*.parquet")):
        table = read_parquet(path, columns=["source_index", "kept", "reason", "stage", "dup_group"]).to_pydict()
        for index, k, reason, stage, group in zip(table["source_index"], table["kept"], table["reason"],
                                                  table["stage"], table["dup_group"], strict=True):
            if index < 0:
                shard_errors += 1
                continue
            samples += 1
            near_input += stage in _AFTER_NEAR
            if k:
                kept += 1
            else:
                reasons[reason] += 1
                stages[stage] += 1
                if group:
                    groups[group] += 1
    largest = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_GROUPS]
    return {"input": samples, "kept": kept, "dropped": samples - kept,
            "dropped_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "dropped_by_stage": dict(sorted(stages.items())), "unreadable_shards": shard_errors,
            "near_dedup_input": near_input,
            "largest_duplicate_groups": {g: n + 1 for g, n in largest}}  # + the kept sample (eval: the item)


def write_report(out_dir: str, pipeline: str, config: dict, counts: dict, wall_seconds: float,
                 stage_seconds: dict, shards: dict | None, runner: str, warnings: list[str] = (),
                 synthetic_input: bool = False) -> dict:
    """``shards`` is sizes.json's content, or None for a pipeline that writes no shards;
    ``synthetic_input``: the samples come from curate.synth (read back by runs on stored scores)."""
    report = {
        "pipeline": pipeline,
        "counts": counts,
        "warnings": list(warnings),
        "synthetic_input": synthetic_input,
        "writes_shards": shards is not None,
        "shards": {"count": len(shards or {}), "samples": sum((shards or {}).values())},
        "time": {"wall_seconds": round(wall_seconds, 2),
                 "samples_per_second": round(counts["input"] / wall_seconds, 1) if wall_seconds else None,
                 # summed over workers: where the work went, not elapsed time
                 "stage_cpu_seconds": {k: round(v, 2) for k, v in sorted(stage_seconds.items())}},
        "runner": runner,
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
    lines = [f"{report['pipeline']}: {c['input']} samples in, {c['kept']} {kept} ({pct(c['kept'])}), "
             f"{c['dropped']} dropped, in {report['time']['wall_seconds']:.1f}s "
             f"({report['time']['samples_per_second']} samples/s)"]
    for reason, n in c["dropped_by_reason"].items():
        lines.append(f"  dropped {reason:<24} {n:>8}  {pct(n)}")
    if c["unreadable_shards"]:
        lines.append(f"  unreadable shards: {c['unreadable_shards']} (see decisions, stage 'read')")
    where = (f"{report['shards']['count']} curated shards in {fs.join(out_dir, 'shards')}"
             if report["writes_shards"] else outputs or f"embeddings in {fs.join(out_dir, 'embeddings')}")
    lines.extend(f"  warning: {w}" for w in report.get("warnings", ()))
    lines.append(f"  {where}; decisions in {fs.join(out_dir, 'decisions')}; "
                 f"report {fs.join(out_dir, 'report.json')}")
    return "\n".join(lines)
