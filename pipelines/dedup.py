"""Beam composites for the corpus-wide steps of laion_filter: decontamination and deduplication.

No worker holds every embedding (above ``near_flat_max`` samples): a first pass trains k-means
centroids on a hashed sample of the embeddings, a second keys each embedding by its nearest
centroid (and by the next one when it lies near that border), groups by cluster and searches pairs
exactly within each group. The pairs (two input positions each) are joined into connected
components by ``pipelines.components.ConnectedComponents``, keyed by node round after round, so no
worker gathers them; the members of each group then meet by group.

Near duplicates are resolved per connected group by the greedy keep rule (``dedup.resolve_group``):
the group's members meet its pairs, so the rule sees exactly the pairs the search found.

Elements between the steps are ``Entry``s: a sample still in the running and the duplicates dropped
in its favour so far. When a sample is dropped at a later step, its followers move to the sample
kept in its place (``dedup.follow``), so every dropped row names a sample in the output, whatever
step dropped it. Followers travel slimmed (``dedup.as_follower``). Decisions are written once, at
the end.

What still meets on one worker, and how it grows: README "Scaling out" -> "What meets on one worker".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
from curate.filters import decontaminate, dedup, phash, semdedup
from curate.pipelines.components import ConnectedComponents

from curate import fs
from curate.config import ConfigError
from curate.gather import GatherSmall
from curate.outputs import DECISIONS, MAIN, split
from curate.records import NEAR_DEDUP, Sample, decision
from curate.timing import timed

log = logging.getLogger("curate")



@dataclass(frozen=True)
class DedupParams:
    exact: bool = True
    url_caption: bool = False
    near: bool = True
    near_threshold: float = 0.96
    near_method: str = "both"
    phash_max_distance: int = 10
    phash_assignments: int = 8
    phash_border: float = 0.6
    near_flat_max: int = 50_000
    near_assignments: int = 2
    near_border: float = 0.1
    semdedup: bool = False
    semdedup_eps: float = 0.05
    semdedup_target: float | None = None
    semdedup_keep: str = "hard"
    semdedup_seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> DedupParams:
        return cls(cfg["dedup.exact"], cfg["dedup.url_caption"], cfg["dedup.near"], cfg["dedup.near_threshold"],
                   cfg["dedup.near_method"], cfg["dedup.phash_max_distance"], cfg["dedup.phash_assignments"],
                   cfg["dedup.phash_border"],
                   cfg["dedup.near_flat_max"], cfg["dedup.near_assignments"], cfg["dedup.near_border"],
                   cfg["dedup.semdedup.enabled"], cfg["dedup.semdedup.eps"], cfg["dedup.semdedup.target_fraction"],
                   cfg["dedup.semdedup.keep"], cfg["dedup.semdedup.seed"])

    @property
    def near_rule(self) -> dedup.NearRule:
        return dedup.NearRule(self.near_method, self.near_threshold, self.phash_max_distance)

    def routing(self, space: str) -> tuple[int, float]:
        """(clusters per vector, border) of the clustered search in ``space``: hash pairs lie farther
        apart (cosine 0.69 at distance 10) than embedding pairs (0.96), so they need wider borders."""
        if space == dedup.PHASH:
            return self.phash_assignments, self.phash_border
        return self.near_assignments, self.near_border


def duplicate_decision(d: dedup.Duplicate) -> dict:
    return decision(d.sample, False, d.stage, d.reason, dup_group=d.group,
                    kept_instead=d.kept.key, dup_similarity=d.similarity, dup_hash_distance=d.distance)


@dataclass(frozen=True)
class Entry:
    """What travels between the dedup steps: a sample still in the running (whole: later steps
    read its embeddings) and the duplicates dropped in its favour so far (slimmed followers)."""
    sample: Sample
    followers: tuple[dedup.Duplicate, ...] = field(default=(), repr=False)


def absorb(kept_entry: Entry, dropped: list[tuple[dedup.Duplicate, tuple[dedup.Duplicate, ...]]]) -> Entry:
    """The kept entry takes each dropped sample (as a Duplicate) and that sample's followers, these
    re-pointed at the kept sample (``dedup.follow``) and all of them slimmed (``dedup.as_follower``)."""
    followers = list(kept_entry.followers)
    for d, its_followers in dropped:
        followers.append(dedup.as_follower(d))
        followers.extend(dedup.as_follower(f) for f in dedup.follow(its_followers, d))
    return Entry(kept_entry.sample, tuple(followers))


def kept_entries(entries: list[Entry], kept, dups: list[dedup.Duplicate]):
    """A group's entries after a keep rule: one entry per kept sample, with the samples dropped in
    its favour (and their own followers) as its followers."""
    followers_of = {e.sample.order: e.followers for e in entries}
    by_kept: dict[tuple, list] = {}
    for d in dups:
        by_kept.setdefault(d.kept.order, []).append((d, followers_of[d.sample.order]))
    for s in kept:
        yield absorb(Entry(s, followers_of[s.order]), by_kept.get(s.order, []))


# --- exact ------------------------------------------------------------------------------------

class _KeepOneExact(beam.DoFn):
    def __init__(self, reason: str, label_prefix: str):
        self._reason, self._prefix = reason, label_prefix

    def process(self, element):
        key, entries = element
        entries = list(entries)
        if len(entries) == 1:
            yield entries[0]
            return
        label = None if self._prefix == "sha256" else f"{self._prefix}:{key[1][:16]}"
        kept, dups = dedup.exact_duplicates([e.sample for e in entries], label, self._reason)
        yield from kept_entries(entries, [kept], dups)


class ExactGroups(beam.PTransform):
    """Entries sharing an exact key -> one kept entry per key (entries without a key pass)."""

    def __init__(self, key_fn, reason: str, label_prefix: str):
        super().__init__()
        self._key_fn, self._reason, self._prefix = key_fn, reason, label_prefix

    def expand(self, entries):
        key_fn = self._key_fn

        def keyed(entry):
            k = key_fn(entry.sample)
            return (("k", k) if k is not None else ("o", entry.sample.order)), entry

        return (entries
                | "ByKey" >> beam.Map(keyed)
                | "Group" >> beam.GroupByKey()
                | "KeepOne" >> beam.ParDo(_KeepOneExact(self._reason, self._prefix)))


# --- centroids (pass 1) -----------------------------------------------------------------------

def _count(entries, label: str):
    """How many entries: counted per input shard, then only those counts (one per input shard) meet."""
    return (entries | f"{label}:ByInputShard" >> beam.Map(lambda e: (e.sample.shard_index, 1))
            | f"{label}:GroupInputShard" >> beam.GroupByKey()
            | f"{label}:PerShard" >> beam.MapTuple(lambda _, ones: sum(ones))
            | f"{label}:Gather" >> GatherSmall()
            | f"{label}:Sum" >> beam.Map(sum))


class _TrainingCandidate(beam.DoFn):
    """Entries whose hash rank falls in the training sample (oversampled; trimmed when training)."""

    def __init__(self, flat_max: int, space: str):
        self._flat_max, self._space = flat_max, space

    def process(self, entry, n):
        k = dedup.cluster_count(n, self._flat_max)
        if k == 1:
            return
        s = entry.sample
        vector = dedup.search_vector(s, self._space)
        rank = dedup.training_rank(s.key, s.order)
        if vector is not None and rank < 2**64 * min(1.0, 1.5 * k * dedup.TRAIN_PER_CENTROID / n):
            yield 0, (rank, s.order, vector.astype(np.float16))


class _Train(beam.DoFn):
    def __init__(self, flat_max: int):
        self._flat_max = flat_max

    def process(self, element, n):
        _, rows = element
        k = dedup.cluster_count(n, self._flat_max)
        rows = sorted(rows, key=lambda r: (r[0], r[1]))[:k * dedup.TRAIN_PER_CENTROID]
        log.info("near dedup: %d samples: k-means with %d centroids (trained on %d sampled vectors), then "
                 "an exact search within each cluster", n, k, len(rows))
        with timed("train_centroids"):
            yield dedup.train_centroids(np.stack([r[2] for r in rows]), k)


class TrainCentroids(beam.PTransform):
    """Entries -> one element: (k, d) centroids of their vectors in ``space`` (image embeddings or
    hash vectors), or nothing when the corpus is small enough for one exact flat search (read it with
    ``beam.pvalue.AsSingleton(..., default_value=None)``)."""

    def __init__(self, flat_max: int, space: str = dedup.CLIP):
        super().__init__()
        self._flat_max, self._space = flat_max, space

    def expand(self, entries):
        n = beam.pvalue.AsSingleton(_count(entries, "Count"), default_value=0)
        return (entries
                | "HashedSample" >> beam.ParDo(_TrainingCandidate(self._flat_max, self._space), n)
                | "GatherSample" >> beam.GroupByKey()
                | "KMeans" >> beam.ParDo(_Train(self._flat_max), n))


def _clusters(emb, centroids, m: int, border: float) -> list[int]:
    if centroids is None:
        return [0]
    return dedup.nearest_clusters(emb, centroids, m, border)


# --- near duplicates (pass 2) -----------------------------------------------------------------

@dataclass(frozen=True)
class ClusterMember:
    """What one sample sends to a cluster: its position, its search vector packed
    (dedup.packed_vector: a hash's 8 bytes, an embedding as float16) and (for the rule ``both``,
    searched by hash) its image embedding (dedup.exact_half)."""
    order: tuple
    vector: bytes | np.ndarray
    embedding: np.ndarray | None = None


class _ToClusters(beam.DoFn):
    def __init__(self, rule: dedup.NearRule, space: str, m: int, border: float):
        self._rule, self._space, self._m, self._border = rule, space, m, border

    def process(self, entry, centroids):
        s = entry.sample
        vector = dedup.search_vector(s, self._space)
        if vector is None:
            return
        member = ClusterMember(s.order, dedup.packed_vector(s, self._space),
                               dedup.exact_half(s.image_embedding)
                               if self._rule.method == "both" and s.image_embedding is not None else None)
        for c in _clusters(vector, centroids, self._m, self._border):
            yield c, member


class _PairsInCluster(beam.DoFn):
    """Exact search within one cluster: the pairs (two positions) the rule calls near duplicates."""

    def __init__(self, rule: dedup.NearRule, space: str):
        self._rule, self._space = rule, space

    def process(self, element):
        _, members = element
        members = sorted(members, key=lambda m: m.order)
        if len(members) < 2:
            return
        with timed(NEAR_DEDUP):
            i, j, s = dedup.pairs_above(dedup.unpacked_vectors([m.vector for m in members], self._space),
                                        self._rule.search_threshold(self._space))
        for a, b, value in zip(i.tolist(), j.tolist(), s.tolist(), strict=True):
            ma, mb = members[a], members[b]
            if self._rule.method == "both":  # searched by hash: the embeddings must agree too
                sim, _ = dedup.measures(ma.embedding, None, mb.embedding, None)
                if not self._rule.matches(sim, phash.distance_of_cosine(value)):
                    continue
            yield ma.order, mb.order


class _Route(beam.DoFn):
    """One position's entry, group id (if any) and the pairs that start at it -> the entry alone
    (MAIN), or the entry and those pairs keyed by group id ('grouped'). A pair found in several
    clusters or spaces arrives several times and leaves once."""

    def process(self, element):
        _, items = element
        group = next((v for tag, v in items if tag == "group"), None)
        entry = next(v for tag, v in items if tag == "entry")
        if group is None:
            yield MAIN, entry
            return
        yield "grouped", (group, ("entry", entry))
        for pair in sorted({v for tag, v in items if tag == "pair"}):
            yield "grouped", (group, ("pair", pair))


class _KeepGreedy(beam.DoFn):
    """One group's entries and pairs -> its kept entries, each with the samples dropped in its favour."""

    def process(self, element):
        _, items = element
        entries = [v for tag, v in items if tag == "entry"]
        pairs = [v for tag, v in items if tag == "pair"]
        kept, dups = dedup.resolve_group([e.sample for e in entries], pairs)
        yield from kept_entries(entries, kept, dups)


