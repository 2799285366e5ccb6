"""Corpus-wide duplicate removal: exact (same image bytes, same url + caption) and near (a
perceptual-hash distance, an image-embedding cosine, or both: ``NearRule``).

Keep rule, the same for every kind and independent of processing order: visit samples by rank
(highest CLIP score, then smallest key, then earliest input position) and keep each one unless a
sample already kept is its duplicate; it then names that kept sample. For exact duplicates this
keeps the best-ranked copy of each group. For near duplicates it means chains cannot form: in
a~b~c with a and c not near, a and c are both kept, and a dropped sample is always within the rule
of the sample it names (``resolve_group``).

Large corpora are searched cluster by cluster (an IVF layout built by hand so that it maps onto Beam
groups): k-means centroids are trained on a sample, every vector goes to its ``m`` nearest
centroids, and pairs are searched exactly within each cluster. A pair is found when both members
share a cluster; sending each vector to two clusters catches pairs that straddle a border
(``benchmarks/dedup_scale.py`` measures the recall). Small corpora (``flat_max`` and below) form one
cluster: an exact flat search. Hashes are searched the same way, as +-1/8 vectors (``filters.phash``).
"""
from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

import faiss
import numpy as np
from curate.filters import phash
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


@dataclass(frozen=True)
class Duplicate:
    sample: Sample
    kept: Sample
    group: str
    similarity: float | None = None   # image-embedding cosine to ``kept``
    reason: str = EXACT_DUPLICATE
    stage: str = "exact_dedup"
    distance: int | None = None       # perceptual-hash distance to ``kept``


def as_follower(d: Duplicate) -> Duplicate:
    """``d`` as it travels on after its step: what its decision row and ``follow`` still read.

    The decision row reads metadata only; ``follow`` measures the dropped sample against the
    sample it comes to name, so the dropped sample keeps its image embedding and hash (its text
    embedding goes), and the kept sample it names keeps neither embedding (only its key and position
    are read again; ``follow`` measures against the ``kept`` of the NEW duplicate, which is whole).
    """
    return replace(d, sample=replace(d.sample, text_embedding=None),
                   kept=replace(d.kept, image_embedding=None, text_embedding=None))


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


def group_ids(pairs) -> dict:
    """node -> its group id, the smallest node of its connected component, for every node of
    ``pairs`` (undirected edges between comparable nodes, e.g. input positions). All edges in one
    process: the reference for the distributed ``pipelines.components.ConnectedComponents``."""
    pairs = sorted(set(pairs))
    nodes = sorted({p for pair in pairs for p in pair})
    index = {p: i for i, p in enumerate(nodes)}
    labels = components(len(nodes), np.array([index[a] for a, _ in pairs], dtype=np.int64),
                        np.array([index[b] for _, b in pairs], dtype=np.int64))
    first = {}
    for p, label in zip(nodes, labels.tolist(), strict=True):
        first.setdefault(label, p)  # nodes are sorted: the first seen is the earliest
    return {p: first[label] for p, label in zip(nodes, labels.tolist(), strict=True)}


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


# --- near duplicates: the rule, the pairs and the keep rule -------------------------------------

NEAR_METHODS = ("phash", "clip", "both", "either")
PHASH, CLIP = "phash", "clip"  # the two search spaces


@dataclass(frozen=True)
class NearRule:
    """When two images are near duplicates.

    ``phash``: Hamming distance of their perceptual hashes <= ``max_distance`` (a copy signal; needs
    no model). ``clip``: image-embedding cosine >= ``threshold`` (a semantic signal: as good as the
    scorer). ``both``: both say so. ``either``: one of them says so.
    """
    method: str = "both"
    threshold: float = 0.96
    max_distance: int = 10

    def spaces(self) -> tuple[str, ...]:
        """The spaces searched for candidate pairs (``both`` searches hashes and checks cosines)."""
        return {PHASH: (PHASH,), CLIP: (CLIP,), "both": (PHASH,), "either": (PHASH, CLIP)}[self.method]

    def search_threshold(self, space: str) -> float:
        return phash.cosine_at(self.max_distance) if space == PHASH else self.threshold

    def matches(self, similarity: float | None, distance: int | None) -> bool:
        by_hash = distance is not None and distance <= self.max_distance
        by_clip = similarity is not None and similarity >= self.threshold
        return {PHASH: by_hash, CLIP: by_clip, "both": by_hash and by_clip, "either": by_hash or by_clip}[self.method]


def search_vector(sample: Sample, space: str) -> np.ndarray | None:
    """The vector a sample is searched by in ``space``; None when it has no such signal."""
    if space == PHASH:
        return None if sample.phash is None else phash.to_vector(sample.phash)
    return None if sample.image_embedding is None else np.asarray(sample.image_embedding, np.float32)


def packed_vector(sample: Sample, space: str):
    """``search_vector`` in the fewest bytes that give it back exactly (what a sample ships to its
    clusters): a hash as its 8 bytes, an embedding as ``exact_half``; None when it has no such signal."""
    if space == PHASH:
        return None if sample.phash is None else bytes.fromhex(sample.phash)
    return None if sample.image_embedding is None else exact_half(sample.image_embedding)


