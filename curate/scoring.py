"""CLIP scoring in Beam: CPU preprocessing, then RunInference with an open_clip ModelHandler."""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from curate.models import clip

log = logging.getLogger("curate.score")

ClipInput = tuple[torch.Tensor, torch.Tensor]  # (image CHW float, token ids)


class OpenClipModelHandler(ModelHandler[ClipInput, PredictionResult, torch.nn.Module]):
    """Loads one open_clip model per worker and encodes batches of (image, tokens).

    On a CUDA out-of-memory error the batch is split in half and retried, down to single
    samples, so a batch size that is too large costs time, not samples.
    """

    def __init__(self, spec: clip.ScorerSpec, batch_size: int = 64):
        super().__init__()
        self._spec = spec
        self._batch_size = batch_size
        self._scored = 0
        self._started = None

    def load_model(self) -> torch.nn.Module:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        return clip.load_model(self._spec)

    def run_inference(self, batch: Sequence[ClipInput], model: torch.nn.Module,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        images = torch.stack([b[0] for b in batch])
        tokens = torch.stack([b[1] for b in batch])
        if self._started is None:
            self._started = time.perf_counter()
        img, txt = self._encode_splitting(model, images, tokens)
        before, self._scored = self._scored, self._scored + len(batch)
        if self._scored // 1000 > before // 1000:
            rate = self._scored / max(1e-9, time.perf_counter() - self._started)
            log.info("scored %d samples in this worker (%.0f/s)", self._scored, rate)
        return [PredictionResult(example, (img[i], txt[i])) for i, example in enumerate(batch)]

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

    def get_num_bytes(self, batch: Sequence[ClipInput]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(b[0].nbytes + b[1].nbytes for b in batch)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def share_model_across_processes(self) -> bool:
        return False


class PrepareClipInputs(beam.DoFn):
    """Decoded image + caption -> (Sample, (image tensor, tokens)), on CPU before batching."""

    def __init__(self, spec: clip.ScorerSpec):
        self._spec = spec

    def setup(self):
        self._transform = clip.image_transform(self._spec)
        self._tokenizer = clip.tokenizer(self._spec.model)

    def process(self, element):
        sample, image = element
        t0 = time.perf_counter()
        tensor = self._transform(image)
        tokens = self._tokenizer([sample.caption])[0]
        beam.metrics.Metrics.counter("curate.time_ms", "clip_preprocess").inc(
            int((time.perf_counter() - t0) * 1000))
        yield sample, (tensor, tokens)


class _AttachScore(beam.DoFn):
    def process(self, element):
        sample, result = element
        img, txt = result.inference
        sample.clip_score = float(np.dot(img, txt))
        sample.image_embedding = img.astype(np.float32)
        yield sample


class ScoreWithClip(beam.PTransform):
    """(Sample, RGB image) -> Sample with clip_score and image_embedding set."""

    def __init__(self, spec: clip.ScorerSpec, batch_size: int):
        super().__init__()
        self._spec = spec
        self._batch_size = batch_size

    def expand(self, decoded):
        return (
            decoded
            | "Preprocess" >> beam.ParDo(PrepareClipInputs(self._spec))
            | "Encode" >> RunInference(KeyedModelHandler(OpenClipModelHandler(self._spec, self._batch_size)))
            | "AttachScore" >> beam.ParDo(_AttachScore())
        )
