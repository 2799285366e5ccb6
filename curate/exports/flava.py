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
from dataclasses import dataclass

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
    shard_path,
    write_json,
)
from curate.filters import basic
from curate.filters.image import decode_image
from curate.filters.sample import read_caption
from curate.gather import GatherSmall
from curate.io import (
    IMAGE_EXTS,
    TarReadError,
    format_ext,
    iter_tar_samples,
    read_parquet,
    sample_json,
    write_tar,
)
from curate.outputs import MAIN, split
from curate.pipelines.components import ConnectedComponents
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
        """items: (key, image ext, image bytes, a callable that returns the decoded RGB image, caption or
        None, json)."""
        codes = []
        if self._codebook is not None:
            n = self._s["flava.batch_size"]
            for start in range(0, len(items), n):  # pixels decoded a batch at a time, only for the codebook
                codes.extend(self._codebook.ids([it[3]() for it in items[start:start + n]]))
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
    def process(self, shard):
        with timed("export_flava"):
            items = [(s.key, s.image_ext, s.image, image.rgb, s.caption, s.meta) for s, image in exportable(shard)]
            yield self.write(shard_name(shard_path(shard)), items)


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
                    items.append((key, format_ext(decoded.format, ext), fields[ext], (lambda im=decoded.image: im),
                                  None, meta))
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


# --- unimodal planning: per decisions file, per raw shard, per repeated image or caption ----------

IMAGE_ONLY, TEXT_ONLY = "image_only", "text_only"


@dataclass(frozen=True)
class Candidate:
    """A sample laion_filter dropped, offered to a unimodal stream.

    ``order`` is its place in the walk over the run's decisions (source shard, source index, then
    decisions file and row for repeats); ``content`` is what must not repeat in the stream (the
    image's sha256, the caption's text); ``item`` is what the stream's writer reads.
    """
    order: tuple
    stream: str
    key: str
    content: object
    item: tuple


def first_of_repeats(candidates) -> list[Candidate]:
    """The unimodal streams' rule: walk the candidates in ``order`` and take one unless a candidate
    already taken for the same stream has its content (image bytes, exact caption) or its key, so
    each stream holds every image or caption once, under the first of repeated keys. Candidates
    whose content is curated are removed before the walk (``FirstOfRepeats``)."""
    taken, contents, keys = [], set(), set()
    for c in sorted(candidates, key=lambda c: c.order):
        if (c.stream, c.content) in contents or (c.stream, c.key) in keys:
            continue
        contents.add((c.stream, c.content))
        keys.add((c.stream, c.key))
        taken.append(c)
    return taken


def _decision_candidates(path: str):
    """One decisions file -> image-only candidates (MAIN) and, tagged 'text', the rows of samples
    dropped for their image ((raw shard, (order, row))), whose captions are read from the raw shard."""
    columns = ["key", "source_shard", "source_index", "kept", "reason", "sha256"]
    for n, r in enumerate(read_parquet(path, columns=columns).to_pylist()):
        if r["kept"] or r["source_index"] < 0:
            continue
        order = (r["source_shard"], r["source_index"], path, n)
        if r["reason"] in IMAGE_ONLY_REASONS:
            yield MAIN, Candidate(order, IMAGE_ONLY, r["key"], r["sha256"],
                                  (r["source_shard"], r["source_index"], r["key"], r["reason"]))
        elif r["reason"] in TEXT_ONLY_REASONS:
            yield "text", (r["source_shard"], (order, r))


class _TextCandidates(beam.DoFn):
    """(raw shard, [(order, row)]) -> text-only candidates: captions that pass the run's caption rules."""

    def __init__(self, run_dir: str):
        self._run_dir, self._filters = run_dir, None

    def process(self, element):
        path, rows = element
        if self._filters is None:  # read when the run is complete (not when the graph is built)
            self._filters = json.loads(fs.read_bytes(fs.join(self._run_dir, ".curate_run.json"))).get("config", {})
        indices = {}
        for order, r in sorted(rows, key=lambda x: x[0]):
            indices[r["source_index"]] = (order, r)  # the last row of a repeated position, as a walk over all rows finds it
        for index, fields in _members(path, indices):
            order, r = indices[index]
            if "txt" not in fields:
                continue
            try:
                caption = read_caption(fields["txt"])
            except UnicodeDecodeError:
                continue
            if not caption_passes(caption, self._filters):
                continue
            meta = {**sample_json(fields), "key": r["key"], "caption": caption,
                    "source_shard": fs.basename(path), "source_index": index, "image_dropped_for": r["reason"]}
            yield Candidate(order, TEXT_ONLY, r["key"], caption, (r["key"], caption, meta))


