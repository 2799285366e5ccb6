"""How right a deduplication is, against a corpus's ground truth: the built-in corpus's
``ground_truth.parquet`` (``curate.synth``) or a foreign corpus's ``OUT_DIR.truth.json``
(``curate.photo_corpus``). ``benchmarks/dedup_quality.py`` prints these scores; tests assert them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow.parquet as pq

from curate import records

DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")
# Rows of these stages never reached dedup: neither they nor their copies say anything about it.
BEFORE_DEDUP = records.STAGES[:records.STAGES.index(records.UNIQUE_KEYS)]


@dataclass(frozen=True)
class Truth:
    group: dict[str, str]  # key -> key of the image it shows (its original's, or its own)
    kind: dict[str, str]   # key -> "distinct" | "exact_copy" | "near_copy"


def load_truth(corpus_dir: str) -> Truth:
    """The truth of a corpus written by ``curate.synth`` or ``curate.photo_corpus``."""
    synth_truth = os.path.join(corpus_dir, "ground_truth.parquet")
    if os.path.exists(synth_truth):
        kinds = {"exact_duplicate": "exact_copy", "near_duplicate": "near_copy"}
        rows = pq.read_table(synth_truth).to_pylist()
        kind = {r["key"]: kinds.get(r["kind"], "distinct") for r in rows}
        group = {r["key"]: r["original_key"] if kind[r["key"]] != "distinct" else r["key"] for r in rows}
        return Truth(group, kind)
    from curate.photo_corpus import default_truth_path

    with open(default_truth_path(corpus_dir)) as f:
        samples = json.load(f)["samples"]
    return Truth({k: v["original"] or k for k, v in samples.items()}, {k: v["kind"] for k, v in samples.items()})


def pair_scores(truth: Truth, keys: list[str], pairs: set[tuple[str, str]]) -> dict:
    """Precision and recall of near-duplicate ``pairs`` (unordered key pairs) among ``keys``: a true
    pair shows the same image (a copy and its original, or two copies of one original)."""
    members: dict[str, list[str]] = {}
    for k in keys:
        members.setdefault(truth.group[k], []).append(k)
    true = {frozenset((a, b)) for m in members.values() for i, a in enumerate(m) for b in m[i + 1:]}
    found = {frozenset(p) for p in pairs}
    hits = len(found & true)
    return {"pairs": len(found), "true_pairs": len(true), "false_pairs": len(found) - hits,
            "precision": hits / len(found) if found else 1.0, "recall": hits / len(true) if true else 1.0}


def decision_scores(truth: Truth, rows: dict[str, dict]) -> dict:
    """From a run's decision rows (key -> row): copies caught and distinct images lost.

    A copy counts when it and its original both reached dedup; it is caught when they are not both
    kept. A wrong drop is a sample dropped as a duplicate in favour of a sample that shows another
    image; ``distinct_dropped`` is their share of the distinct images that reached dedup.
    """
    reached = {k for k, r in rows.items() if k in truth.kind and r["stage"] not in BEFORE_DEDUP}
    out = {"exact_copies": 0, "exact_caught": 0, "near_copies": 0, "near_caught": 0}
    for k in sorted(reached):
        kind, original = truth.kind[k], truth.group[k]
        if kind == "distinct" or original not in reached:
            continue
        name = "exact" if kind == "exact_copy" else "near"
        out[f"{name}_copies"] += 1
        out[f"{name}_caught"] += not (rows[k]["kept"] and rows[original]["kept"])
    wrong = [k for k in reached if rows[k]["reason"] in DUPLICATE_REASONS
             and truth.group.get(rows[k]["kept_instead"]) != truth.group[k]]
    distinct = {truth.group[k] for k in reached}
    out.update(distinct=len(distinct), wrong_drops=len(wrong),
               distinct_dropped=len(wrong) / len(distinct) if distinct else 0.0,
               exact_recall=out["exact_caught"] / out["exact_copies"] if out["exact_copies"] else 1.0,
               near_recall=out["near_caught"] / out["near_copies"] if out["near_copies"] else 1.0)
    return out
