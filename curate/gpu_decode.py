"""JPEG decoding and open_clip's eval resize on the scorer's device (``scorer.decode: gpu``).

A batch's JPEG bytes are decoded together by ``torchvision.io.decode_jpeg`` on ``scorer.device``: on
CUDA that is nvJPEG, on CPU torchvision's libjpeg-turbo (the same pixels as PIL's decode, which makes
the path testable without a GPU). The decoded images are then resized and centre-cropped as open_clip's
eval transform does on CPU (torchvision's ``Resize`` of the shorter side with PIL's bicubic filter, then
``CenterCrop``), and come back as uint8, so ``clip.to_device_floats`` normalises them exactly as it does
the CPU path's tensors. Pure functions of their inputs; nothing here knows about Beam or samples.
"""
from __future__ import annotations

import io
import warnings
from collections import defaultdict

import torch
from PIL import ExifTags, Image

ORIENTATION = ExifTags.Base.Orientation
DEVICE_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with more frames; both decoders read its first one


def device_decodable(data: bytes, max_aspect: float) -> bool:
    """Whether a JPEG goes to the device decoder: 8-bit, three YCbCr components (PIL mode RGB), no EXIF
    turn or mirror, and sides within ``max_aspect``:1 (beyond, scoring._bounded_aspect crops first on CPU).

    Everything else (other formats, greyscale and CMYK JPEGs, rotated ones) keeps the CPU path: PIL's
    conversions (CMYK inversion, EXIF transpose) are what cpu mode scores, and reading only the header
    here costs microseconds.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            orientation = img.getexif().get(ORIENTATION, 1)
    except Exception:  # an unreadable header: the CPU path gives its drop reason
        return False
    w, h = img.size
    return (img.format in DEVICE_FORMATS and img.mode == "RGB" and orientation in (0, 1)
            and min(w, h) > 0 and max(w, h) <= max_aspect * min(w, h))


def resized_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) after torchvision's ``Resize(side)`` (open_clip's eval resize): the shorter side
    becomes ``side``, the longer ``int(side * long / short)`` (truncated, as torchvision computes it)."""
    if width <= height:
        return int(side * height / width), side
    return side, int(side * width / height)


def centre_crop_origin(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop(crop)``: ``int(round((side - crop) / 2))`` on each axis."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def _bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float (N, C, H, W) -> (N, C, *size): PIL's antialiased bicubic (a = -0.5; torch's ``antialias=True``
    path is ported from PIL's), rounded and clamped to uint8 values."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.nn.functional.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255)


def resize_like_pil(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, height, width) as PIL's ``Image.resize(..., BICUBIC)``: a
    horizontal pass, rounded to uint8, then a vertical one (PIL's ImagingResample keeps the
    intermediate image in 8 bits; one 2-D float pass differed from it by up to 6 levels on photos, the
    two passes by at most 1: tests/test_gpu_decode.py)."""
    x = _bicubic(images.float(), (images.shape[-2], width))
    return _bicubic(x, (height, width)).to(torch.uint8)


def eval_transform(images: list[torch.Tensor], side: int) -> torch.Tensor:
    """Decoded uint8 (3, H, W) images, all on one device -> uint8 (N, 3, side, side) on it: open_clip's
    eval transform (shorter side to ``side``, bicubic, centre crop) without its float tail. Images of
    the same size are resized in one call."""
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape[-2:])].append(i)
    for (h, w), members in groups.items():
        nh, nw = resized_size(h, w, side)
        top, left = centre_crop_origin(nh, nw, side)
        resized = resize_like_pil(torch.stack([images[i] for i in members]), nh, nw)
        for j, i in enumerate(members):
            out[i] = resized[j, :, top:top + side, left:left + side]
    return torch.stack(out)


def decode_jpegs(jpegs: list[bytes], device: str) -> list[torch.Tensor | None]:
    """JPEG bytes -> uint8 RGB (3, H, W) tensors on ``device``, decoded in one batched call (nvJPEG on
    CUDA); when the batch fails, each image alone; None for an image the device decoder refuses (the
    caller decodes it on CPU). Never raises for bad bytes."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in jpegs]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image IO in favour of torchcodec; the calls still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass  # one bad image fails the whole batched call
        out = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out