class NearPairs(beam.PTransform):
    """Entries -> (position, position) for every pair the rule calls near duplicates, found by
    an exact search within each cluster of ``space``."""

    def __init__(self, params: DedupParams, space: str, centroids):
        super().__init__()
        self._p, self._space, self._centroids = params, space, centroids

    def expand(self, entries):
        p, rule = self._p, self._p.near_rule
        return (entries
                | "ToClusters" >> beam.ParDo(_ToClusters(rule, self._space, *p.routing(self._space)),
                                             beam.pvalue.AsSingleton(self._centroids, default_value=None))
                | "GroupByCluster" >> beam.GroupByKey()
                | "PairsInCluster" >> beam.ParDo(_PairsInCluster(rule, self._space)))


class NearDuplicates(beam.PTransform):
    """Entries -> the entries kept by the greedy rule within each connected group of near duplicates."""

    def __init__(self, params: DedupParams, centroids_by_space: dict):
        super().__init__()
        self._p, self._centroids = params, centroids_by_space

    def expand(self, entries):
        pairs = ([entries | f"Pairs:{space}" >> NearPairs(self._p, space, centroids)
                  for space, centroids in self._centroids.items()]
                 | "AllPairs" >> beam.Flatten())
        groups = pairs | "Components" >> ConnectedComponents()
        routed = split((entries | "ByPosition" >> beam.Map(lambda e: (e.sample.order, ("entry", e))),
                        groups | "TagGroups" >> beam.Map(lambda pg: (pg[0], ("group", pg[1]))),
                        pairs | "ByFirst" >> beam.Map(lambda ab: (ab[0], ("pair", ab))))
                       | "EntriesGroupsPairs" >> beam.Flatten()
                       | "JoinGroups" >> beam.GroupByKey()
                       | "Route" >> beam.ParDo(_Route()), "Route", "alone", "grouped")
        merged = (routed.grouped
                  | "GroupMembers" >> beam.GroupByKey()
                  | "KeepGreedy" >> beam.ParDo(_KeepGreedy()))
        return (routed.alone, merged) | "AloneAndKept" >> beam.Flatten()