def _curated_contents(path: str):
    """One curated shard's parquet -> (stream, content) of each curated sample: its image's sha256
    is not offered as image-only, its caption not as text-only."""
    t = read_parquet(path, columns=["sha256", "caption"]).to_pydict()
    # once per shard: a caption curated many times (boilerplate-like) sends one marker per shard
    for sha in dict.fromkeys(t["sha256"]):
        yield IMAGE_ONLY, sha
    for caption in dict.fromkeys(t["caption"]):
        yield TEXT_ONLY, caption


def _fresh_by_content(element):
    """The candidates of one (stream, content), with None for each curated sample having it -> the
    candidates (MAIN) when nothing curated has it, and (tag 'edges') links from the first of them to
    the others: they compete for one place."""
    _, items = element
    items = list(items)
    if any(c is None for c in items):
        return
    items.sort(key=lambda c: c.order)
    for c in items:
        yield MAIN, c
    for c in items[1:]:
        yield "edges", (items[0].order, c.order)


def _star(element):
    """(stream, key) -> the orders of its candidates: links from the first to the others."""
    _, orders = element
    orders = sorted(orders)
    return [(orders[0], o) for o in orders[1:]]


class _RouteCandidate(beam.DoFn):
    def process(self, element):
        _, items = element
        group = next((v for tag, v in items if tag == "group"), None)
        candidate = next(v for tag, v in items if tag == "candidate")
        if group is None:
            yield MAIN, candidate
        else:
            yield "grouped", (group, candidate)


class FirstOfRepeats(beam.PTransform):
    """Candidates -> those ``first_of_repeats`` takes, without gathering them: candidates whose
    content is curated leave first (joined by content), the rest compete only with those that share
    their content or key, so the walk runs per connected group of such links (by node, then by group)."""

    def __init__(self, curated):
        super().__init__()
        self._curated = curated

    def expand(self, candidates):
        fresh = split((candidates | "ByContent" >> beam.Map(lambda c: ((c.stream, c.content), c)),
                       self._curated | "CuratedContent" >> beam.Map(lambda sc: (sc, None)))
                      | "CandidatesAndCurated" >> beam.Flatten()
                      | "JoinContent" >> beam.GroupByKey()
                      | "NotCurated" >> beam.FlatMap(_fresh_by_content), "NotCurated", "fresh", "edges")
        key_edges = (fresh.fresh
                     | "ByKey" >> beam.Map(lambda c: ((c.stream, c.key), c.order))
                     | "SameKey" >> beam.GroupByKey()
                     | "KeyLinks" >> beam.FlatMap(_star))
        groups = (fresh.edges, key_edges) | "Links" >> beam.Flatten() | "Components" >> ConnectedComponents()
        routed = split((fresh.fresh | "ByOrder" >> beam.Map(lambda c: (c.order, ("candidate", c))),
                        groups | "TagGroups" >> beam.Map(lambda ng: (ng[0], ("group", ng[1]))))
                       | "CandidatesAndGroups" >> beam.Flatten()
                       | "JoinGroups" >> beam.GroupByKey()
                       | "Route" >> beam.ParDo(_RouteCandidate()), "Route", "alone", "grouped")
        walked = (routed.grouped
                  | "GroupCandidates" >> beam.GroupByKey()
                  | "Walk" >> beam.FlatMap(lambda kv: first_of_repeats(kv[1])))
        return (routed.alone, walked) | "Taken" >> beam.Flatten()


def _rank_in_shard(element):
    """(stream, raw shard) and its taken candidates -> the count (tag 'counts') and each candidate
    with its rank within that raw shard (MAIN)."""
    (stream, shard), taken = element
    taken = sorted(taken, key=lambda c: c.order)
    yield "counts", (stream, shard, len(taken))
    for i, c in enumerate(taken):
        yield MAIN, (i, c)


