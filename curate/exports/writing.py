"""Helpers the family exports share: which curated samples can be exported, image bytes in the
form a reader expects, and sizes.json for each folder of WebDataset shards.
"""
from __future__ import annotations

import io
import logging
from typing import Iterator

import apache_beam as beam

from curate import fs
from curate.exports.common import CuratedSample, read_curated_shard
from curate.filters.image import Decoded, decode_image
from curate.io import TarReadError, dumps_json, shard_stem, write_bytes, write_tar
from curate.progress import advance
from curate.shards import write_sizes
from curate.timing import timed

log = logging.getLogger("curate")

EXPORT = "export"  # stage name in the export's decisions table and timings


def checked_samples(path: str) -> Iterator[tuple[CuratedSample, Decoded]]:
    """Every sample of a curated shard with its decoded image (``Decoded.reason`` set when it fails).

    laion_filter only writes decodable images, so a failure means a damaged or foreign shard; each
    export skips such samples and the export pipeline records them. A tar that breaks off mid-way
    yields the samples before the damage (the pipeline records an ``unreadable_tar`` row).
    """
    try:
        for sample in read_curated_shard(path):
            yield sample, decode_image(sample.image)
    except TarReadError as e:
        log.warning("export: %s (exported the samples before the error)", e)


def exportable(path: str) -> Iterator[tuple[CuratedSample, Decoded]]:
    """The samples of ``path`` every export can take: image decodes (see checked_samples)."""
    return ((s, d) for s, d in checked_samples(path) if d.reason is None)


def image_member(sample: CuratedSample, decoded: Decoded, allowed: tuple[str, ...] = ("jpg",)) -> tuple[str, bytes]:
    """(extension, bytes) of the image: the curated bytes when their extension is one the reader
    takes (and matches the bytes' format: curated members are named by it, MPO being a JPEG), else the
    decoded image re-encoded as JPEG (quality 95), so nothing is dropped for format."""
    ext = "jpg" if sample.image_ext == "jpeg" and "jpeg" not in allowed else sample.image_ext
    if ext in allowed and (decoded.format in ("JPEG", "MPO")) == (ext in ("jpg", "jpeg")):
        return ext, sample.image
    buf = io.BytesIO()
    decoded.image.save(buf, format="JPEG", quality=95)
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

    def process(self, path):
        with timed(self._label):
            members = [(sample.key, self._to_members(sample, decoded)) for sample, decoded in exportable(path)]
            name = f"{shard_name(path)}.tar"
            fs.makedirs(self._out_dir)
            write_tar(fs.join(self._out_dir, name), members)
        progress(self._out_dir, name, len(members))
        yield name, len(members)


class WriteShardPerShard(beam.PTransform):
    """Curated shard paths -> one WebDataset tar per curated shard (same number) + sizes.json.

    ``to_members(sample, decoded) -> {ext: bytes|str|dict}`` says what a format writes per sample.
    """

    def __init__(self, out_dir: str, to_members, label: str):
        super().__init__()
        self._out_dir, self._to_members, self._label = out_dir, to_members, label

    def expand(self, shards):
        return (shards
                | "WriteShards" >> beam.ParDo(_WriteMappedShard(self._out_dir, self._to_members, self._label))
                | "SizesJson" >> WriteSizesJson(self._out_dir))