# --- SemDeDup -----------------------------------------------------------------------------------

class _ToNearestCluster(beam.DoFn):
    def process(self, entry, centroids):
        c = _clusters(entry.sample.image_embedding, centroids, 1, 0.0)[0]
        yield c, entry


def _cluster_members(element, centroids):
    cluster, entries = element
    entries = sorted(entries, key=lambda e: e.sample.order)
    if centroids is not None:
        return entries, centroids[cluster]
    # one cluster (a small corpus): its centroid is the normalised mean, summed in input order
    mean = np.sum([np.asarray(e.sample.image_embedding, np.float32) for e in entries], axis=0)
    return entries, mean / max(float(np.linalg.norm(mean)), 1e-12)


class _KeptCounts(beam.DoFn):
    def __init__(self, keep: str, seed: int):
        self._keep, self._seed = keep, seed

    def process(self, element, centroids):
        entries, centroid = _cluster_members(element, centroids)
        yield len(entries), semdedup.kept_counts([e.sample for e in entries], centroid, self._keep, self._seed).tolist()


def _choose_eps(counts: list, target: float) -> float:
    """Per-cluster (members, kept count at each eps of the grid) -> the eps of the target fraction."""
    total = sum(n for n, _ in counts)
    return semdedup.choose_eps(np.sum([c for _, c in counts], axis=0), total, target)


