"""SemDeDup (Abbas et al., 2023): semantic deduplication within k-means clusters of image embeddings.

Rule, per cluster: order the members by the keep mode, walk them in that order, and drop a member
whose image cosine (4 decimals) to an already KEPT member exceeds ``1 - eps``; it names the kept
member it is closest to. The kept set thus has no two members closer than ``1 - eps``, and each
dropped member has a kept one within ``eps``: exactly one sample is kept per duplicate group (the
kept member and those that name it). SemDeDup's reference code compares with every earlier member,
dropped or not, so in a chain a~b, b~c (a !~ c) it drops c because of b, which is itself dropped,
and nothing close to c survives; here c is kept (a and c are not duplicates).

Keep modes (SemDeDup's ``keep_hard``): ``hard`` keeps members far from the cluster centroid first
(less prototypical, the paper's default), ``easy`` those close to it first, ``random`` a seeded
hash of the key. Ties go to the smaller key, then the earlier input position: order-independent.
``target`` mode picks the smallest eps of ``EPS_GRID`` whose kept fraction is at most the target.
"""
from __future__ import annotations

import hashlib

import numpy as np
from curate.filters.dedup import Duplicate, pairs_above

from curate.records import Sample, stable

SEMANTIC_DUPLICATE = "semantic_duplicate"
STAGE = "semdedup"
KEEP_MODES = ("hard", "easy", "random")
# eps values the target mode chooses from (0.0025 steps up to 0.2; the paper used 0.005-0.1).
EPS_GRID = tuple(round(0.0025 * i, 4) for i in range(1, 81))


def priority(samples: list[Sample], centroid: np.ndarray | None, keep: str, seed: int = 0) -> list[Sample]:
    """Members in the order they are offered a place: the first of a duplicate group is kept."""
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_MODES)}, got {keep!r}")
    if keep == "random":
        def first(s):
            return hashlib.blake2b(f"{seed}\0{s.key}".encode(), digest_size=8).hexdigest()
    else:
        c = np.zeros(len(samples[0].image_embedding), np.float32) if centroid is None else centroid
        sign = 1 if keep == "hard" else -1  # hard: smallest similarity to the centroid first

        def first(s):
            return sign * stable(np.dot(np.asarray(s.image_embedding, np.float32), c))
    return sorted(samples, key=lambda s: (first(s), s.key, s.order))


def _neighbours(x: np.ndarray, eps: float) -> dict[int, list[tuple[int, float]]]:
    """j -> [(i, cosine)] for every earlier member i with cosine >= 1 - eps (the loosest eps asked)."""
    i, j, s = pairs_above(x, 1 - eps)
    out: dict[int, list[tuple[int, float]]] = {}
    for a, b, v in zip(i.tolist(), j.tolist(), s.tolist(), strict=True):
        out.setdefault(b, []).append((a, v))
    return out


def _greedy(n: int, nbrs: dict[int, list[tuple[int, float]]], eps: float) -> dict[int, tuple[int, float]]:
    """dropped j -> (kept i, cosine) for members in priority order 0..n-1."""
    limit = 1 - eps
    kept = np.ones(n, dtype=bool)
    dropped = {}
    for j in sorted(nbrs):
        close = [(v, -i) for i, v in nbrs[j] if kept[i] and v > limit]
        if close:
            v, neg_i = max(close)
            kept[j] = False
            dropped[j] = (-neg_i, v)
    return dropped


def semdedup_cluster(samples: list[Sample], centroid: np.ndarray | None, eps: float, keep: str = "hard",
                     seed: int = 0) -> tuple[list[Sample], list[Duplicate]]:
    """One cluster: (kept members, dropped members as Duplicates naming the kept one)."""
    if len(samples) < 2:
        return list(samples), []
    ordered = priority(samples, centroid, keep, seed)
    x = np.stack([s.image_embedding for s in ordered]).astype(np.float32)
    dropped = _greedy(len(ordered), _neighbours(x, eps), eps)
    kept = [s for k, s in enumerate(ordered) if k not in dropped]
    dups = [Duplicate(ordered[j], ordered[i], f"semdedup:{ordered[i].key}", v, SEMANTIC_DUPLICATE, STAGE)
            for j, (i, v) in sorted(dropped.items())]
    return kept, dups


def kept_counts(samples: list[Sample], centroid: np.ndarray | None, keep: str = "hard", seed: int = 0,
                grid: tuple[float, ...] = EPS_GRID) -> np.ndarray:
    """How many members one cluster keeps at each eps of ``grid`` (for target mode)."""
    if len(samples) < 2:
        return np.full(len(grid), len(samples), dtype=np.int64)
    ordered = priority(samples, centroid, keep, seed)
    x = np.stack([s.image_embedding for s in ordered]).astype(np.float32)
    nbrs = _neighbours(x, max(grid))
    return np.array([len(ordered) - len(_greedy(len(ordered), nbrs, e)) for e in grid], dtype=np.int64)


def choose_eps(counts: np.ndarray, total: int, target: float, grid: tuple[float, ...] = EPS_GRID) -> float:
    """The smallest eps whose kept fraction (summed ``counts`` / ``total``) is at most ``target``;
    the largest eps of the grid when none reaches it."""
    for eps, kept in zip(grid, counts, strict=True):
        if total == 0 or kept / total <= target:
            return eps
    return grid[-1]
