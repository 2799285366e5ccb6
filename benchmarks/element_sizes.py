"""Bytes per element through every GroupByKey of laion_filter's default graph (and the fraction selection).

    python benchmarks/element_sizes.py [--samples 300] [--dim 512]

What it measures: the encoded size of the (key, value) pairs each GroupByKey shuffles, with the
coder Beam picks for these untyped PCollections (``FastPrimitivesCoder``: Python primitives
natively, anything else, such as a ``Sample`` or a dedup ``Entry``, pickled), plus plain
``pickle.dumps`` of the value alone for comparison. Graph "laion_filter" is the default config's
graph in order (select.mode threshold, dedup.exact, dedup.url_caption, dedup.near with near_method
``both``, no SemDeDup, no decontamination, no exports): the scoring fan-out, UniqueKeys, exact dedup
by sha256 and by url + caption, near dedup's count, k-means sample and cluster routing, the
connected-components rounds, the join of entries with their groups, the greedy groups, the curated
shard writer and WriteDecisions. Graph "fraction" adds the GroupByKeys of ``select.mode: fraction``,
"balance" those of ``balance.enabled``;
"reference" is what the shard writer's first shuffle carried before DropEmbeddings existed.

Each row says what one element stands for (column ``per``, explained in ``PER``) and how many
elements cross per such unit (``n``): ``benchmarks/capacity_plan.py`` multiplies them by how many
units a run has per input sample. The samples are real: built-in corpus samples decoded as
laion_filter decodes them (caption, language, size, sha256, perceptual hash, url, image format),
given a CLIP score and threshold; after scoring they carry one ``--dim`` float32 image embedding
until DropEmbeddings (laion_filter's DropTextEmbeddings removes the text embedding right after
scoring). Sizes grow with caption and url length: the corpus's captions are short (its
mean caption and url lengths are printed), web captions are often longer.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import os
import pickle
import statistics
import tempfile

import apache_beam as beam
import numpy as np
from curate.filters import dedup
from curate.filters.phash import to_vector
from curate.filters.sample import decode_sample
from curate.pipelines.components import ROUNDS
from curate.pipelines.dedup import ClusterMember, Entry, duplicate_decision

from curate import synth
from curate.decisions import InputCount
from curate.io import iter_tar_groups
from curate.records import BASIC_FILTER, NEAR_DEDUP, WRITE, RawSample, decision, stable

# What one element of a row stands for: the units benchmarks/capacity_plan.py counts per input sample.
PER = {
    "input shard": "one per input shard (1 / samples per input shard)",
    "selected": "one per sample that decoded and passed the basic filter and score selection",
    "exact": "one per sample reaching sha256 dedup (selected, minus repeated keys)",
    "url_caption": "one per sample reaching url + caption dedup (minus sha256 duplicates)",
    "near": "one per sample reaching near dedup (minus url + caption duplicates)",
    "exact follower": "one per sample dropped by sha256 dedup, riding on the entry it names",
    "follower": "one per sample dropped by sha256 or url + caption dedup, riding on the entry it names",
    "assignment": "one per (sample, cluster) assignment of its hash: 1 up to dedup.near_flat_max samples, "
                  "up to dedup.phash_assignments (8) above",
    "training row": "one per k-means training candidate: 1.5 x 20 x ceil(2 sqrt(n)) rows for n samples "
                    "reaching near dedup (none up to dedup.near_flat_max)",
    "pair copy": "one per near-duplicate pair as found: a pair found in c clusters arrives c times",
    "edge": "one per distinct near-duplicate pair (only duplicates cross these)",
    "node": "one per sample in a near-duplicate group (its kept sample included)",
    "kept": "one per kept sample",
    "output shard": "one per curated shard (kept / shards.samples_per_shard)",
    "kept row": "one per kept sample's decision row",
    "duplicate row": "one per decision row of a duplicate",
    "other row": "one per decision row of any other dropped sample",
    "scored": "fraction mode: one per sample that passed the basic filter",
    "shard score": "fraction mode: one per (input shard, distinct score)",
    "distinct score": "fraction mode: one per distinct score (at most 20,001)",
    "tie": "fraction mode: one per sample tied at the cut, only when the cut splits ties",
    "matched sample": "balance.enabled: one per sample that passed the basic filter",
    "shard entry": "balance.enabled: one per (input shard, matched metadata entry); fewer where the "
                   "runner combines before the shuffle",
    "matched entry": "balance.enabled: one per distinct (language, metadata entry) matched in the corpus",
}


@dataclasses.dataclass(frozen=True)
class Shuffled:
    """One GroupByKey (or a set of identical ones): ``n`` elements per ``per`` unit, each
    ``encoded`` bytes with Beam's coder (key + value) and ``pickled`` bytes as pickle.dumps(value)."""
    graph: str
    transform: str
    step: str
    per: str
    n: int
    encoded: float
    pickled: float