class _SemDeDupCluster(beam.DoFn):
    def __init__(self, keep: str, seed: int):
        self._keep, self._seed = keep, seed

    def process(self, element, centroids, eps):
        entries, centroid = _cluster_members(element, centroids)
        with timed(semdedup.STAGE):
            kept, dups = semdedup.semdedup_cluster([e.sample for e in entries], centroid, eps, self._keep, self._seed)
        yield from kept_entries(entries, kept, dups)


class SemDeDup(beam.PTransform):
    """Entries -> entries kept by SemDeDup within each k-means cluster (fixed eps or target fraction)."""

    def __init__(self, params: DedupParams, centroids):
        super().__init__()
        self._p, self._centroids = params, centroids

    def expand(self, entries):
        p = self._p
        centroids = beam.pvalue.AsSingleton(self._centroids, default_value=None)
        clusters = (entries
                    | "ToNearestCluster" >> beam.ParDo(_ToNearestCluster(), centroids)
                    | "GroupByCluster" >> beam.GroupByKey())
        if p.semdedup_target is None:
            eps = entries.pipeline | "FixedEps" >> beam.Create([p.semdedup_eps])
        else:
            eps = (clusters
                   | "KeptCounts" >> beam.ParDo(_KeptCounts(p.semdedup_keep, p.semdedup_seed), centroids)
                   | "GatherCounts" >> GatherSmall()
                   | "ChooseEps" >> beam.Map(_choose_eps, p.semdedup_target))
        return clusters | "DeduplicateClusters" >> beam.ParDo(
            _SemDeDupCluster(p.semdedup_keep, p.semdedup_seed), centroids, beam.pvalue.AsSingleton(eps))


# --- the whole step -----------------------------------------------------------------------------

def _decisions(entry: Entry):
    return [duplicate_decision(d) for d in entry.followers]


