"""Generative (Chameleon-style) export: text and VQ image tokens, packed into fixed-length sequences.

Per curated sample, the image becomes discrete codes through a VQ image tokenizer (Chameleon's or
Emu3's VQ-VAE from a local folder, curate.models.vq) and the caption becomes ids through a
transformers tokenizer from a local folder; the two are joined caption-first (generation) or
image-first (captioning), a seeded per-key choice with ``chameleon.image_first_ratio`` (see
curate.exports.packing for the token layout and the packing rule). Written to OUT_DIR:

    NNNNN.tar            WebDataset, one sample per packed sequence (key NNNNN_SSSSSS):
                         tokens.npy [seq_len], cu_seqlens.npy (document starts + end), json
                         (each document's key, start, length, order; padding)
    sizes.json           {"NNNNN.tar": sequences}
    chameleon.bin/.idx   the same sequences as a Megatron indexed dataset (megatron-core's
                         IndexedDatasetBuilder): one Megatron document per packed sequence,
                         one item per document inside it (+ a padding item)
    layout.json          token ids of the layout (image offset, <boi>, <eoi>, eod, pad, vocab
                         size), Chameleon's vocabulary_map for the image ids, the settings,
                         counts, and the samples skipped (an image the VQ tokenizer rejected)

Sequences of one curated shard are packed together, so the files do not depend on the number
of workers; the Megatron files are the per-shard parts joined in shard order. Each shard's tar and
Megatron part are written atomically, then a marker (.parts/NNNNN.json: the curated shard's path
and size, the settings, the counts and skipped samples); a resumed run reuses every shard whose
marker matches, with no VQ call, and the markers go with the parts once joined.
"""
from __future__ import annotations

import itertools
import json
import logging

import apache_beam as beam

from curate import fs
from curate.config import ConfigError
from curate.exports import packing
from curate.exports.formats import CHAMELEON_SCHEMA
from curate.exports.writing import (
    WriteSizesJson,
    exportable,
    progress,
    shard_name,
    shard_path,
    write_json,
)
from curate.io import write_tar
from curate.resume import read_marker, write_marker
from curate.timing import timed

log = logging.getLogger("curate")

PARTS = ".parts"        # per-shard Megatron files and completion markers, joined and removed at the end
MEGATRON_PREFIX = "chameleon"

SCHEMA = CHAMELEON_SCHEMA  # curate/exports/formats.py


def _settings(cfg: dict) -> dict:
    return {k[len("chameleon."):]: cfg[k] for k in SCHEMA}


def load_text_tokenizer(folder: str):
    """A transformers tokenizer from a local folder (never the hub: curate runs offline)."""
    from transformers import AutoTokenizer
    if not fs.isdir(folder):
        raise ConfigError(f"config error: chameleon.tokenizer {folder!r} is not a folder")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def token_layout(tokenizer, vq_folder: str) -> packing.TokenLayout:
    """Image ids go after the tokenizer's; its own bos/eos/pad are used when it has them."""
    from curate.models.vq import read_codebook_size
    return packing.TokenLayout(text_vocab=len(tokenizer), codebook=read_codebook_size(vq_folder),
                               bos=tokenizer.bos_token_id, tokenizer_eod=tokenizer.eos_token_id,
                               tokenizer_pad=tokenizer.pad_token_id)


class _TokenizeAndPackShard(beam.DoFn):
    """Curated shard -> its packed sequences as NNNNN.tar + a Megatron part; yields
    (tar name, sequences, documents, skipped samples)."""

    def __init__(self, s: dict, layout: packing.TokenLayout, out_dir: str):
        self._s, self._layout, self._out_dir = s, layout, out_dir

    def setup(self):
        # One model and tokenizer per worker process, loaded once (the model when a shard needs it).
        self._text = load_text_tokenizer(self._s["tokenizer"])
        self._vq = None

    def _encode(self, images: list, keys: list[str], skipped: list[dict]) -> list:
        """Code grids for a batch; when the batch fails, image by image, so one image the
        processor or encoder rejects is skipped (and recorded) instead of ending the run."""
        if self._vq is None:
            from curate.models.vq import VQTokenizer
            self._vq = VQTokenizer.from_pretrained(self._s["vq_model"], self._s["device"], self._s["precision"],
                                                   self._s["resolution"])
        try:
            return self._vq.encode_images(images, self._s["batch_size"])
        except (ValueError, RuntimeError):
            grids = []
            for image, key in zip(images, keys, strict=True):
                try:
                    grids.append(self._vq.encode_images([image])[0])
                except (ValueError, RuntimeError) as e:
                    log.warning("chameleon export: %s: VQ encoding failed: %s", key, e)
                    detail = f"{type(e).__name__}: {e}"[:300]
                    skipped.append({"key": key, "reason": "vq_encode_failed", "detail": detail})
                    grids.append(None)
            return grids

    def _documents(self, shard, skipped: list[dict]):
        """(key, token ids, image first, code grid shape) per exportable sample, in shard order.
        Images are decoded and held ``batch_size`` at a time, never a whole shard's."""
        samples = exportable(shard)
        while batch := [(s, image.rgb()) for s, image in itertools.islice(samples, self._s["batch_size"])]:
            with timed("export_chameleon_vq"):
                grids = self._encode([im for _, im in batch], [s.key for s, _ in batch], skipped)
            with timed("export_chameleon_text"):
                text_ids = self._text([s.caption for s, _ in batch], add_special_tokens=False)["input_ids"]
            for (sample, _), ids, grid in zip(batch, text_ids, grids, strict=True):
                if grid is None:
                    continue
                first = packing.image_first(sample.key, self._s["image_first_ratio"], self._s["seed"])
                yield sample.key, packing.build_document(ids, grid, self._layout, first), first, grid.shape

    def _marker(self, name: str) -> str:
        return fs.join(self._out_dir, PARTS, f"{name}.json")

    def _finished(self, path: str, name: str) -> tuple | None:
        """What an interrupted run of the same settings recorded for this shard, once its tar and
        Megatron part were written (the marker comes last), or None: tokenize it."""
        done = read_marker(self._marker(name), path, self._s)
        if done is None:
            return None
        return f"{name}.tar", done["sequences"], done["documents"], done["skipped"]

    def process(self, shard):
        path = shard_path(shard)
        name = shard_name(path)
        finished = self._finished(path, name)
        if finished is not None:
            log.info("chameleon export: %s was tokenized before the interruption; reused", finished[0])
            yield finished
            return
        docs, grids, skipped = [], {}, []
        for key, ids, first, grid in self._documents(shard, skipped):
            docs.append((key, ids, first))
            grids[key] = grid
        with timed("export_chameleon_pack"):
            sequences = list(packing.pack(docs, self._s["seq_len"], self._layout.pad))
            for seq in sequences:
                for seg in seq.segments:
                    seg.grid = grids[seg.key]
        with timed("export_chameleon_write"):
            dtype = packing.token_dtype(self._layout.vocab_size)
            fs.makedirs(fs.join(self._out_dir, PARTS))
            write_tar(fs.join(self._out_dir, f"{name}.tar"),
                      [(f"{name}_{i:06d}", packing.sample_members(seq, dtype)) for i, seq in enumerate(sequences)])
            packing.write_indexed(fs.join(self._out_dir, PARTS, name), sequences, dtype)
        skipped = [{**row, "shard": f"{name}.tar"} for row in skipped]
        # Last: a resumed run takes a shard with a marker as done (see _finished).
        write_marker(self._marker(name), path, self._s, sequences=len(sequences), documents=len(docs), skipped=skipped)
        progress(self._out_dir, f"{name}.tar", len(docs))
        yield f"{name}.tar", len(sequences), len(docs), skipped


