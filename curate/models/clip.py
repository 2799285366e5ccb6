"""CLIP model loading and encoding with open_clip: a model name plus a tag, a local checkpoint or the demo scorer.

Nothing here knows about Beam; the RunInference handler in curate/scoring.py wraps these functions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

DEMO_MODEL = "curate-demo-64"
# curate's own architectures (open_clip model configs): the demo scorer's, and the smaller one
# curate.quality trains many times.
MODEL_CONFIGS = Path(__file__).parent
TINY_MODEL = "curate-tiny-64"
DEMO_CHECKPOINT = str(Path(__file__).with_name("demo_scorer.pt"))
# pretrained values that are not open_clip tags
DEMO, RANDOM = "demo", "random"


class ModelLoadError(RuntimeError):
    """The model name or its weights cannot be resolved; the message says what to do."""


def register_model_configs() -> None:
    """Make curate's architectures (curate/models/*.json) known to open_clip and so to open_clip_train."""
    if not {DEMO_MODEL, TINY_MODEL} <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIGS)


@dataclass(frozen=True)
class ScorerSpec:
    """Which CLIP to run. ``pretrained``: 'demo', an open_clip tag, a local checkpoint path, or 'random'."""
    model: str = DEMO_MODEL
    pretrained: str = DEMO
    device: str = "auto"      # auto | cpu | cuda | cuda:N
    precision: str = "auto"   # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16

    def checkpoint(self) -> str | None:
        if self.pretrained == DEMO:
            return DEMO_CHECKPOINT
        if self.pretrained == RANDOM:
            return None
        return self.pretrained

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def autocast_dtype(self) -> torch.dtype | None:
        """Mixed precision only on GPU: on CPU fp32 is both faster and exact."""
        if not self.resolved_device().startswith("cuda"):
            return None
        return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)


def validate(spec: ScorerSpec) -> None:
    """Fail before any work with one line that says how to fix the model settings."""
    register_model_configs()
    if spec.model not in open_clip.list_models():
        raise ModelLoadError(f"unknown open_clip model {spec.model!r}; choose one of open_clip.list_models() "
                             f"(e.g. ViT-B-32) or {DEMO_MODEL}")
    if spec.pretrained in (DEMO, RANDOM):
        if spec.pretrained == DEMO and spec.model != DEMO_MODEL:
            raise ModelLoadError(f"scorer.pretrained=demo only fits scorer.model={DEMO_MODEL}; for {spec.model} "
                                 "give an open_clip tag (e.g. laion2b_s34b_b79k) or a local checkpoint path")
        return
    if os.path.isfile(spec.pretrained):
        return
    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    if spec.pretrained not in tags:
        raise ModelLoadError(f"scorer.pretrained={spec.pretrained!r} is neither a file nor a known tag of "
                             f"{spec.model} (tags: {', '.join(tags) or 'none'})")


def fetch_weights(spec: ScorerSpec) -> None:
    """Resolve a pretrained tag's weights now (download into the local cache if needed).

    Called by the CLI before any work, so a run without network access stops with one line that
    says how to give a local checkpoint, instead of failing later inside every worker.
    """
    validate(spec)
    if spec.pretrained in (DEMO, RANDOM) or os.path.isfile(spec.pretrained):
        return
    try:
        open_clip.download_pretrained(open_clip.get_pretrained_cfg(spec.model, spec.pretrained))
    except Exception as e:  # hub errors come in many types
        raise ModelLoadError(
            f"cannot fetch weights {spec.pretrained!r} for {spec.model} ({type(e).__name__}); without network "
            "access, download the checkpoint elsewhere and set scorer.pretrained=/path/to/checkpoint") from None


def load_model(spec: ScorerSpec) -> torch.nn.Module:
    validate(spec)
    if spec.pretrained == RANDOM:
        torch.manual_seed(0)  # random weights, but the same ones every run
    try:
        model = open_clip.create_model(spec.model, pretrained=spec.checkpoint(), device=spec.resolved_device())
    except (RuntimeError, OSError) as e:
        raise ModelLoadError(
            f"cannot load weights {spec.pretrained!r} for {spec.model}: {e}. Without network access, download "
            "the checkpoint elsewhere and set scorer.pretrained to its local path") from e
    return model.eval()


