"""Contrastive (CLIP) export: WebDataset shards that open_clip_train reads as they are.

Per sample ``KEY.jpg`` (or .png/.webp: open_clip_train's reader takes ``jpg;png;jpeg;webp``; any
other format is re-encoded as JPEG), ``KEY.txt`` (the caption) and ``KEY.json`` (the curated
metadata), one tar per curated shard with the same number, plus ``sizes.json``, from which
open_clip_train takes the dataset size when ``--train-num-samples`` is not given.
"""
from __future__ import annotations

import apache_beam as beam

from curate.exports.writing import WriteShardPerShard, image_member

# open_clip_train: wds.rename(image="jpg;png;jpeg;webp", text="txt")
OPEN_CLIP_IMAGE_EXTS = ("jpg", "png", "jpeg", "webp")


def contrastive_members(sample, image) -> dict:
    """image (a format open_clip_train reads), caption as txt, the curated metadata as json."""
    ext, data = image_member(sample, image, OPEN_CLIP_IMAGE_EXTS)
    return {ext: data, "txt": sample.caption, "json": sample.meta}


class ContrastiveExport(beam.PTransform):
    """Curated shards (paths or CheckedShards) -> OUT_DIR/NNNNN.tar (image, txt, json) + sizes.json; returns its writes."""

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, shards):
        return shards | "Shards" >> WriteShardPerShard(self._out_dir, contrastive_members, "export_contrastive")
