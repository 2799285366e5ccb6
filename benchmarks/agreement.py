"""Agreement of two runs over the same samples (two decode paths): read their decisions, print how
their scores, decisions, perceptual hashes and recorded sizes differ. Used by decode_speed.py
(cpu vs cpu_fast) and decode_agreement.py (cpu vs gpu)."""
from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.parquet as pq
from curate.filters import phash


def decisions(out: str) -> dict:
    """key -> decision row (key, kept, reason, clip_score, phash, width, height) of a run's output."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
        t = pq.read_table(path, columns=["key", "kept", "reason", "clip_score", "phash", "width", "height"])
        for r in t.to_pylist():
            rows[r["key"]] = r
    return rows


def agreement(a: dict, b: dict, threshold: float) -> list[str]:
    """The printed lines for one corpus: |score difference| percentiles and identical scores, scores
    on the other side of ``threshold``, decisions (kept/reason) that differ, perceptual-hash bits
    that differ, recorded sizes that agree."""
    both = [k for k in a if a[k]["clip_score"] is not None and b.get(k, {}).get("clip_score") is not None]
    diff = np.array([abs(a[k]["clip_score"] - b[k]["clip_score"]) for k in both])
    side = sum((a[k]["clip_score"] >= threshold) != (b[k]["clip_score"] >= threshold) for k in both)
    other = lambda k: (b.get(k, {}).get("kept"), b.get(k, {}).get("reason"))  # noqa: E731
    changed = [k for k in a if (a[k]["kept"], a[k]["reason"]) != other(k)]
    hashed = [k for k in a if a[k]["phash"] and b.get(k, {}).get("phash")]
    bits = np.array([phash.distance(a[k]["phash"], b[k]["phash"]) for k in hashed])
    sizes = sum((a[k]["width"], a[k]["height"]) == (b.get(k, {}).get("width"), b.get(k, {}).get("height"))
                for k in a)
    how = ", ".join(f"{a[k]['reason'] or 'kept'} -> {other(k)[1] or 'kept'}" for k in changed[:6])
    pct = lambda x, q: float(np.percentile(x, q)) if len(x) else float("nan")  # noqa: E731
    return [
        f"scored in both: {len(both)} (identical scores: {int((diff == 0).sum())}); |score difference| p50 "
        f"{pct(diff, 50):.4f}, p90 {pct(diff, 90):.4f}, p99 {pct(diff, 99):.4f}, "
        f"max {diff.max() if len(diff) else float('nan'):.4f}",
        f"on the other side of clip_threshold {threshold}: {side} of {len(both)}",
        f"final decisions that differ (kept/reason): {len(changed)} of {len(a)}" + (f" ({how})" if how else ""),
        f"perceptual-hash bits that differ (of 64): p50 {pct(bits, 50):.0f}, p90 {pct(bits, 90):.0f}, "
        f"max {bits.max() if len(bits) else 0}; hashes identical: {int((bits == 0).sum())} of {len(bits)}",
        f"same width and height in both: {sizes} of {len(a)}",
    ]
