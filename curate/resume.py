"""Resuming an interrupted run without redoing its costly work: per-input-shard completion markers.

The scoring stage (score, laion_filter) checkpoints each input shard P as soon as it is scored:

    EMB/img_emb/img_emb_P.npy ...     the shard's scored samples (curate.embeddings.write_part; none
                                      when no sample of it could be scored)
    OUT/.resume/P.parquet             its rows for the samples that could not be scored (read, decode)
    OUT/.resume/P.json                the completion marker (write_marker), written LAST: the input shard (path, size),
                                      the scoring settings, how many samples were scored, the shard's
                                      InputCount (what the reader counted)

each written atomically (temp name + rename), so a shard is either entirely done or redone. EMB is
OUT/embeddings when the run keeps its embeddings (score; laion_filter with save_embeddings), else
OUT/.resume/embeddings. A rerun skips every shard whose marker matches: no read, decode or model
call; its samples come back from the stored part with the same values (``load``).

The folder belongs to the run marker (.curate_run.json): curate.run removes it whenever a run
starts that is not the resumption of an interrupted one with the same settings, and once a run has
completed. The marker repeats the scoring settings and the input shard's size, so a part is never
taken for other settings or for an input shard that changed size since.
"""
from __future__ import annotations

import dataclasses
import json
import logging

import pyarrow as pa

from curate import fs
from curate.decisions import InputCount
from curate.embeddings import read_part, write_part
from curate.io import dumps_json, read_parquet, write_bytes, write_parquet
from curate.outputs import DECISIONS, MAIN
from curate.records import DECISION_SCHEMA, Sample

log = logging.getLogger("curate")

FOLDER = ".resume"  # inside the output folder


def folder(out: str) -> str:
    """The checkpoint folder of the run writing into ``out``."""
    return fs.join(out, FOLDER)


def write_marker(marker: str, source: str, settings: dict, **record) -> None:
    """A unit of work is finished (write it LAST, after its outputs): the input file it came from
    (path and size), the settings it was done under, and what a resumed run needs of it."""
    fs.makedirs(fs.dirname(marker))
    write_bytes(marker, dumps_json({"source": source, "bytes": fs.size(source), "settings": settings, **record}))


def read_marker(marker: str, source: str, settings: dict) -> dict | None:
    """The record of a finished unit, or None when there is no marker, or it was written for another
    input file (path or size) or other settings: then the unit is done again."""
    if not fs.exists(marker):
        return None
    done = json.loads(fs.read_bytes(marker))
    if (done["source"], done["bytes"], done["settings"]) != (source, fs.size(source), settings):
        return None
    return done


@dataclasses.dataclass(frozen=True)
class ScoreCheckpoint:
    """Where one run checkpoints its scored input shards, and under which settings they count."""
    out: str          # the run's output folder
    emb_dir: str      # where the parts go: OUT/embeddings, or OUT/.resume/embeddings
    settings: dict    # what decides a shard's scores and rows (model, precision, batch size, ...)

    def _marker(self, index: int) -> str:
        return fs.join(folder(self.out), f"{index:05d}.json")

    def _rows(self, index: int) -> str:
        return fs.join(folder(self.out), f"{index:05d}.parquet")

    def save(self, index: int, path: str, samples: list[Sample], others: list) -> None:
        """Checkpoint one scored input shard: its part, its unscored rows, then the marker.

        ``others``: what the shard gave besides scored samples (decision rows, its InputCount)."""
        rows = [o for o in others if isinstance(o, dict)]
        counts = [dataclasses.asdict(o) for o in others if isinstance(o, InputCount)]
        if len(rows) + len(counts) != len(others):
            raise TypeError(f"input shard {index}: cannot checkpoint {others!r}")
        if samples:
            write_part(self.emb_dir, index, samples)
        fs.makedirs(folder(self.out))
        if rows:
            write_parquet(self._rows(index), pa.Table.from_pylist(rows, schema=DECISION_SCHEMA))
        write_marker(self._marker(index), path, self.settings,
                     scored=len(samples), unscored=len(rows), input_counts=counts)

    def load(self, index: int, path: str) -> list[tuple[str, object]] | None:
        """The (tag, value) pairs a checkpointed shard gave, or None when it must be scored:
        no marker, or one for another shard, size or settings.

        Scores come back as the run decided on them: a score is stored to 4 decimals
        (records.stable), the part keeps it as float32, and stable() of that float32 is the same
        number (tests/test_score.py checks every value in [-1, 1]); embeddings were float16 in the
        run too (scoring.scored_samples)."""
        done = read_marker(self._marker(index), path, self.settings)
        if done is None:
            return None
        samples = read_part(self.emb_dir, index) if done["scored"] else []
        rows = (read_parquet(self._rows(index), schema=DECISION_SCHEMA).to_pylist()
                if done["unscored"] else [])
        if (len(samples), len(rows)) != (done["scored"], done["unscored"]):
            return None  # a part removed or replaced since: score the shard again
        return ([(MAIN, s) for s in samples]
                + [(DECISIONS, {**row, "_shard_index": index}) for row in rows]
                + [(DECISIONS, InputCount(**c)) for c in done["input_counts"]])
