"""VQ image tokenizers (Chameleon's and Emu3's VQ-VAE) loaded through transformers from a local folder.

``VQTokenizer.from_pretrained(folder)`` accepts either a VQ-VAE saved on its own
(``ChameleonVQVAE`` / ``Emu3VQVAE``: config.json model_type ``chameleon_vqgan`` / ``emu3_vqgan``) or
a whole Chameleon / Emu3 checkpoint (model_type ``chameleon`` / ``emu3``), from which only the
``model.vqmodel.*`` weights are read, so a 7B checkpoint costs the memory of its tokenizer only.
Tests save tiny random-weight models with ``save_pretrained`` and load them back through this
same path.

Images are preprocessed with the checkpoint's own image processor (preprocessor_config.json)
when the folder has one, otherwise with the family's processor at the VQ-VAE's resolution.
Encoding is batched and runs on CUDA when present (fp32 by default, bf16 on request). Imports
stay at torch + transformers + numpy (PIL only where images are processed), so
benchmarks/vq_tokenize.py runs on a bare GPU machine.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

FAMILIES = ("chameleon", "emu3")
# config.json model_type -> (family, is a whole multimodal checkpoint)
_MODEL_TYPES = {"chameleon_vqgan": ("chameleon", False), "chameleon": ("chameleon", True),
                "emu3_vqgan": ("emu3", False), "emu3": ("emu3", True)}
_VQ_PREFIX = "model.vqmodel."   # where both families keep the tokenizer inside a whole checkpoint


class VQLoadError(ValueError):
    """The folder holds no usable VQ tokenizer; the message says what was found."""


def _vq_classes(family: str):
    import transformers
    if family == "chameleon":
        return transformers.ChameleonVQVAE, transformers.ChameleonVQVAEConfig
    return transformers.Emu3VQVAE, transformers.Emu3VQVAEConfig


def codebook_size(config) -> int:
    return int(getattr(config, "num_embeddings", None) or config.codebook_size)


def spatial_factor(config) -> int:
    """Pixels per token side: both encoders halve the resolution once per channel-multiplier step but the first."""
    return 2 ** (len(config.channel_multiplier) - 1)


def _model_type(folder: str) -> tuple[str, bool]:
    """(family, whole checkpoint?) from the folder's config.json; VQLoadError when it is no VQ tokenizer."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise VQLoadError(f"VQ tokenizer folder {folder!r} has no config.json (a local checkpoint folder is needed)")
    with open(cfg_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type not in _MODEL_TYPES:
        raise VQLoadError(f"{folder}: model_type {model_type!r} is not a VQ tokenizer; "
                          f"expected one of {', '.join(sorted(_MODEL_TYPES))}")
    return _MODEL_TYPES[model_type]


def _vq_config(folder: str, family: str, whole: bool):
    import transformers
    if whole:
        return transformers.AutoConfig.from_pretrained(folder, local_files_only=True).vq_config
    return _vq_classes(family)[1].from_pretrained(folder, local_files_only=True)


def read_codebook_size(folder: str) -> int:
    """The number of image codes of the VQ tokenizer in ``folder``, read from its config only."""
    family, whole = _model_type(folder)
    return codebook_size(_vq_config(folder, family, whole))


def _read_whole_checkpoint_vq(folder: str, family: str, vq_config) -> torch.nn.Module:
    """The VQ-VAE inside a whole Chameleon/Emu3 checkpoint, reading only its tensors."""
    from safetensors import safe_open
    cls, _ = _vq_classes(family)
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise VQLoadError(f"{folder}: a {family} checkpoint without *.safetensors weights")
    state = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 -- safe_open is not a dict; keys() is its listing
                if name.startswith(_VQ_PREFIX):
                    state[name[len(_VQ_PREFIX):]] = f.get_tensor(name)
    if not state:
        raise VQLoadError(f"{folder}: no {_VQ_PREFIX}* weights in its safetensors files")
    model = cls._from_config(vq_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VQLoadError(f"{folder}: VQ weights do not match the config (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return model


def _default_processor(family: str, resolution: int):
    """The family's own image processor, sized for this VQ-VAE (used when the folder has none)."""
    import transformers
    if family == "chameleon":
        # Chameleon's defaults (shortest edge 512, centre crop 512, scale to [-1, 1]) at this resolution.
        return transformers.ChameleonImageProcessor(
            size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution})
    # Emu3 resizes to a multiple of the spatial factor within a pixel budget; fix the budget to one
    # square of `resolution` so a batch shares one token grid.
    return transformers.Emu3ImageProcessor(min_pixels=resolution * resolution, max_pixels=resolution * resolution)


@dataclass
class VQTokenizer:
    """A loaded VQ image tokenizer: images -> int32 code grids (batch, h, w)."""
    model: torch.nn.Module
    family: str
    folder: str
    resolution: int | None
    device: torch.device
    dtype: torch.dtype
    codebook_size: int
    spatial_factor: int
    _processor: object | None = None

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", precision: str = "auto",
                        resolution: int | None = None) -> VQTokenizer:
        """Load from a local folder (never a hub name: curate runs offline).

        device: auto (CUDA when available) | cpu | cuda[:N]. precision: auto (= fp32) | fp32 |
        bf16 | fp16; fp32 on CUDA still runs the convolutions on TF32 tensor cores (cuDNN's default),
        and the codebook search in half precision can turn near ties into other codes, hence the
        default. resolution: the processor's square size when the folder has
        no preprocessor_config.json (default: the VQ config's ``resolution``, else 512).
        """
        family, whole = _model_type(folder)
        if whole:
            model = _read_whole_checkpoint_vq(folder, family, _vq_config(folder, family, whole))
        else:
            model = _vq_classes(family)[0].from_pretrained(folder, local_files_only=True)
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
        if precision == "auto":
            precision = "fp32"
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        model = model.to(dev, dtype=dtype).eval()
        return cls(model, family, folder, resolution, dev, dtype, codebook_size(model.config),
                   spatial_factor(model.config))

    @property
    def processor(self):
        """The folder's image processor (preprocessor_config.json), else the family's at the VQ
        resolution. Loaded on first use: encoding ready-made pixels needs no PIL."""
        if self._processor is None:
            import transformers
            if os.path.isfile(os.path.join(self.folder, "preprocessor_config.json")):
                self._processor = transformers.AutoImageProcessor.from_pretrained(self.folder, local_files_only=True)
            else:
                self._processor = _default_processor(
                    self.family, self.resolution or getattr(self.model.config, "resolution", None) or 512)
        return self._processor

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor, image_sizes=None) -> list[np.ndarray]:
        """Preprocessed pixels (batch, 3, H, W) -> one int32 (h, w) code grid per image."""
        pixels = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.family == "chameleon":
            codes = self.model.encode(pixels, return_dict=True).image_tokens
            b, h, w = pixels.shape[0], pixels.shape[2] // self.spatial_factor, pixels.shape[3] // self.spatial_factor
            grids = codes.view(b, h, w)
        else:
            if image_sizes is None:
                image_sizes = torch.tensor([list(pixels.shape[2:])] * pixels.shape[0])
            grids = self.model.encode(pixels, image_sizes, return_dict=True).image_tokens
        return [g.to("cpu", torch.int32).numpy() for g in grids]

    def preprocess(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """One PIL image -> (pixel_values (3, H, W), (H, W)) with the checkpoint's processor.

        Images are processed one by one, never padded together: Emu3's processor pads a batch to
        its largest image, which would make an image's codes depend on its batch neighbours.
        """
        out = self.processor(images=[image], return_tensors="pt")
        pixels = out["pixel_values"][0]
        if "image_sizes" in out:   # Emu3: crop back to the image's own size
            h, w = (int(v) for v in out["image_sizes"][0])
            pixels = pixels[:, :h, :w]
        return pixels, tuple(pixels.shape[1:])

    def encode_images(self, images: list, batch_size: int = 32) -> list[np.ndarray]:
        """PIL images -> code grids in input order; up to ``batch_size`` consecutive images of one
        processed size per model call (Chameleon's processor gives every image one size)."""
        grids: list[np.ndarray] = []
        batch: list[torch.Tensor] = []

        def flush():
            if batch:
                grids.extend(self.encode_pixels(torch.stack(batch)))
                batch.clear()

        for image in images:
            pixels, _ = self.preprocess(image)
            if batch and (len(batch) >= batch_size or batch[0].shape != pixels.shape):
                flush()
            batch.append(pixels)
        flush()
        return grids


def tiny_config(family: str, resolution: int = 64, codebook: int = 256):
    """A small random-weight VQ-VAE config for tests and CPU benchmarks (8x8 tokens at 64 px)."""
    _, config_cls = _vq_classes(family)
    if family == "chameleon":
        return config_cls(embed_dim=32, num_embeddings=codebook, latent_channels=32, resolution=resolution,
                          base_channels=32, channel_multiplier=[1, 1, 1, 1], num_res_blocks=1)
    return config_cls(codebook_size=codebook, embed_dim=4, latent_channels=4, base_channels=32,
                      channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                      temporal_downsample_factor=4, hidden_size=32, num_attention_heads=1)


def save_random(folder: str, config, seed: int = 0, resolution: int | None = 64) -> str:
    """Save a random-weight VQ-VAE for ``config`` (Chameleon's or Emu3's) with save_pretrained and,
    unless ``resolution`` is None, the family's image processor at that size, laid out like a
    real checkpoint folder."""
    family = "chameleon" if config.model_type.startswith("chameleon") else "emu3"
    cls, _ = _vq_classes(family)
    torch.manual_seed(seed)
    cls._from_config(config).save_pretrained(folder)
    if resolution is not None:
        _default_processor(family, resolution).save_pretrained(folder)
    return folder
