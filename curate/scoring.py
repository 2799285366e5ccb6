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

from curate import gpu_decode, progress
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


class ClipEncoder:
    """One loaded open_clip model: (uint8 images, token ids) -> L2-normalised (image, text) embeddings.

    What a worker process holds (OpenClipModelHandler.load_model), or, with ``scorer.share_model``, the
    one object a model process serves to every worker on the machine (``load_shared_encoder``; Beam's
    MultiProcessShared proxies calls to it, so its arguments and results are numpy arrays, pickled).
    On a CUDA out-of-memory error a batch is split in half and retried, down to single samples, so a
    batch size that is too large costs time, not samples.
    """

    def __init__(self, spec: clip.ScorerSpec, cpu_threads: int = 0):
        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        self._spec = spec
        self._model = clip.load_model(spec)
        self._users = 0

    def encode(self, images, tokens) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of one batch; ``images`` and ``tokens`` as torch tensors or numpy arrays."""
        return self._encode_splitting(torch.as_tensor(images), torch.as_tensor(tokens))

    def _encode_splitting(self, images, tokens):
        try:
            return clip.encode(self._model, self._spec, images, tokens)
        except torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(images) // 2
            log.warning("CUDA out of memory on a batch of %d; retrying as %d + %d", len(images), half,
                        len(images) - half)
            a = self._encode_splitting(images[:half], tokens[:half])
            b = self._encode_splitting(images[half:], tokens[half:])
            return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])

    def attach(self) -> int:
        """A worker starts using this (shared) encoder: the number of users now."""
        self._users += 1
        return self._users

    def detach(self) -> int:
        """A worker is done with it: the users left (at 0 the last one shuts the model process down)."""
        self._users -= 1
        return self._users


def load_shared_encoder(spec: clip.ScorerSpec) -> ClipEncoder:
    """MultiProcessShared's constructor (a module-level function: the model process is spawned and
    unpickles it by reference). The model process gets torch's default threads: it serves every worker."""
    return ClipEncoder(spec)