def corpus_samples(n: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(tmp, n, seed=1, noise=0.0, shard_size=n)
        path = os.path.join(tmp, "00000.tar")
        samples = []
        for i, group in enumerate(iter_tar_groups(path)):
            verdict = decode_sample(RawSample(group.key, 0, path, i, group.fields), detect_language=False)
            if verdict.reason is None:
                samples.append(dataclasses.replace(verdict.sample, clip_score=stable(0.3 + i / 7919),
                                                   clip_threshold=0.28))
    return samples


def _sizes(pairs) -> tuple[float, float]:
    """(mean encoded key + value bytes with FastPrimitivesCoder, mean pickled value bytes)."""
    coder = beam.coders.FastPrimitivesCoder()
    pairs = list(pairs)
    return (statistics.mean(len(coder.encode(k)) + len(coder.encode(v)) for k, v in pairs),
            statistics.mean(len(pickle.dumps(v)) for _, v in pairs))


def _follower_sizes(entries_with, entries_without) -> tuple[float, float]:
    """Bytes one follower adds to an entry: an entry with one follower minus the same entry without."""
    (a, pa), (b, pb) = _sizes(entries_with), _sizes(entries_without)
    return a - b, pa - pb


def shuffles(samples: list, dim: int) -> list[Shuffled]:
    """Every GroupByKey of laion_filter's default graph, and the fraction selection's, with the
    measured size of their elements (module docstring)."""
    rng = np.random.default_rng(0)
    # float16 values in float32 arrays, as the scorer and stored scores give them (scoring.scored_samples)
    fat = [dataclasses.replace(s, image_embedding=rng.standard_normal(dim).astype(np.float16).astype(np.float32),
                               text_embedding=rng.standard_normal(dim).astype(np.float16).astype(np.float32))
           for s in samples]
    # positions as a 5B-sample corpus has them: input shard up to 500,000, member up to 10,000
    far = [(123_456 + i, 9_876 - i) for i in range(len(samples))]
    # laion_filter drops the text embedding right after scoring (DropTextEmbeddings): later steps carry
    # the image embedding alone
    order = [dataclasses.replace(s, shard_index=o[0], member_index=o[1], text_embedding=None)
             for s, o in zip(fat, far, strict=True)]
    entries = [Entry(s) for s in order]
    # entry i's follower: sample i + 1 dropped in favour of sample i, deep copies so that pickle
    # shares nothing between the follower and its entry (a real follower is a different sample)
    dups = [dedup.as_follower(dedup.Duplicate(copy.deepcopy(d), copy.deepcopy(k), f"sha256:{k.sha256[:16]}", 0.97,
                                              dedup.NEAR_DUPLICATE, NEAR_DEDUP, 3))
            for k, d in zip(order, order[1:] + order[:1], strict=True)]
    with_follower = [Entry(e.sample, (d,)) for e, d in zip(entries, dups, strict=True)]
    pairs = list(itertools.pairwise(far))
    rows = []

    def row(graph, transform, step, per, n, sized):
        rows.append(Shuffled(graph, transform, step, per, n, *sized))

    g = "laion_filter"
    # Reshuffle keys each (index, path) by a random number: (index, (index, path)) stands for it
    row(g, "score", "Spread (Reshuffle)", "input shard", 1, _sizes([(i, (i, f"gs://bucket/raw/{i:05d}.tar"))
                                                                       for i in range(100)]))
    row(g, "UniqueKeys", "Group", "selected", 1, _sizes((s.key, s) for s in order))
    row(g, "dedup sha256", "ExactImage/Group", "exact", 1, _sizes((("k", e.sample.sha256), e) for e in entries))
    row(g, "dedup url+caption", "ExactUrlCaption/Group", "url_caption", 1,
        _sizes((("k", dedup.url_caption_key(e.sample.url, e.sample.caption) or "0" * 64), e) for e in entries))
    row(g, "dedup url+caption", "ExactUrlCaption/Group (followers)", "exact follower", 1,
        _follower_sizes([(0, e) for e in with_follower], [(0, e) for e in entries]))
    row(g, "near: count", "Count:GroupInputShard", "near", 1, _sizes((s.shard_index, 1) for s in order))
    row(g, "near: count", "Count:Gather (one worker)", "input shard", 1, _sizes([(None, 10_000)]))
    row(g, "near: k-means", "GatherSample (one worker)", "training row", 1,
        _sizes((0, (dedup.training_rank(s.key, s.order), s.order, to_vector(s.phash).astype(np.float16)))
               for s in order if s.phash))
    row(g, "near: routing", "GroupByCluster (hash + embedding, rule both)", "assignment", 1,
        _sizes((1234, ClusterMember(s.order, bytes.fromhex(s.phash), dedup.exact_half(s.image_embedding)))
               for s in order if s.phash))
    row(g, "components", "LargeStar0/Neighbourhoods", "pair copy", 2, _sizes(pairs))
    row(g, "components", f"LargeStar1-{ROUNDS - 1}/Neighbourhoods", "edge", 2 * (ROUNDS - 1), _sizes(pairs))
    row(g, "components", f"SmallStar0-{ROUNDS - 1}/SmallerNeighbours", "edge", ROUNDS, _sizes(pairs))
    row(g, "components", "Neighbourhoods (labels)", "edge", 2, _sizes(pairs))
    row(g, "components", "LabelsAtNode (own label)", "node", 1, _sizes((a, ("own", b)) for a, b in pairs))
    row(g, "components", "LabelsAtNode (neighbour labels)", "edge", 2, _sizes((a, ("neighbour", b)) for a, b in pairs))
    row(g, "near: join", "JoinGroups (entries)", "near", 1, _sizes((e.sample.order, ("entry", e)) for e in entries))
    row(g, "near: join", "JoinGroups (followers)", "follower", 1,
        _follower_sizes([(0, ("entry", e)) for e in with_follower], [(0, ("entry", e)) for e in entries]))
    row(g, "near: join", "JoinGroups (group ids)", "node", 1, _sizes((a, ("group", b)) for a, b in pairs))
    row(g, "near: join", "JoinGroups (pairs)", "pair copy", 1, _sizes((a, ("pair", (a, b))) for a, b in pairs))
    row(g, "near: greedy", "GroupMembers (entries)", "node", 1, _sizes((b, ("entry", e)) for e, b in zip(entries, far)))
    row(g, "near: greedy", "GroupMembers (pairs)", "edge", 1, _sizes((a, ("pair", (a, b))) for a, b in pairs))
    # the shard writer's and top fraction's rows use the corpus's own positions (input shard 0), as the
    # README's table of those steps was measured; the rows above use positions of a 5B corpus
    corpus_fat = [dataclasses.replace(s, image_embedding=f.image_embedding) for s, f in zip(samples, fat, strict=True)]
    row("reference", "shard writer", "GroupInputShard (before DropEmbeddings)", "kept", 1,
        _sizes((s.shard_index, s) for s in corpus_fat))
    row(g, "shard writer", "GroupInputShard", "kept", 1, _sizes((s.shard_index, s) for s in samples))
    row(g, "shard writer", "GatherCounts (one worker)", "input shard", 1, _sizes([(None, (12345, 9876))]))
    row(g, "shard writer", "GroupOutputShard", "kept", 1, _sizes((123, s) for s in samples))
    slim = [dataclasses.replace(s, image_embedding=None, text_embedding=None) for s in order]
    row(g, "shard writer", "GatherSizes (one worker)", "output shard", 1, _sizes([(None, ("01234.tar", 10000))]))
    row(g, "WriteDecisions", "Group (kept rows)", "kept row", 1,
        _sizes((s.shard_index, decision(s, True, WRITE)) for s in slim))
    row(g, "WriteDecisions", "Group (duplicate rows)", "duplicate row", 1,
        _sizes((d.sample.shard_index, duplicate_decision(d)) for d in dups))
    row(g, "WriteDecisions", "Group (other dropped rows)", "other row", 1,
        _sizes((s.shard_index, decision(s, False, BASIC_FILTER, "caption_too_short")) for s in slim))
    row(g, "WriteDecisions", "Group (input counts)", "input shard", 1,
        _sizes([(123_456, InputCount(123_456, 10_000, 500_000))]))
    # select.mode fraction only (pipelines/laion_filter.py TopFraction)
    f = "fraction"
    # CountOncePerSample (curate/gather.py): per input shard, then a combiner per value, then one list
    row(f, "top fraction", "Histogram/GroupInputShard", "scored", 1,
        _sizes((s.shard_index, (s.member_index, (("", s.clip_score),))) for s in samples))
    row(f, "top fraction", "Histogram/Sum (combiner)", "shard score", 1,
        _sizes((("", s.clip_score), 123) for s in samples))
    row(f, "top fraction", "Histogram/GatherCounts (one worker)", "distinct score", 1,
        _sizes((None, (("", s.clip_score), 123456)) for s in samples))
    row(f, "top fraction", "GatherTies (one worker)", "tie", 1, _sizes((None, (s.key, s.order)) for s in samples))
    # balance.enabled only (pipelines/balance.py): the entries each caption names, counted the same way
    from curate.filters.metadata import load_metadata

    metadata = load_metadata()
    entries = [(s, metadata.match(s.caption, s.language)) for s in samples]
    b = "balance"
    row(b, "balancing", "CountEntries/GroupInputShard", "matched sample", 1,
        _sizes((s.shard_index, (s.member_index, tuple((s.language, e) for e in es))) for s, es in entries))
    row(b, "balancing", "CountEntries/Sum (combiner)", "shard entry", 1,
        _sizes(((s.language, e), 12) for s, es in entries for e in es))
    row(b, "balancing", "CountEntries/GatherCounts (one worker)", "matched entry", 1,
        _sizes((None, ((s.language, e), 123456)) for s, es in entries for e in es))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args(argv)
    samples = corpus_samples(args.samples)
    print(f"{len(samples)} decoded corpus samples; mean caption {statistics.mean(len(s.caption) for s in samples):.0f} "
          f"chars, mean url {statistics.mean(len(s.url or '') for s in samples):.0f} chars; embeddings "
          f"{args.dim}-d float32 image embedding until DropEmbeddings (the text embedding leaves at DropTextEmbeddings)")
    print(f"{'graph':<13}{'transform':<19}{'GroupByKey':<46}{'per':<16}{'n':>3}{'coder B':>9}{'pickle B':>10}")
    for r in shuffles(samples, args.dim):
        print(f"{r.graph:<13}{r.transform:<19}{r.step:<46}{r.per:<16}{r.n:>3}{r.encoded:>9.0f}{r.pickled:>10.0f}")
    print("per: what one element stands for; n: elements per such unit")
    for name, text in PER.items():
        print(f"  {name:<15} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
