"""The one place where elements meet on a single worker: small summaries, never samples.

Every use names what it gathers and how big that is per element (README "Scaling out"); samples
and their embeddings travel only through GroupByKeys keyed by something that spreads them out
(input shard, output shard, cluster, duplicate group).
"""
from __future__ import annotations

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
