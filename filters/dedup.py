"""Corpus-wide duplicate removal: exact (same image bytes, same url + caption) and near (close CLIP
image embeddings).

Keep rule, the same for every kind and independent of processing order: within a duplicate group
keep the sample with the highest CLIP score, then the smallest key, then the earliest input position.
Every other member is dropped and names the key kept in its place.

Near duplicates are pairs whose image-embedding cosine (to 4 decimals, ``records.stable``) is at
least ``threshold``. Pairs are joined into groups by connected components, so a chain a~b, b~c is
one group even when a and c are not close themselves; exactly one sample of the whole chain is kept.

Large corpora are searched cluster by cluster (an IVF layout built by hand so that it maps onto Beam
groups): k-means centroids are trained on a sample, every embedding goes to its ``m`` nearest
centroids, and pairs are searched exactly within each cluster. A pair is found when both members
share a cluster; sending each embedding to two clusters catches pairs that straddle a border
(``benchmarks/dedup_scale.py`` measures the recall). Small corpora (``flat_max`` and below) form one
cluster: an exact flat search.
"""
from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.records import Sample, stable

EXACT_DUPLICATE = "exact_duplicate"
URL_CAPTION_DUPLICATE = "duplicate_url_caption"
NEAR_DUPLICATE = "near_duplicate"

# Rows per float32 block of the exact search: 4096 x 512 x 4 bytes = 8 MB per operand.
BLOCK = 4096


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
    reason: str = EXACT_DUPLICATE
    stage: str = "exact_dedup"


def exact_duplicates(group: list[Sample], label: str | None = None, reason: str = EXACT_DUPLICATE,
                     stage: str = "exact_dedup") -> tuple[Sample, list[Duplicate]]:
    """Samples that share an exact key (by default the sha256 of their image bytes): keep one by
    the keep rule, drop the rest. ``label`` names the group (default ``sha256:<hex>``)."""
    ranked = sorted(group, key=keep_rank)
    kept = ranked[0]
    label = label or f"sha256:{kept.sha256}"
    return kept, [Duplicate(s, kept, label, None, reason, stage) for s in ranked[1:]]


# --- exact (url, caption) ---------------------------------------------------------------------