class OpenClipModelHandler(ModelHandler[ClipBatch, PredictionResult, ClipEncoder]):
    """Loads one open_clip model per worker, or reaches the machine's one shared model, and encodes ClipBatches.

    pipelines/score.py's ScoreShards builds the batches per input shard and calls ``run_inference``
    with one ClipBatch at a time, so that a shard is scored, checkpointed and emitted by one
    process() call (curate.resume). With ``share_model`` the model is a MultiProcessShared proxy of a
    ClipEncoder in one model process (ScoreShards acquires it): the batch travels there as uint8 numpy
    arrays and the embeddings come back.
    """

    def __init__(self, spec: clip.ScorerSpec, cpu_threads: int = 0, share_model: bool = False):
        super().__init__()
        self._spec = spec
        self._cpu_threads = cpu_threads
        self._share_model = share_model
        self._scored = 0
        self._started = None

    def load_model(self) -> ClipEncoder:
        return ClipEncoder(self._spec, self._cpu_threads)

    def run_inference(self, batch: Sequence[ClipBatch], model: ClipEncoder,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        if self._started is None:
            self._started = time.perf_counter()
        results = []
        for clip_batch in batch:
            images, tokens = clip_batch.images, clip_batch.tokens
            if self._share_model:  # pickled to the model process: plain arrays, not torch's shared-memory handles
                images, tokens = images.cpu().numpy(), tokens.cpu().numpy()
            with timed("clip_encode"):
                img, txt = model.encode(images, tokens)
            results.append(PredictionResult(clip_batch, (img, txt)))
            before, self._scored = self._scored, self._scored + len(clip_batch.samples)
            if not progress.advance("score", len(clip_batch.samples)) and self._scored // 1000 > before // 1000:
                rate = self._scored / max(1e-9, time.perf_counter() - self._started)
                log.info("scored %d samples in this worker (%.0f/s)", self._scored, rate)
        return results

    def get_num_bytes(self, batch: Sequence[ClipBatch]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(b.images.nbytes + b.tokens.nbytes for b in batch)

    def share_model_across_processes(self) -> bool:
        return self._share_model


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

    def image(self, image) -> torch.Tensor:
        with timed("clip_preprocess"):
            return self._transform(_bounded_aspect(image))

    def tokens(self, caption: str) -> torch.Tensor:
        with timed("clip_preprocess"):
            # The model reads 77 tokens at most; a megabyte caption must not stall the BPE.
            return self._tokenizer([caption[:MAX_CAPTION_CHARS]])[0]

    def __call__(self, image, caption: str):
        return self.image(image), self.tokens(caption)


DECODE_MODES = ("cpu", "cpu_fast", "gpu")  # scorer.decode
# scorer.decode gpu: the CPU still decodes every image, to validate it and hash it, at this reduced size
# (twice the perceptual hash's 32-px grid; a JPEG at least twice it on both sides decodes at 1/2-1/8 scale).
GPU_VALIDATE_SIDE = 64


def reduced_decode_size(spec: clip.ScorerSpec, decode: str) -> int | None:
    """scorer.decode -> the ``reduce_to`` of filters.image.decode_image: None for ``cpu`` (full decode);
    for ``cpu_fast`` the model's input side (the larger one of a non-square input). open_clip's eval
    transform then resizes the reduced image as it would the full one: libjpeg's 1/2-1/8 DCT scaling
    keeps both sides at or above the input side, so the resize still only shrinks. For ``gpu``,
    ``GPU_VALIDATE_SIDE``: the CPU's decode only validates and hashes; the model's input is decoded on
    the device (``DevicePreprocessor``), or again at full size where the CPU path is kept."""
    if decode not in DECODE_MODES:
        raise ValueError(f"scorer.decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if decode == "cpu":
        return None
    if decode == "gpu":
        return GPU_VALIDATE_SIDE
    size = clip.preprocess_cfg(spec).size
    return max(size) if isinstance(size, (tuple, list)) else int(size)


def device_input_side(spec: clip.ScorerSpec) -> int:
    """The square input side that gpu_decode.eval_transform reproduces; raises ValueError (one line,
    before any work) for a model whose eval transform is another (open_clip's ``shortest`` resize mode
    with bicubic interpolation and a square input is the only one rebuilt on the device)."""
    cfg = clip.preprocess_cfg(spec)
    size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
    if cfg.resize_mode != "shortest" or cfg.interpolation != "bicubic" or size[0] != size[1]:
        raise ValueError(f"scorer.decode=gpu rebuilds open_clip's bicubic shortest-side resize to a square; "
                         f"{spec.model} uses resize_mode={cfg.resize_mode}, interpolation={cfg.interpolation}, "
                         f"size={cfg.size}: use scorer.decode=cpu or cpu_fast")
    return int(size[0])


@dataclass(frozen=True)
class Prepared:
    """One passing sample on its way into a batch: its token ids and either its uint8 image tensor (made
    on CPU by ClipPreprocessor) or, with scorer.decode gpu, its JPEG bytes for the device decoder."""
    sample: Sample
    tokens: torch.Tensor
    image: torch.Tensor | None = None
    jpeg: bytes | None = None


def stack(items: list[Prepared]) -> ClipBatch:
    """CPU-prepared samples -> one ClipBatch."""
    return ClipBatch([p.sample for p in items], torch.stack([p.image for p in items]),
                     torch.stack([p.tokens for p in items]))


class DevicePreprocessor:
    """scorer.decode gpu: a batch of Prepared samples -> one ClipBatch whose images are on the device.

    The JPEGs are decoded in one batched call and resized on ``spec.device`` (curate/gpu_decode.py);
    an image the device decoder refuses is decoded on CPU at full size and prepared as cpu mode does,
    and one that fails there too (the CPU's reduced decode passed it, so hardly ever) is returned
    with its filters.image.Decoded, for a drop row.
    """

    def __init__(self, spec: clip.ScorerSpec, preprocess: ClipPreprocessor, max_pixels: int):
        self._side, self._device = device_input_side(spec), spec.resolved_device()
        self._preprocess, self._max_pixels = preprocess, max_pixels

    def __call__(self, items: list[Prepared]) -> tuple[ClipBatch | None, list[tuple[Sample, Any]]]:
        from curate.filters.image import decode_image

        jpegs = [i for i, p in enumerate(items) if p.jpeg is not None]
        with timed("device_decode"):
            decoded = dict(zip(jpegs, gpu_decode.decode_jpegs([items[i].jpeg for i in jpegs], self._device)))
            on_device = [i for i in jpegs if decoded[i] is not None]
            resized = dict(zip(on_device, gpu_decode.eval_transform([decoded[i] for i in on_device], self._side)
                               if on_device else []))
        kept, images, failed = [], [], []
        for i, p in enumerate(items):
            if i in resized:
                image = resized[i]
            elif p.image is not None:
                image = p.image.to(self._device)
            else:  # refused by the device decoder: the CPU path, as scorer.decode cpu
                with timed("decode"):
                    cpu = decode_image(p.jpeg, self._max_pixels)
                if cpu.reason:
                    failed.append((p.sample, cpu))
                    continue
                image = self._preprocess.image(cpu.image).to(self._device)
            kept.append(p)
            images.append(image)
        if not kept:
            return None, failed
        return ClipBatch([p.sample for p in kept], torch.stack(images), torch.stack([p.tokens for p in kept])), failed


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
