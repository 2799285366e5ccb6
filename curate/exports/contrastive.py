"""Contrastive (CLIP) export: WebDataset shards that open_clip_train reads as they are.

Per sample ``KEY.jpg`` (or .png/.webp: open_clip_train's reader takes ``jpg;png;jpeg;webp``; any
other format is re-encoded as JPEG), ``KEY.txt`` (the caption) and ``KEY.json`` (the curated
metadata), one tar per curated shard with the same number, plus ``sizes.json``, from which
open_clip_train takes the dataset size when ``--train-num-samples`` is not given.
"""
from __future__ import annotations


import apache_beam as beam

from curate import fs
from curate.config import Schema
from curate.exports.writing import WriteSizesJson, exportable, image_member, shard_name
from curate.io import write_tar
from curate.timing import timed

# open_clip_train: wds.rename(image="jpg;png;jpeg;webp", text="txt")
OPEN_CLIP_IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")


class _WriteContrastiveShard(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, path):
        with timed("export_contrastive"):
            members = []
            for sample, decoded in exportable(path):
                ext, data = image_member(sample, decoded, OPEN_CLIP_IMAGE_EXTS)
                members.append((sample.key, {ext: data, "txt": sample.caption, "json": sample.meta}))
            name = f"{shard_name(path)}.tar"
            fs.makedirs(self._out_dir)
            write_tar(fs.join(self._out_dir, name), members)
        yield name, len(members)


class ContrastiveExport(beam.PTransform):
    """Curated shard paths -> OUT_DIR/NNNNN.tar (image, txt, json) + sizes.json; returns its writes."""

    SCHEMA: Schema = {}

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, shards):
        return (shards
                | "WriteShards" >> beam.ParDo(_WriteContrastiveShard(self._out_dir))
                | "SizesJson" >> WriteSizesJson(self._out_dir))
