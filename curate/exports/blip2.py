"""BLIP-2 / LAVIS export: WebDataset shards of ``KEY.jpg`` + ``KEY.json`` ``{"caption": ...}``.

LAVIS's LAION dataset reads ``wds.WebDataset(urls).decode("pilrgb").to_tuple("jpg", "json")`` and
trains on ``sample[1]["caption"]``; the image member must therefore be named ``jpg`` and hold a
JPEG, so an image stored in another format is re-encoded (quality 95).
"""
from __future__ import annotations

import apache_beam as beam

from curate.exports.writing import WriteShardPerShard, image_member


def blip2_members(sample, image) -> dict:
    """A JPEG named jpg and json {"caption": ...}, as LAVIS's LAION reader takes them."""
    _, data = image_member(sample, image, ("jpg",))
    return {"jpg": data, "json": {"caption": sample.caption}}


class Blip2Export(beam.PTransform):
    """Curated shards (paths or CheckedShards) -> OUT_DIR/NNNNN.tar (jpg + json caption) + sizes.json; returns its writes."""

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self._out_dir = out_dir

    def expand(self, shards):
        return shards | "Shards" >> WriteShardPerShard(self._out_dir, blip2_members, "export_blip2")
