"""What every export reads: the samples of a curated shard folder, in shard order.

Curated shards (OUT/shards/NNNNN.tar) hold KEY.jpg (or another image extension), KEY.txt and
KEY.json per sample. Exporters receive ``CuratedSample`` records and never re-decide anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from curate import fs
from curate.io import IMAGE_EXTS, iter_tar_samples, sample_json


@dataclass
class CuratedSample:
    """One curated sample: image bytes, caption and its json metadata, and where it sits."""
    key: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict = field(default_factory=dict)
    shard: str = ""          # curated shard file name, e.g. "00000.tar"
    index: int = 0           # position inside that shard

    @property
    def order(self) -> tuple[str, int]:
        return (self.shard, self.index)


def list_curated_shards(shards_dir: str) -> list[str]:
    """Sorted NNNNN.tar paths of a curated shard folder (OUT/shards). Raises ValueError if none."""
    paths = sorted(fs.glob(fs.join(shards_dir, "*.tar")))
    if not paths:
        raise ValueError(f"no curated .tar shards in {shards_dir!r}")
    return paths


def read_curated_shard(path: str) -> Iterator[CuratedSample]:
    """The samples of one curated tar, in order. Members without an image are skipped: the
    curate writer never produces them, so they can only come from a foreign tar."""
    name = fs.basename(path)
    for index, (key, fields) in enumerate(iter_tar_samples(path)):
        ext = next((e for e in IMAGE_EXTS if e in fields), None)
        if ext is None:
            continue
        caption = fields.get("txt", b"").decode("utf-8", errors="replace")
        yield CuratedSample(key, fields[ext], ext, caption, sample_json(fields), name, index)