def unpacked_vectors(packed: list, space: str) -> np.ndarray:
    """``packed_vector`` values -> the (n, d) float32 rows ``search_vector`` gives for them."""
    if space == PHASH:
        bits = np.unpackbits(np.frombuffer(b"".join(packed), dtype=np.uint8).reshape(len(packed), -1), axis=1)
        return (bits.astype(np.float32) * 2 - 1) / np.float32(8)  # as phash.to_vector
    return np.stack([np.asarray(v, np.float32) for v in packed])


def exact_half(v) -> np.ndarray:
    """An embedding as float16 when that loses nothing (the scorer and stored scores keep embeddings as
    float16 values: scoring.scored_samples), else as float32: half the bytes through a shuffle."""
    v = np.asarray(v, np.float32)
    half = v.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), v) else v


def measures(a_emb, a_hash: str | None, b_emb, b_hash: str | None) -> tuple[float | None, int | None]:
    """(embedding cosine to 4 decimals, hash distance) of two images; None where a signal is missing."""
    sim = None
    if a_emb is not None and b_emb is not None:
        # float16-stored unit vectors can overshoot 1 in their last bit; a cosine never does
        sim = min(1.0, stable(np.dot(np.asarray(a_emb, np.float32), np.asarray(b_emb, np.float32))))
    return sim, (phash.distance(a_hash, b_hash) if a_hash and b_hash else None)


@dataclass(frozen=True)
class NearPair:
    """Two input positions (a < b) that the rule calls near duplicates, with both measures."""
    a: tuple
    b: tuple
    similarity: float | None
    distance: int | None


def rule_pairs(samples: list[Sample], rule: NearRule) -> list[NearPair]:
    """Every pair of ``samples`` that the rule calls near duplicates: exact search in each space the
    rule names, then both measures checked on each candidate. The in-memory form of the Beam step."""
    found = {}
    for space in rule.spaces():
        rows = [(s, v) for s in samples if (v := search_vector(s, space)) is not None]
        if len(rows) < 2:
            continue
        i, j, _ = pairs_above(np.stack([v for _, v in rows]), rule.search_threshold(space))
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            sa, sb = sorted((rows[a][0], rows[b][0]), key=lambda s: s.order)
            sim, dist = measures(sa.image_embedding, sa.phash, sb.image_embedding, sb.phash)
            if rule.matches(sim, dist):
                found[(sa.order, sb.order)] = NearPair(sa.order, sb.order, sim, dist)
    return [found[k] for k in sorted(found)]


def resolve_group(samples: list[Sample], pairs) -> tuple[list[Sample], list[Duplicate]]:
    """Greedy keep rule over a group of near duplicates; it cannot chain.

    ``pairs``: (order, order) of the samples the rule calls near duplicates (``NearPair``s do).
    Samples are visited by the keep rule's rank (highest CLIP score, then smallest key, then earliest
    position); one is dropped only when a sample already KEPT is its near duplicate, and it names the
    best-ranked such sample. In a chain a~b~c where a and c are not near, a and c are both kept (if a
    ranks first). Every dropped sample is within the rule of the sample it names, by construction,
    and the result does not depend on processing order.
    """
    neighbours: dict[tuple, set] = {}
    for a, b in pairs:
        neighbours.setdefault(tuple(a), set()).add(tuple(b))
        neighbours.setdefault(tuple(b), set()).add(tuple(a))
    place: dict[tuple, int] = {}  # kept sample's order -> its index in ``kept``
    kept, dropped = [], []
    for s in sorted(samples, key=keep_rank):
        best = min((place[o] for o in neighbours.get(s.order, ()) if o in place), default=None)
        if best is None:
            place[s.order] = len(kept)
            kept.append(s)
            continue
        k = kept[best]
        sim, dist = measures(s.image_embedding, s.phash, k.image_embedding, k.phash)
        dropped.append(Duplicate(s, k, f"near:{k.key}", sim, NEAR_DUPLICATE, "near_dedup", dist))
    kept.sort(key=lambda s: s.order)
    dropped.sort(key=lambda d: d.sample.order)
    return kept, dropped


def near_duplicates(samples: list[Sample], rule: NearRule) -> tuple[list[Sample], list[Duplicate]]:
    """Near duplicates of an in-memory corpus: exact flat search, then the greedy keep rule.

    The reference the clustered Beam step must match.
    """
    if len(samples) < 2:
        return list(samples), []
    samples = sorted(samples, key=lambda s: s.order)  # fixed row order: results never depend on arrival
    return resolve_group(samples, [(p.a, p.b) for p in rule_pairs(samples, rule)])


def follow(followers: list[Duplicate], dropped: Duplicate) -> list[Duplicate]:
    """Duplicates that named ``dropped.sample`` (dropped at an earlier step) re-point to the sample
    kept in its place and join its group, so every dropped duplicate names a sample in the output.
    Their measures are their own to that sample where both signals are at hand, else those of the
    sample they followed (an exact twin is as close as the sample it copies)."""
    out = []
    for d in followers:
        sim, dist = measures(d.sample.image_embedding, d.sample.phash, dropped.kept.image_embedding, dropped.kept.phash)
        out.append(Duplicate(d.sample, dropped.kept, dropped.group, dropped.similarity if sim is None else sim,
                             d.reason, d.stage, dropped.distance if dist is None else dist))
    return out
