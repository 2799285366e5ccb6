"""Helpers the family exports share: which curated samples can be exported, image bytes in the
form a reader expects, and sizes.json for each folder of WebDataset shards.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam

from curate import fs
from curate.exports.common import CuratedSample, read_curated_shard
from curate.filters.image import decode_image
from curate.io import TarReadError, dumps_json, shard_stem, write_bytes, write_tar
from curate.progress import advance
from curate.shards import write_sizes
from curate.timing import timed

log = logging.getLogger("curate")

EXPORT = "export"  # stage name in the export's decisions table and timings


@dataclass(frozen=True)
class ImageCheck:
    """What decoding one curated image found, without its pixels: ``reason`` (and ``detail``) when it
    fails, else its format and size; ``key`` and ``index`` (position in the tar) name the sample."""
    key: str
    index: int
    reason: str | None
    detail: str | None
    format: str | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class CheckedShard:
    """A curated shard whose images were each decoded once (``checks``, in shard order, one per
    sample read), so that no format decodes them again to learn whether they can be exported.
    ``error``: why the tar broke off after the samples read (``TarReadError``), else None."""
    path: str
    checks: tuple[ImageCheck, ...]
    error: str | None = None


def check_shard(path: str) -> CheckedShard:
    """Decode every image of a curated shard once and keep what was found (not the pixels).

    laion_filter only writes decodable images, so a failure means a damaged or foreign shard; each
    export skips such samples and the export pipeline records them. A tar that breaks off mid-way
    keeps the samples before the damage (the pipeline records an ``unreadable_tar`` row).
    """
    checks, error = [], None
    try:
        for sample in read_curated_shard(path):
            d = decode_image(sample.image)
            checks.append(ImageCheck(sample.key, sample.index, d.reason, d.detail, d.format, d.width, d.height))
    except TarReadError as e:
        log.warning("export: %s (exported the samples before the error)", e)
        error = str(e)
    return CheckedShard(path, tuple(checks), error)


def as_checked(shard: str | CheckedShard) -> CheckedShard:
    """A format's input element: a CheckedShard (pipelines.export checks each shard once for all
    formats) or a curated shard path, checked here (a format run on its own)."""
    return shard if isinstance(shard, CheckedShard) else check_shard(shard)


def shard_path(shard: str | CheckedShard) -> str:
    return shard.path if isinstance(shard, CheckedShard) else shard


class ExportImage:
    """A curated image that decodes (its ImageCheck) and, for the formats that need pixels (codebook
    and VQ codes, re-encoding), ``rgb()``: one more decode, made only when called."""

    def __init__(self, data: bytes, check: ImageCheck):
        self._data, self.format, self.width, self.height = data, check.format, check.width, check.height

    def rgb(self):
        return decode_image(self._data).image


def exportable(shard: str | CheckedShard) -> Iterator[tuple[CuratedSample, ExportImage]]:
    """The samples of a curated shard every export can take (their image decoded when checked), in
    shard order, without decoding them again."""
    checked = as_checked(shard)
    samples = read_curated_shard(checked.path)
    for check in checked.checks:
        try:
            sample = next(samples)
        except (StopIteration, TarReadError):
            sample = None
        if sample is None or (sample.key, sample.index) != (check.key, check.index):
            log.warning("export: %s changed since it was checked; exported the samples before", checked.path)
            return
        if check.reason is None:
            yield sample, ExportImage(sample.image, check)


def image_member(sample: CuratedSample, image: ExportImage, allowed: tuple[str, ...] = ("jpg",)) -> tuple[str, bytes]:
    """(extension, bytes) of the image: the curated bytes when their extension is one the reader
    takes (and matches the bytes' format: curated members are named by it, MPO being a JPEG), else the
    decoded image re-encoded as JPEG (quality 95), so nothing is dropped for format."""
    ext = "jpg" if sample.image_ext == "jpeg" and "jpeg" not in allowed else sample.image_ext
    if ext in allowed and (image.format in ("JPEG", "MPO")) == (ext in ("jpg", "jpeg")):
        return ext, sample.image
    buf = io.BytesIO()
    image.rgb().save(buf, format="JPEG", quality=95)
    return "jpg", buf.getvalue()


def shard_name(path: str) -> str:
    """``/x/OUT/shards/00003.tar`` (or ``.tar.gz``, ``.tgz``) -> ``00003``: exported shards keep the
    curated shard's number."""
    return shard_stem(path)


def progress(out_dir: str, name: str, samples: int) -> None:
    """One line per exported shard: long exports show where they are."""
    if not advance(f"export {fs.basename(out_dir)}", samples, status=name):
        log.info("exported %s/%s: %d samples", out_dir, name, samples)


def write_json(path: str, obj) -> str:
    fs.makedirs(fs.dirname(path))
    write_bytes(path, dumps_json(obj))
    return path


class _WriteSizesJson(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        _, sizes = element
        write_sizes(self._out_dir, dict(kv for kv in sizes if kv is not None))
        yield fs.join(self._out_dir, "sizes.json")


class WriteSizesJson(beam.PTransform):
    """(tar name, samples) pairs -> OUT_DIR/sizes.json, as open_clip_train and webdataset readers use it.

    Written even when no shard was (an empty {}), so a reader finds the folder complete.
    """

    def __init__(self, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, counts):
        empty = counts.pipeline | "Always" >> beam.Create([None])
        return ((counts, empty) | "WithSentinel" >> beam.Flatten()
                | "All" >> beam.Map(lambda kv: (0, kv))
                | "Gather" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteSizesJson(self._out_dir)))


class _WriteMappedShard(beam.DoFn):
    def __init__(self, out_dir: str, to_members, label: str):
        self._out_dir, self._to_members, self._label = out_dir, to_members, label

    def process(self, shard):
        with timed(self._label):
            members = [(sample.key, self._to_members(sample, image)) for sample, image in exportable(shard)]
            name = f"{shard_name(shard_path(shard))}.tar"
            fs.makedirs(self._out_dir)
            write_tar(fs.join(self._out_dir, name), members)
        progress(self._out_dir, name, len(members))
        yield name, len(members)


class WriteShardPerShard(beam.PTransform):
    """Curated shards (paths or CheckedShards) -> one WebDataset tar per curated shard (same number) +
    sizes.json.

    ``to_members(sample, image) -> {ext: bytes|str|dict}`` says what a format writes per sample
    (``image``: an ExportImage).
    """

    def __init__(self, out_dir: str, to_members, label: str):
        super().__init__()
        self._out_dir, self._to_members, self._label = out_dir, to_members, label

    def expand(self, shards):
        return (shards
                | "WriteShards" >> beam.ParDo(_WriteMappedShard(self._out_dir, self._to_members, self._label))
                | "SizesJson" >> WriteSizesJson(self._out_dir))
