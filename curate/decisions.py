"""The decisions table: one parquet file per input shard, one row per input sample, in input order."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from curate import fs
from curate.io import write_parquet
from curate.records import DECISION_SCHEMA


class _WriteDecisionShard(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        shard_index, rows = element
        # from_pylist takes the schema's columns only, so the routing field _shard_index is left out
        # without touching the rows (elements are never mutated once emitted).
        rows = sorted(rows, key=lambda r: (r["source_index"], r["key"]))
        path = fs.join(self._out_dir, f"{shard_index:05d}.parquet")
        write_parquet(path, pa.Table.from_pylist(rows, schema=DECISION_SCHEMA))
        yield path


class WriteDecisions(beam.PTransform):
    """Decision rows -> OUT/decisions/NNNNN.parquet, one file per input shard, rows in input order."""

    def __init__(self, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, rows):
        return (
            rows
            | "ByInputShard" >> beam.Map(lambda r: (r["_shard_index"], r))
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteDecisionShard(self._out_dir))
        )