class _JoinMegatronParts(beam.DoFn):
    """All per-shard parts, in shard order -> chameleon.bin/.idx + layout.json; parts removed."""

    def __init__(self, out_dir: str, layout: packing.TokenLayout, info: dict):
        self._out_dir, self._layout, self._info = out_dir, layout, info

    def process(self, element):
        _, shards = element
        shards = sorted(x for x in shards if x is not None)
        names = [name[: -len(".tar")] for name, _, _, _ in shards]
        parts_dir = fs.join(self._out_dir, PARTS)
        prefix = fs.join(self._out_dir, MEGATRON_PREFIX)
        dtype = packing.token_dtype(self._layout.vocab_size)
        fs.makedirs(self._out_dir)
        packing.merge_indexed(prefix, [fs.join(parts_dir, n) for n in names], dtype)
        for n in names:
            for ext in (".json", ".bin", ".idx"):  # the marker first: a marker always has its part
                fs.remove(fs.join(parts_dir, n + ext))
        if fs.isdir(parts_dir) and not fs.glob(fs.join(parts_dir, "*")):
            fs.remove(parts_dir)
        layout = {**self._layout.to_json(), "dtype": str(dtype.__name__), "settings": self._info,
                  "vocabulary_map": self._layout.vocabulary_map(),
                  "sequences": sum(n for _, n, _, _ in shards), "documents": sum(d for _, _, d, _ in shards),
                  "skipped": [row for _, _, _, rows in shards for row in rows]}
        yield write_json(fs.join(self._out_dir, "layout.json"), layout)
        yield prefix + ".idx"


class ChameleonExport(beam.PTransform):
    """Curated shards (paths or CheckedShards) -> packed token sequences (WebDataset + Megatron .bin/.idx); returns its writes."""

    @staticmethod
    def check(cfg: dict) -> None:
        """Before any work: both local folders exist and load as what they should be."""
        from curate.models.vq import VQLoadError, read_codebook_size
        s = _settings(cfg)
        for key in ("vq_model", "tokenizer"):
            if not s[key]:
                raise ConfigError(f"config error: chameleon.{key} must name a local folder "
                                  "(the chameleon format needs it)")
        try:
            read_codebook_size(s["vq_model"])
        except VQLoadError as e:
            raise ConfigError(f"config error: chameleon.vq_model: {e}") from None
        load_text_tokenizer(s["tokenizer"])

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self._s, self._out_dir = _settings(cfg), out_dir
        self.check(cfg)
        self._layout = token_layout(load_text_tokenizer(self._s["tokenizer"]), self._s["vq_model"])

    def expand(self, shards):
        info = {k: v for k, v in self._s.items() if k not in ("device", "batch_size")}
        counts = shards | "TokenizeAndPack" >> beam.ParDo(_TokenizeAndPackShard(self._s, self._layout, self._out_dir))
        sizes = (counts | "TarSizes" >> beam.Map(lambda c: (c[0], c[1]))
                 | "SizesJson" >> WriteSizesJson(self._out_dir))
        empty = shards.pipeline | "NoShard" >> beam.Create([None])
        megatron = ((counts, empty)
                    | "WithSentinel" >> beam.Flatten()
                    | "All" >> beam.Map(lambda n: (0, n))
                    | "Gather" >> beam.GroupByKey()
                    | "JoinMegatron" >> beam.ParDo(_JoinMegatronParts(self._out_dir, self._layout, info)))
        return (sizes, megatron) | "Writes" >> beam.Flatten()


def read_layout(out_dir: str) -> dict:
    """layout.json of a chameleon export folder."""
    return json.loads(fs.read_bytes(fs.join(out_dir, "layout.json")))