def preprocess_cfg(spec: ScorerSpec) -> PreprocessCfg:
    """The eval transform's settings, derived from configs alone (no weights are loaded)."""
    register_model_configs()
    size = open_clip.get_model_config(spec.model)["vision_cfg"]["image_size"]
    merged = merge_preprocess_dict(PreprocessCfg(size=size), {})
    tag_cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained) if spec.pretrained else {}
    if tag_cfg:
        merged = merge_preprocess_dict(merged, tag_cfg)
    return PreprocessCfg(**merged)


def image_transform(spec: ScorerSpec):
    return image_transform_v2(preprocess_cfg(spec), is_train=False)


def uint8_image_transform(spec: ScorerSpec):
    """open_clip's eval transform without its float tail: PIL -> uint8 (3, H, W).

    Its last two steps (to float in [0, 1], normalise) cost as much CPU as the resize and make the
    tensor four times larger; ``encode`` applies them on the model's device with the same
    arithmetic (``to_device_floats``). Falls back to the whole transform (float output) when a
    model's transform does not end that way.
    """
    from torchvision.transforms import Normalize, PILToTensor

    steps = list(image_transform(spec).transforms)
    if len(steps) >= 2 and isinstance(steps[-1], Normalize) and type(steps[-2]).__name__ in (
            "MaybeToTensor", "ToTensor"):
        return type(image_transform(spec))(steps[:-2] + [PILToTensor()])
    return image_transform(spec)


@lru_cache(maxsize=8)
def _normalisation(spec: ScorerSpec, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = preprocess_cfg(spec)
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1)  # noqa: E731
    return as_tensor(cfg.mean), as_tensor(cfg.std)


def to_device_floats(images: torch.Tensor, spec: ScorerSpec, device: str) -> torch.Tensor:
    """uint8 images (from ``uint8_image_transform``) -> normalised float32 on ``device``, as
    torchvision's ToTensor + Normalize compute them; float images pass through unchanged."""
    images = images.to(device, non_blocking=True)
    if images.dtype != torch.uint8:
        return images
    mean, std = _normalisation(spec, device)
    return images.to(torch.float32).div(255).sub_(mean).div_(std)


@lru_cache(maxsize=8)
def tokenizer(model: str):
    register_model_configs()
    return open_clip.get_tokenizer(model)


def encode(model: torch.nn.Module, spec: ScorerSpec, images: torch.Tensor, tokens: torch.Tensor):
    """Return L2-normalised (image, text) embeddings as float32 numpy arrays."""
    device = spec.resolved_device()
    dtype = spec.autocast_dtype()
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        img = model.encode_image(to_device_floats(images, spec, device), normalize=True)
        txt = model.encode_text(tokens.to(device, non_blocking=True), normalize=True)
    return img.float().cpu().numpy(), txt.float().cpu().numpy()


def cosine(img_emb: np.ndarray, txt_emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine of normalised embeddings: the CLIP score of LAION and DataComp."""
    return np.einsum("ij,ij->i", img_emb, txt_emb)


def heldout_accuracy(work: str, samples: int = 2000, seed: int = 7, spec: ScorerSpec = ScorerSpec()) -> float:
    """Share of held-out clean images whose own caption outscores another image's caption."""
    import glob
    import io

    from PIL import Image

    from curate import synth
    from curate.io import iter_tar_samples

    if not os.path.exists(os.path.join(work, "ground_truth.parquet")):
        synth.generate(work, samples, seed=seed, noise=0.0)
    model, transform, tok = load_model(spec), image_transform(spec), tokenizer(spec.model)
    images, captions = [], []
    for path in sorted(glob.glob(os.path.join(work, "*.tar"))):
        for _key, fields in iter_tar_samples(path):
            images.append(transform(Image.open(io.BytesIO(fields["jpg"])).convert("RGB")))
            captions.append(fields["txt"].decode())
    wins = 0
    for start in range(0, len(images), 256):
        imgs = torch.stack(images[start:start + 256])
        caps = captions[start:start + 256]
        # the mismatched caption of image i is the caption of image i+1 (another scene)
        shifted = caps[1:] + caps[:1]
        img_emb, true_emb = encode(model, spec, imgs, tok(caps))
        _, wrong_emb = encode(model, spec, imgs, tok(shifted))
        wins += int((cosine(img_emb, true_emb) > cosine(img_emb, wrong_emb)).sum())
    return wins / len(images)
