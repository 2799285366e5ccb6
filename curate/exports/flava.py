"""FLAVA (masking objectives) export: image-text pairs with BEiT block masks and codebook ids, plus
image-only and text-only streams for FLAVA's unimodal objectives. All WebDataset shards:

``OUT_DIR/pairs/NNNNN.tar`` (one per curated shard)
    ``KEY.jpg`` (curated bytes), ``KEY.txt``, ``KEY.json``, ``KEY.mask.npy`` (uint8, grid x grid,
    1 = masked patch: FLAVA's ``bool_masked_pos``) and, with ``flava.codebook``, ``KEY.codes.npy``
    (int64, grid x grid: FlavaImageCodebook's ids, FLAVA's ``mim_labels``).
``OUT_DIR/image_only/NNNNN.tar``
    the same members but no txt: images of input samples that laion_filter dropped for their
    caption alone (see ``IMAGE_ONLY_REASONS``).
``OUT_DIR/text_only/NNNNN.tar``
    ``KEY.txt`` + ``KEY.json``: captions of input samples dropped for their image alone.
``sizes.json`` in each folder; ``OUT_DIR/masking.json`` records the mask and codebook settings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random

import apache_beam as beam
import numpy as np

from curate import fs
from curate.config import ConfigError
from curate.exports.packing import npy_bytes
from curate.exports.writing import (
    WriteSizesJson,
    exportable,
    progress,
    shard_name,
    write_json,
)
from curate.filters import basic
from curate.filters.image import decode_image
from curate.filters.sample import clean_caption
from curate.io import (
    IMAGE_EXTS,
    TarReadError,
    format_ext,
    iter_tar_samples,
    read_parquet,
    sample_json,
    write_tar,
)
from curate.timing import timed

log = logging.getLogger("curate")

# laion_filter's basic filter checks the image before the caption (filters.sample.basic_filter), so
# a sample dropped for one of these had a decodable image of acceptable size and aspect ratio.
IMAGE_ONLY_REASONS = (basic.CAPTION_TOO_SHORT, basic.BOILERPLATE_CAPTION)
# The caption was read (before the image) but not judged: the text stream re-applies the caption rules.
TEXT_ONLY_REASONS = ("missing_image", "empty_image", "unreadable_image", "truncated_image", "corrupt_image",
                     "decompression_bomb", basic.IMAGE_TOO_SMALL, basic.EXTREME_ASPECT_RATIO)
# FlavaImageCodebook pools three times: its id grid is the input size / 8.
CODEBOOK_STRIDE = 8


def block_mask(key: str, grid: int, ratio: float, min_patches: int = 16, max_patches: int | None = None,
               min_aspect: float = 0.3, max_aspect: float | None = None, seed: int = 0) -> np.ndarray:
    """BEiT's block-wise masking (Bao et al. 2021, Algorithm 1) of a ``grid`` x ``grid`` patch grid.

    Blocks of at least ``min_patches`` patches with aspect ratio in [min_aspect, max_aspect (default
    1/min_aspect)] are added until ``round(ratio * grid**2)`` patches are masked (or no block fits).
    The algorithm is transformers' FlavaMaskingGenerator (FLAVA's port of BEiT's); it draws from
    Python's global ``random``, so the draw is seeded from (seed, key) and the global state restored:
    the same key always gets the same mask, on any worker.
    """
    from transformers.models.flava.image_processing_flava import FlavaMaskingGenerator

    total = round(ratio * grid * grid)
    generator = FlavaMaskingGenerator(input_size=grid, total_mask_patches=total, mask_group_max_patches=max_patches,
                                      mask_group_min_patches=min_patches, mask_group_min_aspect_ratio=min_aspect,
                                      mask_group_max_aspect_ratio=max_aspect)
    state = random.getstate()
    random.seed(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big"))
    try:
        return generator().numpy().astype(np.uint8)
    finally:
        random.setstate(state)


def caption_passes(caption: str, filters: dict) -> bool:
    """laion_filter's caption rules (DataComp words/characters, boilerplate) with that run's settings."""
    return not (basic.caption_too_short(caption, filters.get("filters.min_caption_words", 3),
                                        filters.get("filters.min_caption_chars", 6))
                or (filters.get("filters.boilerplate_captions", True) and basic.boilerplate_caption(caption)))


class Codebook:
    """A FlavaImageCodebook from a local folder (``save_pretrained`` layout) and the matching
    FlavaImageProcessor codebook preprocessing; ``ids(images)`` -> (n, grid, grid) int64."""

    def __init__(self, path: str, image_size: int, device: str = "auto"):
        import torch
        from transformers import FlavaImageCodebook, FlavaImageProcessor

        self._torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = FlavaImageCodebook.from_pretrained(path, local_files_only=True).to(self.device).eval()
        size = {"height": image_size, "width": image_size}
        # Only the codebook pixels are used; the main image output is made as small as allowed.
        self.processor = FlavaImageProcessor(return_codebook_pixels=True, codebook_size=size,
                                             codebook_crop_size=size, size=size, crop_size=size)

    def ids(self, images) -> np.ndarray:
        pixels = self.processor(images, return_tensors="pt")["codebook_pixel_values"]
        with self._torch.inference_mode():
            return self.model.get_codebook_indices(pixels.to(self.device)).cpu().numpy().astype(np.int64)


class _FlavaShardFn(beam.DoFn):
    """Images (+ captions) -> one WebDataset tar with masks and, with a codebook, its ids."""

    def __init__(self, settings: dict, out_dir: str):
        self._s, self._out_dir = settings, out_dir

    def setup(self):
        s = self._s
        self._codebook = (Codebook(s["flava.codebook"], s["flava.codebook_image_size"], s["flava.device"])
                          if s["flava.codebook"] else None)

    def _mask(self, key: str) -> np.ndarray:
        s = self._s
        return block_mask(key, s["flava.mask_grid"], s["flava.mask_ratio"], s["flava.mask_min_patches"],
                          s["flava.mask_max_patches"], s["flava.mask_min_aspect"], s["flava.mask_max_aspect"],
                          s["flava.seed"])

    def write(self, name: str, items: list[tuple[str, str, bytes, object, str | None, dict]]) -> tuple[str, int]:
        """items: (key, image ext, image bytes, decoded RGB image, caption or None, json)."""
        codes = []
        if self._codebook is not None:
            n = self._s["flava.batch_size"]
            for start in range(0, len(items), n):
                codes.extend(self._codebook.ids([it[3] for it in items[start:start + n]]))
        members = []
        for i, (key, ext, data, _image, caption, meta) in enumerate(items):
            fields = {ext: data}
            if caption is not None:
                fields["txt"] = caption
            fields["json"] = meta
            fields["mask.npy"] = npy_bytes(self._mask(key))
            if codes:
                fields["codes.npy"] = npy_bytes(codes[i])
            members.append((key, fields))
        fs.makedirs(self._out_dir)
        write_tar(fs.join(self._out_dir, f"{name}.tar"), members)
        progress(self._out_dir, f"{name}.tar", len(members))
        return f"{name}.tar", len(members)


class _WritePairsShard(_FlavaShardFn):
    def process(self, path):
        with timed("export_flava"):
            items = [(s.key, s.image_ext, s.image, d.image, s.caption, s.meta) for s, d in exportable(path)]
            yield self.write(shard_name(path), items)


class _WriteImageOnlyShard(_FlavaShardFn):
    """(shard id, [(raw shard, member index, key, reason)]) -> image_only/NNNNN.tar, images read from the raw shards."""

    def process(self, element):
        shard_id, wanted = element
        with timed("export_flava"):
            by_path: dict[str, dict[int, tuple]] = {}
            for path, index, key, reason in wanted:
                by_path.setdefault(path, {})[index] = (key, reason)
            items = []
            for path, indices in sorted(by_path.items()):
                for index, fields in _members(path, indices):
                    key, reason = indices[index]
                    ext = next((e for e in IMAGE_EXTS if e in fields), None)  # as laion_filter picks it
                    decoded = decode_image(fields.get(ext)) if ext else None
                    if decoded is None or decoded.reason:  # laion_filter decoded it; the raw shard changed since
                        log.warning("flava image_only: %s#%d no longer decodes; skipped", path, index)
                        continue
                    meta = {"key": key, "source_shard": fs.basename(path), "source_index": index,
                            "caption_dropped_for": reason, "width": decoded.width, "height": decoded.height}
                    # named by its real format, as the curated shards name it
                    items.append((key, format_ext(decoded.format, ext), fields[ext], decoded.image, None, meta))
            yield self.write(f"{shard_id:05d}", items)


def _members(path: str, indices) -> list[tuple[int, dict]]:
    """(index, fields) of the wanted members of a raw shard; a shard that is gone or broken since
    laion_filter read it gives what can still be read, with a warning."""
    found = []
    try:
        for index, (_key, fields) in enumerate(iter_tar_samples(path)):
            if index in indices:
                found.append((index, fields))
    except TarReadError as e:
        log.warning("flava unimodal streams: %s; samples past the error are skipped", e)
    return found


def _write_text_only(element, out_dir: str):
    shard_id, rows = element
    members = [(key, {"txt": caption, "json": meta}) for key, caption, meta in rows]
    fs.makedirs(out_dir)
    write_tar(fs.join(out_dir, f"{shard_id:05d}.tar"), members)
    progress(out_dir, f"{shard_id:05d}.tar", len(members))
    yield f"{shard_id:05d}.tar", len(members)


def _curated_index(shards_dir: str) -> tuple[set, set]:
    """sha256s and captions of the curated samples (from the shards' parquet files)."""
    shas, captions = set(), set()
    for path in sorted(fs.glob(fs.join(shards_dir, "*.parquet"))):
        t = read_parquet(path, columns=["sha256", "caption"]).to_pydict()
        shas.update(t["sha256"])
        captions.update(t["caption"])
    return shas, captions


class _PlanUnimodal(beam.DoFn):
    """After the curated shards exist: laion_filter's decisions -> image-only and text-only shard plans.

    Image-only: samples dropped for a caption reason whose image bytes (sha256) are neither curated
    nor already taken. Text-only: samples dropped for an image reason whose caption passes the
    run's caption rules and is neither a curated caption nor already taken (exact text). Both keep
    input order and the first of repeated keys.
    """

    def __init__(self, run_dir: str, per_shard: int):
        self._run_dir, self._n = run_dir, per_shard

    def process(self, _element):
        filters = json.loads(fs.read_bytes(fs.join(self._run_dir, ".curate_run.json"))).get("config", {})
        columns = ["key", "source_shard", "source_index", "kept", "reason", "sha256"]
        rows = sorted((r for path in fs.glob(fs.join(self._run_dir, "decisions", "*.parquet"))
                       for r in read_parquet(path, columns=columns).to_pylist()),
                      key=lambda r: (r["source_shard"], r["source_index"]))
        shas, captions = _curated_index(fs.join(self._run_dir, "shards"))
        images, texts, wanted_text, keys_i, keys_t = [], [], {}, set(), set()
        for r in rows:
            if r["kept"] or r["source_index"] < 0:
                continue
            if r["reason"] in IMAGE_ONLY_REASONS and r["sha256"] not in shas and r["key"] not in keys_i:
                shas.add(r["sha256"])
                keys_i.add(r["key"])
                images.append((r["source_shard"], r["source_index"], r["key"], r["reason"]))
            elif r["reason"] in TEXT_ONLY_REASONS:
                wanted_text.setdefault(r["source_shard"], {})[r["source_index"]] = r
        for path, indices in sorted(wanted_text.items()):
            for index, fields in _members(path, indices):
                r = indices[index]
                if "txt" not in fields:
                    continue
                try:
                    caption = clean_caption(fields["txt"].decode("utf-8"))
                except UnicodeDecodeError:
                    continue
                if caption in captions or r["key"] in keys_t or not caption_passes(caption, filters):
                    continue
                captions.add(caption)
                keys_t.add(r["key"])
                meta = {**sample_json(fields), "key": r["key"], "caption": caption,
                        "source_shard": fs.basename(path), "source_index": index, "image_dropped_for": r["reason"]}
                texts.append((r["key"], caption, meta))
        for start in range(0, len(images), self._n):
            yield "image_only", (start // self._n, images[start:start + self._n])
        for start in range(0, len(texts), self._n):
            yield "text_only", (start // self._n, texts[start:start + self._n])


class FlavaExport(beam.PTransform):
    """Curated shard paths -> OUT_DIR/{pairs, image_only, text_only}/ + masking.json; returns its writes."""

    @staticmethod
    def check(cfg: dict) -> None:
        grid, size = cfg["flava.mask_grid"], cfg["flava.codebook_image_size"]
        if cfg["flava.codebook"]:
            if not fs.isfile(fs.join(cfg["flava.codebook"], "config.json")):
                raise ConfigError(f"config error: flava.codebook {cfg['flava.codebook']!r} is not a folder "
                                  "holding a FlavaImageCodebook (config.json + weights, as save_pretrained writes)")
            if size != CODEBOOK_STRIDE * grid:
                raise ConfigError(f"config error: flava.codebook_image_size must be {CODEBOOK_STRIDE} x flava.mask_grid "
                                  f"= {CODEBOOK_STRIDE * grid} so that codebook ids match the patch grid, got {size}")
        if cfg["flava.mask_min_patches"] > round(cfg["flava.mask_ratio"] * grid * grid) > 0:
            raise ConfigError("config error: flava.mask_min_patches exceeds the patches to mask "
                              "(mask_ratio x mask_grid^2); no block would fit")

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self.check(cfg)
        self._s = {k: v for k, v in cfg.items() if k.startswith("flava.")}
        self._out_dir = out_dir

    def expand(self, shards):
        s, out = self._s, self._out_dir
        settings = {k[len("flava."):]: v for k, v in sorted(s.items()) if k not in ("flava.run_dir",)}
        writes = [shards
                  | "WritePairs" >> beam.ParDo(_WritePairsShard(s, fs.join(out, "pairs")))
                  | "PairsSizes" >> WriteSizesJson(fs.join(out, "pairs")),
                  shards.pipeline | "Settings" >> beam.Create([settings])
                  | "WriteMaskingJson" >> beam.Map(lambda x: write_json(fs.join(out, "masking.json"), x))]
        if s["flava.unimodal"]:
            plans = (shards
                     | "AfterShards" >> beam.Map(lambda p: (0, p))
                     | "GatherShards" >> beam.GroupByKey()
                     | "PlanUnimodal" >> beam.ParDo(_PlanUnimodal(s["flava.run_dir"], s["flava.samples_per_shard"])))
            image_dir, text_dir = fs.join(out, "image_only"), fs.join(out, "text_only")
            writes.append(plans
                          | "ImagePlans" >> beam.FlatMap(lambda kv: [kv[1]] if kv[0] == "image_only" else [])
                          | "WriteImageOnly" >> beam.ParDo(_WriteImageOnlyShard(s, image_dir))
                          | "ImageOnlySizes" >> WriteSizesJson(image_dir))
            writes.append(plans
                          | "TextPlans" >> beam.FlatMap(lambda kv: [kv[1]] if kv[0] == "text_only" else [])
                          | "WriteTextOnly" >> beam.FlatMap(_write_text_only, text_dir)
                          | "TextOnlySizes" >> WriteSizesJson(text_dir))
        return writes | "FlavaWrites" >> beam.Flatten()