class Deduplicate(beam.PTransform):
    """Exact duplicates (sha256 of the image, then normalised url + caption), near-duplicate images
    (perceptual hash and/or CLIP embedding, clustered search, greedy keep rule), then SemDeDup.

    Returns {"kept": samples, "decisions": rows}; the decision rows are written once all steps ran.
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self._p = params

    def expand(self, samples):
        p = self._p
        entries = samples | "Entries" >> beam.Map(Entry)
        if p.exact:
            entries = entries | "ExactImage" >> ExactGroups(lambda s: s.sha256, dedup.EXACT_DUPLICATE, "sha256")
        if p.url_caption:
            entries = entries | "ExactUrlCaption" >> ExactGroups(
                lambda s: dedup.url_caption_key(getattr(s, "url", None), s.caption), dedup.URL_CAPTION_DUPLICATE, "url_caption")
        if p.near or p.semdedup:
            spaces = set(p.near_rule.spaces() if p.near else ()) | ({dedup.CLIP} if p.semdedup else set())
            centroids = {space: entries | f"TrainCentroids:{space}" >> TrainCentroids(p.near_flat_max, space)
                         for space in sorted(spaces)}
            if p.near:
                entries = entries | "NearDuplicates" >> NearDuplicates(
                    p, {space: centroids[space] for space in p.near_rule.spaces()})
            if p.semdedup:
                entries = entries | "SemDeDup" >> SemDeDup(p, centroids[dedup.CLIP])
        return {"kept": entries | "KeptSamples" >> beam.Map(lambda e: e.sample),
                "decisions": entries | "DuplicateDecisions" >> beam.FlatMap(_decisions)}


# --- decontamination ----------------------------------------------------------------------------

def embed_image_files(spec):
    """files (local paths or fsspec URLs) -> (n, d) L2-normalised image embeddings by the scorer,
    rounded through float16 as the corpus's stored embeddings are."""
    def embed(files):
        import torch
        from PIL import Image

        from curate.models import clip

        model, transform = clip.load_model(spec), clip.image_transform(spec)
        out = []
        for a in range(0, len(files), 64):
            batch = []
            for f in files[a:a + 64]:
                with fs.open(f, "rb") as data, Image.open(data) as im:
                    batch.append(transform(im.convert("RGB")))
            with torch.inference_mode():
                emb = model.encode_image(torch.stack(batch).to(spec.resolved_device()), normalize=True)
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out).astype(np.float16).astype(np.float32)
    return embed


class _DecontaminateFn(beam.DoFn):
    def __init__(self, eval_set: str, threshold: float, spec):
        self._path, self._threshold, self._spec = eval_set, threshold, spec
        self._emb = self._names = None

    def setup(self):
        self._emb, self._names = decontaminate.load_eval_set(self._path, embed_image_files(self._spec))

    def process(self, sample):
        with timed(decontaminate.STAGE):
            best, sim = decontaminate.nearest_eval(sample.image_embedding, self._emb)
        if decontaminate.is_contaminated(sim, self._threshold):
            yield DECISIONS, decision(sample, False, decontaminate.STAGE, decontaminate.CONTAMINATED,
                                      detail=f"eval item {self._names[best]}", dup_group=f"eval:{self._names[best]}",
                                      dup_similarity=sim)
        else:
            yield MAIN, sample


class Decontaminate(beam.PTransform):
    """Samples -> those not close to any evaluation image (main) and decision rows for the rest."""

    def __init__(self, eval_set: str | None, threshold: float, spec):
        super().__init__()
        self._args = (eval_set, threshold, spec)

    @classmethod
    def from_config(cls, cfg: dict) -> Decontaminate:
        from curate.pipelines import score

        if cfg["decontaminate.eval_set"] is not None and not fs.exists(cfg["decontaminate.eval_set"]):
            raise ConfigError(f"config error: decontaminate.eval_set {cfg['decontaminate.eval_set']!r} does not exist")
        return cls(cfg["decontaminate.eval_set"], cfg["decontaminate.threshold"], score.scorer_spec(cfg))

    def expand(self, samples):
        if self._args[0] is None:
            return SimpleNamespace(clean=samples, decisions=samples.pipeline | "NoEvalSet" >> beam.Create([]))
        return split(samples | "NearestEvalImage" >> beam.ParDo(_DecontaminateFn(*self._args)), "NearestEvalImage", "clean")
