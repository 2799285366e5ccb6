"""Curated shards: unique keys, then fixed-size tars (with a parquet of their rows) and sizes.json.

Only Create, ParDo, GroupByKey and Flatten are used, so every runner (the Dask runner included)
can run them. Shard ids are assigned here, not by fileio.WriteToFiles, which cannot fix the number
of samples per file; each file is written under a temp name and renamed.
"""
from __future__ import annotations

import io
import json
import logging

import apache_beam as beam
import pyarrow as pa

from curate import fs, progress
from curate.gather import GatherSmall
from curate.io import format_ext, sample_json, write_bytes, write_parquet, write_tar
from curate.outputs import DECISIONS, MAIN, split
from curate.raw_shards import read_members
from curate.records import UNIQUE_KEYS, WRITE, Sample, decision
from curate.timing import timed

log = logging.getLogger("curate")

DUPLICATE_KEY = "duplicate_key"

SHARD_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("language", pa.string()),
    ("clip_score", pa.float32()), ("width", pa.int32()), ("height", pa.int32()),
    ("sha256", pa.string()), ("url", pa.string()), ("source_shard", pa.string()),
    ("source_index", pa.int64()), ("phash", pa.string()), ("image_format", pa.string()),
    ("metadata_entries", pa.list_(pa.string())),
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


def plan_shards(orders: list[tuple[int, int]], samples_per_shard: int) -> list[list[tuple[int, int]]]:
    """The curated layout, as a rule: the kept samples' input positions in input order, cut into
    consecutive shards of ``samples_per_shard`` (the last may hold fewer); shard i is NNNNN = i.

    ``WriteCuratedShards`` reaches the same layout without bringing the samples together
    (``input_shard_offsets``, ``output_shard``); tests compare the two.
    """
    ordered = sorted(orders)
    return [ordered[start:start + samples_per_shard] for start in range(0, len(ordered), samples_per_shard)]


def input_shard_offsets(counts: list[tuple[int, int]]) -> dict[int, int]:
    """(input shard index, kept samples in it) pairs -> {input shard index: global position of its
    first kept sample}: prefix sums in input shard order, since input order sorts by shard first."""
    offsets, total = {}, 0
    for shard_index, count in sorted(counts):
        offsets[shard_index] = total
        total += count
    return offsets


def output_shard(position: int, samples_per_shard: int) -> int:
    """The output shard of the kept sample at global ``position`` (0-based, input order)."""
    return position // samples_per_shard


COUNTS = "counts"


class _RankInInputShard(beam.DoFn):
    """(input shard index, its kept samples) -> (rank in input order, sample) per sample (main),
    the shard's count (tag 'counts'), and each sample's final decision (tag 'decisions')."""

    def process(self, element):
        shard_index, samples = element
        samples = sorted(samples, key=lambda s: s.order)
        yield COUNTS, (shard_index, len(samples))
        for rank, s in enumerate(samples):
            yield MAIN, (rank, s)
            yield DECISIONS, decision(s, True, WRITE)


def _to_output_shard(ranked, offsets: dict[int, int], samples_per_shard: int):
    rank, sample = ranked
    return output_shard(offsets[sample.shard_index] + rank, samples_per_shard), sample


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
        with timed(WRITE):
            name = self._write(shard_id, samples)
        if not progress.advance("write", len(samples), status=f"{name}.tar"):
            log.info("wrote shard %s.tar: %d samples", name, len(samples))
        yield f"{name}.tar", len(samples)

    def _write(self, shard_id: int, samples: list[Sample]) -> str:
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
            entries = None if s.metadata_entries is None else list(s.metadata_entries)
            meta.update(key=s.key, caption=s.caption, language=s.language, clip_score=s.clip_score,
                        width=s.width, height=s.height, sha256=s.sha256, source_key=s.key,
                        source_shard=fs.basename(s.shard_path), image_format=s.image_format,
                        metadata_entries=entries)
            ext, data = trainer_image(s, fields[s.image_ext])
            members.append((s.key, {ext: data, "txt": s.caption, "json": meta}))
            rows.append({"key": s.key, "caption": s.caption, "language": s.language,
                         "clip_score": s.clip_score, "width": s.width, "height": s.height,
                         "sha256": s.sha256, "url": meta.get("url") if isinstance(meta.get("url"), str) else None,
                         "source_shard": s.shard_path, "source_index": s.member_index, "phash": s.phash,
                         "image_format": s.image_format, "metadata_entries": entries})
        name = f"{shard_id:05d}"
        fs.makedirs(self._out_dir)
        write_tar(fs.join(self._out_dir, f"{name}.tar"), members)
        write_parquet(fs.join(self._out_dir, f"{name}.parquet"), pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
        return name


class _WriteSizes(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, sizes):
        write_sizes(self._out_dir, dict(sizes))
        yield len(sizes)


def write_sizes(out_dir: str, sizes: dict[str, int]) -> None:
    """sizes.json, as open_clip_train reads it: {"NNNNN.tar": samples}."""
    fs.makedirs(out_dir)
    write_bytes(fs.join(out_dir, "sizes.json"), json.dumps(dict(sorted(sizes.items())), indent=1).encode())


class WriteCuratedShards(beam.PTransform):
    """Kept samples -> OUT/shards/{NNNNN.tar, NNNNN.parquet, sizes.json}; decisions under tag 'decisions'.

    The layout of ``plan_shards`` without a global gather of samples: the kept samples of each input
    shard meet (bounded by an input shard) to be ranked in input order; only their counts, one pair
    per input shard, meet on one worker to become prefix-sum offsets (a side input); each sample's
    global position (offset + rank) names its output shard, and the samples of one output shard meet
    to be written. sizes.json gathers one (name, count) pair per output shard.
    """

    def __init__(self, out_dir: str, samples_per_shard: int):
        super().__init__()
        self._out_dir = out_dir
        self._n = samples_per_shard

    def expand(self, kept):
        ranked = split(
            kept
            | "ByInputShard" >> beam.Map(lambda s: (s.shard_index, s))
            | "GroupInputShard" >> beam.GroupByKey()
            | "Rank" >> beam.ParDo(_RankInInputShard()), "Rank", "samples", DECISIONS, COUNTS)
        offsets = beam.pvalue.AsSingleton(
            ranked.counts | "GatherCounts" >> GatherSmall() | "Offsets" >> beam.Map(input_shard_offsets),
            default_value={})
        sizes = (
            ranked.samples
            | "ToOutputShard" >> beam.Map(_to_output_shard, offsets, self._n)
            | "GroupOutputShard" >> beam.GroupByKey()
            | "InOrder" >> beam.MapTuple(lambda shard_id, samples: (shard_id, sorted(samples, key=lambda s: s.order)))
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._out_dir))
            | "GatherSizes" >> GatherSmall()
            | "WriteSizes" >> beam.ParDo(_WriteSizes(self._out_dir))
        )
        return {"decisions": ranked.decisions, "sizes": sizes}
