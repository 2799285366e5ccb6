"""LLaVA pretraining export: conversation JSON + its image folder, as LLaVA's train.py reads them.

``OUT_DIR/chat.json`` is a list (LLaVA-Pretrain's ``blip_laion_cc_sbu_558k.json`` layout) of
``{"id": KEY, "image": "NNNNN/KEY.jpg", "conversations": [{"from": "human", "value": PROMPT},
{"from": "gpt", "value": CAPTION}]}``; ``OUT_DIR/images/NNNNN/KEY.jpg`` holds the curated image
bytes unchanged (LLaVA opens them with PIL, any format; the extension is the image's format: jpg,
png, webp ...), KEY written as one file name (``image_file_name``: ``/`` becomes ``%2F``). Train
with ``--data_path OUT_DIR/chat.json --image_folder OUT_DIR/images``. The human turn is one of ``llava.prompts``, picked per key by a
hash (LLaVA's pretraining set draws a brief-description instruction per sample likewise).
"""
from __future__ import annotations

import hashlib
import json

import apache_beam as beam

from curate import fs
from curate.config import ConfigError
from curate.exports.writing import exportable, progress, shard_name, shard_path
from curate.io import write_bytes
from curate.timing import timed

IMAGE_TOKEN = "<image>"


def pick_prompt(key: str, prompts: list[str]) -> str:
    """The human turn for ``key``: a stable choice (sha256 of the key), independent of order and workers."""
    return prompts[int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % len(prompts)]


def image_file_name(key: str) -> str:
    """``key`` as one file name: ``%`` and ``/`` percent-encoded (``a/b`` -> ``a%2Fb``), so no key's
    image is a folder another key's image needs (keys ``a`` and ``a.jpg/b`` would otherwise want
    ``a.jpg`` as a file and as a folder) and different keys never share a name (the encoding is
    one-to-one). An img2dataset key has neither character and keeps its spelling."""
    return key.replace("%", "%25").replace("/", "%2F")


def conversation(key: str, image: str, caption: str, prompts: list[str]) -> dict:
    """One LLaVA pretraining record: the image placeholder in the human turn, the caption as the answer."""
    return {"id": key, "image": image, "conversations": [
        {"from": "human", "value": pick_prompt(key, prompts)}, {"from": "gpt", "value": caption}]}


class _WriteLlavaImages(beam.DoFn):
    """One curated shard -> its images under OUT_DIR/images/NNNNN/ and its records (for chat.json)."""

    def __init__(self, out_dir: str, prompts: list[str]):
        self._out_dir, self._prompts = out_dir, prompts

    def process(self, shard):
        name, records = shard_name(shard_path(shard)), []
        with timed("export_llava"):
            for sample, _image in exportable(shard):
                image = f"{name}/{image_file_name(sample.key)}.{sample.image_ext}"
                target = fs.join(self._out_dir, "images", image)
                fs.makedirs(fs.dirname(target))
                write_bytes(target, sample.image)
                records.append((sample.order, conversation(sample.key, image, sample.caption, self._prompts)))
        progress(fs.join(self._out_dir, "images"), name, len(records))
        yield 0, records


class _WriteChatJson(beam.DoFn):
    def __init__(self, out_dir: str):
        self._out_dir = out_dir

    def process(self, element):
        _, shards = element
        records = [r for _order, r in sorted((x for shard in shards for x in shard), key=lambda x: x[0])]
        path = fs.join(self._out_dir, "chat.json")
        fs.makedirs(self._out_dir)
        write_bytes(path, json.dumps(records, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8"))
        yield path


class LlavaExport(beam.PTransform):
    """Curated shards (paths or CheckedShards) -> OUT_DIR/chat.json + OUT_DIR/images/; returns its writes."""

    @staticmethod
    def check(cfg: dict) -> None:
        prompts = cfg["llava.prompts"]
        if not prompts or any(p.count(IMAGE_TOKEN) != 1 for p in prompts):
            raise ConfigError(f"config error: llava.prompts must be a non-empty list of strings that each hold "
                              f"{IMAGE_TOKEN} exactly once, got {prompts!r}")

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self.check(cfg)
        self._out_dir, self._prompts = out_dir, list(cfg["llava.prompts"])

    def expand(self, shards):
        records = shards | "WriteImages" >> beam.ParDo(_WriteLlavaImages(self._out_dir, self._prompts))
        empty = shards.pipeline | "NoRecords" >> beam.Create([(0, [])])  # chat.json even with no shards
        return ((records, empty)
                | "AllRecords" >> beam.Flatten()
                | "Gather" >> beam.GroupByKey()
                | "WriteChatJson" >> beam.ParDo(_WriteChatJson(self._out_dir)))
