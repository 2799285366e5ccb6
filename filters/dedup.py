"""Corpus-wide duplicate removal: exact (same image bytes) and near (close CLIP image embeddings).

Keep rule, the same for both and independent of processing order: within a duplicate group keep
the sample with the highest CLIP score, then the smallest key, then the earliest input position.
Every other member is dropped and names the key kept in its place.

Near duplicates are pairs whose image-embedding cosine is at least ``threshold``. Pairs are joined
into groups by connected components, so a chain a~b, b~c is one group even when a and c are not
close themselves; exactly one sample of the whole chain is kept. Exact dedup runs first; when the
sample it kept is then dropped as a near duplicate, its exact copies follow it into that group.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.records import Sample, stable

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"


def keep_rank(sample: Sample) -> tuple:
    """Sort key of the keep rule: the smallest rank in a group is kept."""
    score = sample.clip_score if sample.clip_score is not None else float("-inf")
    return (-score, sample.key, sample.order)


@dataclass
class Duplicate:
    sample: Sample
    kept: Sample
    group: str
    similarity: float | None = None


def exact_duplicates(group: list[Sample]) -> tuple[Sample, list[Duplicate]]:
    """Samples that share image bytes (one sha256): keep one by the keep rule, drop the rest."""
    ranked = sorted(group, key=keep_rank)
    kept = ranked[0]
    return kept, [Duplicate(s, kept, f"sha256:{kept.sha256}") for s in ranked[1:]]


def similar_pairs(embeddings: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with cosine >= threshold, by an exact FAISS inner-product range search."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    # FAISS keeps results strictly above the radius for inner products; step just below it.
    lims, _dist, ids = index.range_search(x, float(np.nextafter(np.float32(threshold), np.float32(-1))))
    rows = np.repeat(np.arange(len(x)), np.diff(lims).astype(np.int64))
    mask = rows < ids
    return rows[mask], ids[mask]


def near_duplicates(samples: list[Sample], threshold: float) -> tuple[list[Sample], list[Duplicate]]:
    """Group samples whose image embeddings are within ``threshold`` cosine; keep one per group."""
    if len(samples) < 2:
        return list(samples), []
    samples = sorted(samples, key=lambda s: s.order)  # fixed row order: results never depend on arrival
    emb = np.stack([s.image_embedding for s in samples]).astype(np.float32)
    i, j = similar_pairs(emb, threshold)
    n = len(samples)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _count, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for idx, label in enumerate(labels):
        members.setdefault(int(label), []).append(idx)
    kept, dropped = [], []
    for idxs in members.values():
        best = min(idxs, key=lambda k: keep_rank(samples[k]))
        kept.append(samples[best])
        for k in idxs:
            if k != best:
                sim = stable(np.dot(emb[k], emb[best]))
                dropped.append(Duplicate(samples[k], samples[best], f"near:{samples[best].key}", sim))
    return kept, dropped


def follow_to_kept(exact: list[Duplicate], near_dropped: list[Duplicate]) -> list[Duplicate]:
    """Re-point exact duplicates whose kept sample was then dropped as a near duplicate.

    They join that near group and name the sample finally kept, so every group keeps exactly one
    sample and every dropped duplicate names a sample that is in the output. Their similarity is
    the one of their identical twin.
    """
    moved = {d.sample.order: d for d in near_dropped}
    return [Duplicate(d.sample, moved[d.kept.order].kept, moved[d.kept.order].group,
                      moved[d.kept.order].similarity) if d.kept.order in moved else d for d in exact]
