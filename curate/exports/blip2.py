"""BLIP-2 / LAVIS export: WebDataset shards of ``KEY.jpg`` + ``KEY.json`` ``{"caption": ...}``.

LAVIS's LAION dataset reads ``wds.WebDataset(urls).decode("pilrgb").to_tuple("jpg", "json")`` and
trains on ``sample[1]["caption"]``; the image member must therefore be named ``jpg`` and hold a
JPEG, so an image stored in another format is re-encoded (quality 95).
"""
from __future__ import annotations


import apache_beam as beam

from curate import fs
from curate.config import Schema
from curate.exports.writing import WriteSizesJson, exportable, image_member, shard_name
from curate.io import write_tar
from curate.timing import timed


class _WriteBlip2Shard(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, path):
        with timed("export_blip2"):
            members = []
            for sample, decoded in exportable(path):
                _, data = image_member(sample, decoded, ("jpg",))
                members.append((sample.key, {"jpg": data, "json": {"caption": sample.caption}}))
            name = f"{shard_name(path)}.tar"
            fs.makedirs(self._out_dir)
            write_tar(fs.join(self._out_dir, name), members)
        yield name, len(members)


class Blip2Export(beam.PTransform):
    """Curated shard paths -> OUT_DIR/NNNNN.tar (jpg + json caption) + sizes.json; returns its writes."""

    SCHEMA: Schema = {}

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, shards):
        return (shards
                | "WriteShards" >> beam.ParDo(_WriteBlip2Shard(self._out_dir))
                | "SizesJson" >> WriteSizesJson(self._out_dir))