def _offsets(counts: list) -> dict:
    """[(stream, raw shard, taken)] -> (stream, raw shard) -> taken before it in the stream (prefix sums
    in the walk's order: raw shards by path)."""
    offsets, running = {}, {}
    for stream, shard, n in sorted(counts):
        offsets[(stream, shard)] = running.get(stream, 0)
        running[stream] = running.get(stream, 0) + n
    return offsets


def _plan(element):
    """((stream, output shard id), its candidates) -> (stream, (shard id, writer items in order))."""
    (stream, shard_id), taken = element
    return stream, (shard_id, [c.item for c in sorted(taken, key=lambda c: c.order)])


class IntoShards(beam.PTransform):
    """Taken candidates -> (stream, (shard id, items)): ``per_shard`` items per shard in the walk's
    order. Only the count per (stream, raw shard) meets on one worker; each shard's items meet by shard."""

    def __init__(self, per_shard: int):
        super().__init__()
        self._n = per_shard

    def expand(self, taken):
        n = self._n
        ranked = split(taken
                       | "ByRawShard" >> beam.Map(lambda c: ((c.stream, c.order[0]), c))
                       | "PerRawShard" >> beam.GroupByKey()
                       | "RankInShard" >> beam.FlatMap(_rank_in_shard), "RankInShard", "ranked", "counts")
        offsets = ranked.counts | "GatherCounts" >> GatherSmall() | "Offsets" >> beam.Map(_offsets)

        def to_shard(ic, offsets):
            i, c = ic
            return (c.stream, (offsets[(c.stream, c.order[0])] + i) // n), c

        return (ranked.ranked
                | "ToShard" >> beam.Map(to_shard, beam.pvalue.AsSingleton(offsets, default_value={}))
                | "PerShard" >> beam.GroupByKey()
                | "Plan" >> beam.Map(_plan))


class PlanUnimodal(beam.PTransform):
    """After the curated shards exist: laion_filter's decisions -> image-only and text-only shard plans
    ((stream, (shard id, items))).

    Image-only: samples dropped for a caption reason whose image bytes (sha256) are neither curated
    nor already taken. Text-only: samples dropped for an image reason whose caption passes the
    run's caption rules and is neither a curated caption nor already taken (exact text). Both keep
    input order and the first of repeated keys (``first_of_repeats``). Nothing gathers the run:
    decisions are read per file, captions per raw shard, repeats meet by image, caption or key, and
    only one count per raw shard (and the curated shards' paths, as the barrier) meet on one worker.
    """

    def __init__(self, run_dir: str, per_shard: int):
        super().__init__()
        self._run_dir, self._n = run_dir, per_shard

    def expand(self, shards):
        run_dir = self._run_dir
        ready = shards | "AfterShards" >> GatherSmall()  # a barrier: the run's shards and decisions are complete
        read = split(ready
                     | "ListDecisions" >> beam.FlatMap(lambda _: fs.glob(fs.join(run_dir, "decisions", "*.parquet")))
                     | "ReadDecisions" >> beam.FlatMap(_decision_candidates), "ReadDecisions", "images", "text")
        texts = (read.text
                 | "PerRawShard" >> beam.GroupByKey()
                 | "ReadCaptions" >> beam.ParDo(_TextCandidates(run_dir)))
        curated = (ready
                   | "ListCurated" >> beam.FlatMap(lambda _: fs.glob(fs.join(run_dir, "shards", "*.parquet")))
                   | "CuratedContents" >> beam.FlatMap(_curated_contents))
        return ((read.images, texts)
                | "Candidates" >> beam.Flatten()
                | "FirstOfRepeats" >> FirstOfRepeats(curated)
                | "IntoShards" >> IntoShards(self._n))


class FlavaExport(beam.PTransform):
    """Curated shards (paths or CheckedShards) -> OUT_DIR/{pairs, image_only, text_only}/ + masking.json;
    returns its writes."""

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
            plans = (shards | "ShardPaths" >> beam.Map(shard_path)
                     | "PlanUnimodal" >> PlanUnimodal(s["flava.run_dir"], s["flava.samples_per_shard"]))
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
