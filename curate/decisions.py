"""The decisions table: one parquet file per input shard, one row per input sample, in input order.

Each file also records, in its schema metadata, how many samples the reader read from that input
shard (``InputCount``), counted where they were read and carried here beside the rows, so that
``curate.report`` checks the rows against it instead of assuming every sample arrived.
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from curate import fs
from curate.io import write_parquet
from curate.records import DECISION_SCHEMA

# Schema metadata keys of a decisions file (values: decimal ASCII).
INPUT_SAMPLES = b"curate.input_samples"  # samples read from this input shard: the rows it must hold
INPUT_SHARDS = b"curate.input_shards"    # input shards of the run: files 0 .. n-1 must all exist
PASSED_ON = b"curate.passed_on"          # ingest before curation: rows downloaded, decided by a later stage


@dataclass(frozen=True)
class InputCount:
    """How many samples a reader read from one input shard, out of how many shards in all.

    Travels in the decision rows' PCollection (a reader yields it as one more DECISIONS element) and
    joins its shard's rows in WriteDecisions' GroupByKey; ``passed_on``: rows this file does not hold
    because a later stage reads them (ingest's downloads, read again from the raw shards).
    """
    shard_index: int
    samples: int
    shards: int
    passed_on: int | None = None


def write_decision_file(path: str, rows: list[dict], count: InputCount | None) -> None:
    """One input shard's decision rows, in input order, with ``count`` (if any) in the schema metadata."""
    # from_pylist takes the schema's columns only, so the routing field _shard_index is left out
    # without touching the rows (elements are never mutated once emitted).
    rows = sorted(rows, key=lambda r: (r["source_index"], r["key"]))
    schema = DECISION_SCHEMA
    if count is not None:
        meta = {INPUT_SAMPLES: str(count.samples).encode(), INPUT_SHARDS: str(count.shards).encode()}
        if count.passed_on is not None:
            meta[PASSED_ON] = str(count.passed_on).encode()
        schema = schema.with_metadata(meta)
    write_parquet(path, pa.Table.from_pylist(rows, schema=schema))


def recorded_count(path: str) -> InputCount | None:
    """The InputCount a decisions file records (its shard index from the file name's digits), or
    None for a file whose reader did not count (export's) or that was written before counts existed."""
    with fs.open(path, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    if INPUT_SAMPLES not in meta:
        return None
    digits = "".join(c for c in fs.basename(path) if c.isdigit())
    passed_on = meta.get(PASSED_ON)
    return InputCount(int(digits), int(meta[INPUT_SAMPLES]), int(meta[INPUT_SHARDS]),
                      None if passed_on is None else int(passed_on))


def _shard_of(element) -> tuple[int, dict | InputCount]:
    return (element.shard_index if isinstance(element, InputCount) else element["_shard_index"]), element


class _WriteDecisionShard(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        shard_index, elements = element
        rows, counts = [], []
        for e in elements:
            (counts if isinstance(e, InputCount) else rows).append(e)
        if len(counts) > 1:
            raise RuntimeError(f"decisions of input shard {shard_index}: {len(counts)} input counts from its "
                               "readers, expected one")
        # None: a reader that does not count (export's check_rows); the report lists such files.
        path = fs.join(self._out_dir, f"{shard_index:05d}.parquet")
        write_decision_file(path, rows, counts[0] if counts else None)
        yield path


class WriteDecisions(beam.PTransform):
    """Decision rows and each input shard's InputCount -> OUT/decisions/NNNNN.parquet, one file per
    input shard, rows in input order, the count in the file's metadata."""

    def __init__(self, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, rows):
        return (
            rows
            | "ByInputShard" >> beam.Map(_shard_of)
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteDecisionShard(self._out_dir))
        )