def normalise_url(url: str) -> str:
    """Scheme and host lower-cased, default port and fragment dropped, surrounding space stripped.

    Path and query stay as they are: servers may treat their case as meaningful. Written with
    urllib.parse (standard library) because the rule is four lines and needs no dependency.
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port if parts.port and (parts.scheme.lower(), parts.port) not in (("http", 80), ("https", 443)) else None
    netloc = host + (f":{port}" if port else "")
    if parts.username:
        netloc = f"{parts.username}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))


def normalise_caption(caption: str) -> str:
    """NFKC, case-folded, whitespace collapsed: captions that differ only so are the same text."""
    return " ".join(unicodedata.normalize("NFKC", caption).casefold().split())


def url_caption_key(url: str | None, caption: str | None) -> str | None:
    """Hash of the normalised (url, caption) pair; None when either is missing (never grouped)."""
    if not url or caption is None:
        return None
    try:
        text = normalise_url(url) + "\n" + normalise_caption(caption)
    except ValueError:  # e.g. a port that is not a number: compare the url as written
        text = url.strip() + "\n" + normalise_caption(caption)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- near duplicates: exact search ------------------------------------------------------------

def pairs_above(x: np.ndarray, threshold: float, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of rows of ``x`` (L2-normalised) whose cosine, to 4 decimals, is >= threshold.

    Exact: float32 matrix products over row blocks (BLAS), so memory stays at two blocks whatever
    the size. Returns (i, j, similarity) with similarities rounded as ``records.stable`` does.
    """
    n = len(x)
    out_i, out_j, out_s = [], [], []
    margin = np.float32(threshold - 1e-4)  # candidates; the exact rule is applied to them below
    for a in range(0, n, block):
        xa = np.asarray(x[a:a + block], dtype=np.float32)
        for b in range(a, n, block):
            xb = xa if b == a else np.asarray(x[b:b + block], dtype=np.float32)
            sim = xa @ xb.T
            ii, jj = np.nonzero(sim >= margin)
            if b == a:
                keep = ii < jj
                ii, jj = ii[keep], jj[keep]
            if len(ii):
                s = np.array([stable(v) for v in sim[ii, jj]], dtype=np.float64)
                ok = s >= threshold
                out_i.append(ii[ok] + a)
                out_j.append(jj[ok] + b)
                out_s.append(s[ok])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64),
            np.concatenate(out_s))


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` items given undirected edges (i, j)."""
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# --- near duplicates: clustered search for large corpora --------------------------------------

def cluster_count(n: int, flat_max: int) -> int:
    """Clusters for ``n`` embeddings: 1 (exact flat search) up to ``flat_max``, else about 2 sqrt(n).

    With m assignments per embedding, assigning costs n*k dot products and the searches within
    clusters about (m n)^2 / k; k ~ 2 sqrt(n) keeps both near 2 n sqrt(n).
    """
    return 1 if n <= flat_max else max(2, math.ceil(2 * math.sqrt(n)))


def training_rank(key: str, order: tuple) -> int:
    """A sample's place in the k-means training sample: a hash, so the sample does not depend on
    processing order (the samples with the smallest ranks train the centroids)."""
    return int.from_bytes(hashlib.blake2b(f"{key}\0{order}".encode(), digest_size=8).digest(), "big")


def train_centroids(x: np.ndarray, k: int, seed: int = 1234, niter: int = 10) -> np.ndarray:
    """FAISS k-means (spherical: centroids L2-normalised) on the training rows; (k, d) float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = min(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1,
                      max_points_per_centroid=max(256, math.ceil(len(x) / k)))
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray, m: int = 2, border: float = 0.1,
           block: int = 16384) -> np.ndarray:
    """The clusters of every row: its nearest centroid (inner product), plus each of its next
    ``m - 1`` nearest whose similarity is within ``border`` of the nearest one; (n, m) int64,
    -1 where a row has fewer clusters.

    A near-duplicate pair (x, y) is split across clusters A and B only when x and y both lie near
    the A/B border (their similarities to any centroid differ by about |x - y| / sqrt(d)), so rows
    far inside their cluster need no second one. Exact (FAISS flat index, BLAS) over float32 blocks.
    """
    m = min(m, len(centroids))
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty((len(x), m), dtype=np.int64)
    for a in range(0, len(x), block):
        sims, ids = index.search(np.ascontiguousarray(x[a:a + block], dtype=np.float32), m)
        ids[sims < sims[:, :1] - np.float32(border)] = -1
        out[a:a + block] = ids
    return out


def nearest_clusters(emb: np.ndarray, centroids: np.ndarray, m: int = 2, border: float = 0.1) -> list[int]:
    """``assign`` for one embedding (a Beam element): its nearest centroid, then each of the next
    ``m - 1`` whose similarity is within ``border`` of the nearest one's."""
    sims = centroids @ np.asarray(emb, dtype=np.float32)
    top = np.argsort(-sims, kind="stable")[:m]
    return [int(c) for c in top if sims[c] >= sims[top[0]] - np.float32(border)]


def clustered_pairs(x: np.ndarray, threshold: float, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs above ``threshold`` among rows that share a cluster: exact search within each cluster,
    pairs found in two clusters reported once. The in-memory form of the Beam step."""
    flat = assignment.reshape(-1)
    rows = np.repeat(np.arange(len(x)), assignment.shape[1])
    rows, flat = rows[flat >= 0], flat[flat >= 0]
    order = np.argsort(flat, kind="stable")
    bounds = np.flatnonzero(np.diff(flat[order])) + 1
    found_i, found_j, found_s = [], [], []
    for members in np.split(rows[order], bounds):
        if len(members) < 2:
            continue
        i, j, s = pairs_above(x[members], threshold)
        found_i.append(members[i])
        found_j.append(members[j])
        found_s.append(s)
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(lo * len(x) + hi, return_index=True)
    return lo[first], hi[first], s[first]


TRAIN_PER_CENTROID = 20  # enough for clusters that only route the search; training is n*k*d per pass


def near_pairs(x: np.ndarray, threshold: float, ranks: np.ndarray, flat_max: int = 50_000,
               assignments: int = 2, border: float = 0.1, seed: int = 1234) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate pairs of a whole in-memory corpus, by the same steps as the Beam composite:
    exact flat search up to ``flat_max`` rows; above, centroids trained on the rows of smallest
    ``ranks`` (``training_rank``), ``assignments`` clusters per row, exact search per cluster."""
    k = cluster_count(len(x), flat_max)
    if k == 1:
        return pairs_above(x, threshold)
    train = np.sort(np.argsort(ranks, kind="stable")[:k * TRAIN_PER_CENTROID])
    centroids = train_centroids(x[train], k, seed)
    return clustered_pairs(x, threshold, assign(x, centroids, assignments, border))


# --- near duplicates: groups and the keep rule -------------------------------------------------

def keep_one_per_group(samples: list[Sample], label: str = "near") -> tuple[Sample, list[Duplicate]]:
    """One connected group of near duplicates: keep one by the keep rule, the rest name it."""
    best = min(samples, key=keep_rank)
    dropped = []
    for s in sorted(samples, key=lambda s: s.order):
        if s is not best:
            sim = stable(np.dot(np.asarray(s.image_embedding, np.float32), np.asarray(best.image_embedding, np.float32)))
            dropped.append(Duplicate(s, best, f"{label}:{best.key}", sim, NEAR_DUPLICATE, "near_dedup"))
    return best, dropped


def near_duplicates(samples: list[Sample], threshold: float) -> tuple[list[Sample], list[Duplicate]]:
    """Group samples whose image embeddings are within ``threshold`` cosine; keep one per group.

    Exact flat search over all pairs: the in-memory reference the clustered Beam step must match.
    """
    if len(samples) < 2:
        return list(samples), []
    samples = sorted(samples, key=lambda s: s.order)  # fixed row order: results never depend on arrival
    emb = np.stack([s.image_embedding for s in samples]).astype(np.float32)
    i, j, _s = pairs_above(emb, threshold)
    labels = components(len(samples), i, j)
    members: dict[int, list[Sample]] = {}
    for idx, label in enumerate(labels):
        members.setdefault(int(label), []).append(samples[idx])
    kept, dropped = [], []
    for group in members.values():
        best, dups = keep_one_per_group(group)
        kept.append(best)
        dropped.extend(dups)
    return kept, dropped


def follow(followers: list[Duplicate], dropped: Duplicate) -> list[Duplicate]:
    """Duplicates that named ``dropped.sample`` (dropped at an earlier step) re-point to the sample
    kept in its place and join its group, so every dropped duplicate names a sample in the output.
    Their similarity is their own cosine to that sample when both embeddings are at hand, else the
    one of the sample they followed (an exact twin is as close as the sample it copies)."""
    out = []
    for d in followers:
        sim = dropped.similarity
        if d.sample.image_embedding is not None and dropped.kept.image_embedding is not None:
            sim = stable(np.dot(np.asarray(d.sample.image_embedding, np.float32),
                                np.asarray(dropped.kept.image_embedding, np.float32)))
        out.append(Duplicate(d.sample, dropped.kept, dropped.group, sim, d.reason, d.stage))
    return out


def follow_to_kept(exact: list[Duplicate], near_dropped: list[Duplicate]) -> list[Duplicate]:
    """Re-point exact duplicates whose kept sample was then dropped as a near duplicate."""
    moved = {d.sample.order: d for d in near_dropped}
    return [follow([d], moved[d.kept.order])[0] if d.kept.order in moved else d for d in exact]
