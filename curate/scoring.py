"""CLIP scoring: CPU preprocessing, then an open_clip ModelHandler (Beam RunInference's interface), called
per input shard by pipelines/score.py's ScoreShards."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from curate import progress
from curate.models import clip
from curate.records import Sample, stable
from curate.timing import timed

log = logging.getLogger("curate.score")



@dataclass
class ClipBatch:
    """Consecutive passing samples of one input shard, preprocessed and stacked."""
    samples: list[Sample]
    images: torch.Tensor   # (B, 3, H, W) uint8, normalised on the model's device (clip.to_device_floats)
    tokens: torch.Tensor   # (B, context) int


class OpenClipModelHandler(ModelHandler[ClipBatch, PredictionResult, torch.nn.Module]):
    """Loads one open_clip model per worker and encodes ClipBatches.

    pipelines/score.py's ScoreShards builds the batches per input shard and calls ``run_inference``
    with one ClipBatch at a time, so that a shard is scored, checkpointed and emitted by one
    process() call (curate.resume).
    On a CUDA out-of-memory error a batch is split in half and retried, down to single samples,
    so a batch size that is too large costs time, not samples.
    """

    def __init__(self, spec: clip.ScorerSpec, cpu_threads: int = 0):
        super().__init__()
        self._spec = spec
        self._cpu_threads = cpu_threads
        self._scored = 0
        self._started = None

    def load_model(self) -> torch.nn.Module:
        if self._cpu_threads:
            torch.set_num_threads(self._cpu_threads)
        return clip.load_model(self._spec)

    def run_inference(self, batch: Sequence[ClipBatch], model: torch.nn.Module,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        if self._started is None:
            self._started = time.perf_counter()
        results = []
        for clip_batch in batch:
            with timed("clip_encode"):
                img, txt = self._encode_splitting(model, clip_batch.images, clip_batch.tokens)
            results.append(PredictionResult(clip_batch, (img, txt)))
            before, self._scored = self._scored, self._scored + len(clip_batch.samples)
            if not progress.advance("score", len(clip_batch.samples)) and self._scored // 1000 > before // 1000:
                rate = self._scored / max(1e-9, time.perf_counter() - self._started)
                log.info("scored %d samples in this worker (%.0f/s)", self._scored, rate)
        return results

    def _encode_splitting(self, model, images, tokens):
        try:
            return clip.encode(model, self._spec, images, tokens)
        except torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(images) // 2
            log.warning("CUDA out of memory on a batch of %d; retrying as %d + %d", len(images), half,
                        len(images) - half)
            a = self._encode_splitting(model, images[:half], tokens[:half])
            b = self._encode_splitting(model, images[half:], tokens[half:])
            return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])

    def get_num_bytes(self, batch: Sequence[ClipBatch]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(b.images.nbytes + b.tokens.nbytes for b in batch)

    def share_model_across_processes(self) -> bool:
        return False


MAX_CAPTION_CHARS = 2000
MAX_ASPECT_BEFORE_RESIZE = 20


def _bounded_aspect(image):
    """Centre-crop the long side to 20x the short one before open_clip's resize-and-centre-crop.

    Images up to 20:1 get open_clip's own preprocessing untouched (scores match it exactly); beyond,
    where the basic filter drops them anyway, a 1 x 100,000 image no longer becomes a 64 x 6,400,000
    buffer.
    """
    w, h = image.size
    if max(w, h) <= MAX_ASPECT_BEFORE_RESIZE * min(w, h):
        return image
    if w > h:
        keep = MAX_ASPECT_BEFORE_RESIZE * h
        return image.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
    keep = MAX_ASPECT_BEFORE_RESIZE * w
    return image.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))


class ClipPreprocessor:
    """Decoded image + caption -> (uint8 image tensor, token ids): open_clip's eval preprocessing on CPU,
    up to its float conversion and normalisation, which run with the model (clip.to_device_floats)."""

    def __init__(self, spec: clip.ScorerSpec):
        self._transform = clip.uint8_image_transform(spec)
        self._tokenizer = clip.tokenizer(spec.model)

    def __call__(self, image, caption: str):
        with timed("clip_preprocess"):
            tensor = self._transform(_bounded_aspect(image))
            # The model reads 77 tokens at most; a megabyte caption must not stall the BPE.
            tokens = self._tokenizer([caption[:MAX_CAPTION_CHARS]])[0]
        return tensor, tokens


DECODE_MODES = ("cpu", "cpu_fast")  # scorer.decode


def reduced_decode_size(spec: clip.ScorerSpec, decode: str) -> int | None:
    """scorer.decode -> the ``reduce_to`` of filters.image.decode_image: None for ``cpu`` (full decode);
    for ``cpu_fast`` the model's input side (the larger one of a non-square input). open_clip's eval
    transform then resizes the reduced image as it would the full one: libjpeg's 1/2-1/8 DCT scaling
    keeps both sides at or above the input side, so the resize still only shrinks."""
    if decode not in DECODE_MODES:
        raise ValueError(f"scorer.decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if decode == "cpu":
        return None
    size = clip.preprocess_cfg(spec).size
    return max(size) if isinstance(size, (tuple, list)) else int(size)


def stack(items: list) -> ClipBatch:
    """[(Sample, (tensor, tokens))] -> one ClipBatch."""
    return ClipBatch([s for s, _ in items], torch.stack([x[0] for _, x in items]),
                     torch.stack([x[1] for _, x in items]))


def scored_samples(batch: ClipBatch, img: np.ndarray, txt: np.ndarray) -> list[Sample]:
    """A batch's samples with clip_score and image/text embeddings set, from the model's L2-normalised
    embeddings (rows aligned with ``batch.samples``).

    Embeddings are kept as float16 values, as OUT/embeddings stores them, and the score to 4 decimals
    (records.stable): a run on stored scores, or a resumed run that reads a shard's stored part back
    (curate.resume), then decides exactly as this run does.
    """
    scores = clip.cosine(img, txt)
    return [dataclasses.replace(sample, clip_score=stable(scores[i]),
                                image_embedding=img[i].astype(np.float16).astype(np.float32),
                                text_embedding=txt[i].astype(np.float16).astype(np.float32))
            for i, sample in enumerate(batch.samples)]


def cpu_threads_per_worker(options) -> int:
    """Torch threads per local worker process: the cores shared out, so workers do not fight."""
    import os

    from apache_beam.options.pipeline_options import DirectOptions

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing":
        return 0
    workers = direct.direct_num_workers or os.cpu_count() or 1
    return max(1, (os.cpu_count() or 1) // workers)
