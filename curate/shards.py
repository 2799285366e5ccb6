"""Curated shards: unique keys, then fixed-size tars (with a parquet of their rows) and sizes.json.

Only Create, ParDo, GroupByKey and Flatten are used, so every runner (the Dask runner included)
can run them. Shard ids are assigned here, not by fileio.WriteToFiles, which cannot fix the number
of samples per file; each file is written under a temp name and renamed.
"""
from __future__ import annotations

import io
import json
import logging
import time

import apache_beam as beam
import pyarrow as pa

from curate import fs
from curate.io import format_ext, sample_json, write_bytes, write_parquet, write_tar
from curate.outputs import DECISIONS, MAIN, split
from curate.raw_shards import read_members
from curate.records import UNIQUE_KEYS, WRITE, Sample, decision
from curate.timing import add_time

log = logging.getLogger("curate")

DUPLICATE_KEY = "duplicate_key"

SHARD_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("language", pa.string()),
    ("clip_score", pa.float32()), ("width", pa.int32()), ("height", pa.int32()),
    ("sha256", pa.string()), ("url", pa.string()), ("source_shard", pa.string()),
    ("source_index", pa.int64()), ("phash", pa.string()), ("image_format", pa.string()),
])


class _KeepFirstOfKey(beam.DoFn):
    def process(self, element):
        _, samples = element
        first, *others = sorted(samples, key=lambda s: s.order)
        yield MAIN, first
        for s in others:
            yield DECISIONS, decision(s, False, UNIQUE_KEYS, DUPLICATE_KEY,
                                      detail=f"key already used by {first.shard_path}#{first.member_index}")


class UniqueKeys(beam.PTransform):
    """Samples -> one sample per key, the earliest in the input (main), and rows for the others.

    Keys name files inside the curated tars, so they must be unique. Two corpora merged (two
    img2dataset downloads, say) can repeat keys; resolving that before deduplication means that a
    duplicate is only ever dropped in favour of a sample that can be written.
    """

    def expand(self, samples):
        return split(samples
                     | "ByKey" >> beam.Map(lambda s: (s.key, s))
                     | "Group" >> beam.GroupByKey()
                     | "KeepFirst" >> beam.ParDo(_KeepFirstOfKey()), "KeepFirst", "unique")


class PlanShards(beam.DoFn):
    """All kept samples (unique keys) -> (output shard id, samples) in input order,
    samples_per_shard each; also each kept sample's final decision."""

    def __init__(self, samples_per_shard: int):
        self._n = samples_per_shard

    def process(self, element):
        _, samples = element
        samples = sorted(samples, key=lambda s: s.order)
        for start in range(0, len(samples), self._n):
            yield MAIN, (start // self._n, samples[start:start + self._n])
        for s in samples:
            yield DECISIONS, decision(s, True, WRITE)


TRAINER_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})


def trainer_image(sample: Sample, data: bytes) -> tuple[str, bytes]:
    """(member extension, bytes) of a curated image: the original bytes named by their real format
    (a PNG read from KEY.jpg is written as KEY.png) when trainers read that format; otherwise (AVIF,
    HEIF, GIF, TIFF, BMP) the decoded image as it was scored (first frame, upright, RGB), re-encoded
    losslessly as PNG. ``image_format`` in KEY.json keeps the input's format."""
    if sample.image_format in TRAINER_FORMATS or sample.image_format is None:
        return format_ext(sample.image_format, sample.image_ext), data
    from curate.filters.image import PIL_DEFAULT_MAX_PIXELS, decode_image

    # it decoded under the run's pixel cap already: allow at least its own size
    decoded = decode_image(data, max(PIL_DEFAULT_MAX_PIXELS, (sample.width or 0) * (sample.height or 0)))
    buf = io.BytesIO()
    decoded.image.save(buf, format="PNG")
    return "png", buf.getvalue()


class WriteShardFn(beam.DoFn):
    """(shard id, samples) -> NNNNN.tar + NNNNN.parquet, re-reading image bytes from the raw shards."""

    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        shard_id, samples = element
        t0 = time.perf_counter()
        wanted: dict[str, dict[int, Sample]] = {}
        for s in samples:
            wanted.setdefault(s.shard_path, {})[s.member_index] = s
        found: dict[tuple[str, int], dict] = {}
        for path, by_index in wanted.items():
            found.update(read_members(path, set(by_index)))
        members, rows = [], []
        for s in samples:
            fields = found[(s.shard_path, s.member_index)]
            meta = sample_json(fields)
            meta.update(key=s.key, caption=s.caption, language=s.language, clip_score=s.clip_score,
                        width=s.width, height=s.height, sha256=s.sha256, source_key=s.key,
                        source_shard=fs.basename(s.shard_path), image_format=s.image_format)
            ext, data = trainer_image(s, fields[s.image_ext])
            members.append((s.key, {ext: data, "txt": s.caption, "json": meta}))
            rows.append({"key": s.key, "caption": s.caption, "language": s.language,
                         "clip_score": s.clip_score, "width": s.width, "height": s.height,
                         "sha256": s.sha256, "url": meta.get("url") if isinstance(meta.get("url"), str) else None,
                         "source_shard": s.shard_path, "source_index": s.member_index, "phash": s.phash,
                         "image_format": s.image_format})
        name = f"{shard_id:05d}"
        fs.makedirs(self._out_dir)
        write_tar(fs.join(self._out_dir, f"{name}.tar"), members)
        write_parquet(fs.join(self._out_dir, f"{name}.parquet"), pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
        add_time(WRITE, time.perf_counter() - t0)
        log.info("wrote shard %s.tar: %d samples", name, len(samples))
        yield f"{name}.tar", len(samples)



class _WriteSizes(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        _, sizes = element
        write_sizes(self._out_dir, dict(sizes))
        yield len(sizes)


def write_sizes(out_dir: str, sizes: dict[str, int]) -> None:
    """sizes.json, as open_clip_train reads it: {"NNNNN.tar": samples}."""
    fs.makedirs(out_dir)
    write_bytes(fs.join(out_dir, "sizes.json"), json.dumps(dict(sorted(sizes.items())), indent=1).encode())


class WriteCuratedShards(beam.PTransform):
    """Kept samples -> OUT/shards/{NNNNN.tar, NNNNN.parquet, sizes.json}; decisions under tag 'decisions'."""

    def __init__(self, out_dir: str, samples_per_shard: int):
        super().__init__()
        self._out_dir = out_dir
        self._n = samples_per_shard

    def expand(self, kept):
        plans = split(
            kept
            | "All" >> beam.Map(lambda s: (0, s))
            | "Gather" >> beam.GroupByKey()
            | "Plan" >> beam.ParDo(PlanShards(self._n)), "Plan", "shards")
        sizes = (
            plans.shards
            | "Spread" >> beam.Reshuffle()
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._out_dir))
            | "AllSizes" >> beam.Map(lambda kv: (0, kv))
            | "GatherSizes" >> beam.GroupByKey()
            | "WriteSizes" >> beam.ParDo(_WriteSizes(self._out_dir))
        )
        return {"decisions": plans.decisions, "sizes": sizes}
