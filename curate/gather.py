"""The one place where elements meet on a single worker: small summaries, never samples.

Every use names what it gathers and how big that is per element (README "Scaling out"); samples
and their embeddings travel only through GroupByKeys keyed by something that spreads them out
(input shard, output shard, cluster, duplicate group).
"""
from __future__ import annotations

from collections import Counter

import apache_beam as beam


class GatherSmall(beam.PTransform):
    """PCollection of small summaries -> one element: the list of all of them, sorted, so that the
    result does not depend on arrival order (nothing when the input is empty).

    Built from Map + GroupByKey, which every runner (the Dask runner included) translates; a
    ``CombineGlobally`` would do the same where runners allow it.
    """

    def expand(self, summaries):
        return (summaries
                | "OneKey" >> beam.Map(lambda x: (None, x))
                | "Gather" >> beam.GroupByKey()
                | "Sorted" >> beam.MapTuple(lambda _, xs: sorted(xs)))


class CountOncePerSample(beam.PTransform):
    """Samples -> one element: the sorted list of (value, count) over the whole corpus, where
    ``values(sample)`` names what a sample counts towards (a score, the metadata entries it matches).

    Counted per input shard first, each sample once by its input position (Beam 2.77's DaskRunner
    delivered some samples twice to a counting branch; tests/test_runners.py), then summed per value
    by a combiner (partial sums before the shuffle where the runner lifts combiners). No group grows
    past one input shard's samples, and what meets on one worker is one count per distinct value.
    """

    def __init__(self, values):
        super().__init__()
        self._values = values

    def expand(self, samples):
        values = self._values
        return (samples
                | "ByInputShard" >> beam.Map(lambda s: (s.shard_index, (s.member_index, tuple(values(s)))))
                | "GroupInputShard" >> beam.GroupByKey()
                | "CountInShard" >> beam.FlatMapTuple(
                    lambda _, items: Counter(v for vs in dict(items).values() for v in vs).items())
                | "Sum" >> beam.CombinePerKey(sum)
                | "GatherCounts" >> GatherSmall())
