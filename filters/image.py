"""Image decoding as a check: bytes in, an RGB image or a specific drop reason out (pure, no Beam)."""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

MISSING_IMAGE = "missing_image"
EMPTY_IMAGE = "empty_image"
UNREADABLE_IMAGE = "unreadable_image"     # not an image format PIL knows, or a corrupt header
TRUNCATED_IMAGE = "truncated_image"       # header fine, pixel data cut short
CORRUPT_IMAGE = "corrupt_image"           # header fine, pixel data fails to decode
DECOMPRESSION_BOMB = "decompression_bomb"  # more pixels than allowed: refused before decoding


def _describe(e: Exception) -> str:
    """The error as text, without object addresses, so decisions are byte-identical across runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(e).__name__}: {e}")


@dataclass
class Decoded:
    image: Image.Image | None  # RGB, EXIF orientation applied; None when decoding failed
    width: int | None
    height: int | None
    format: str | None
    reason: str | None = None
    detail: str | None = None


def decode_image(data: bytes | None, max_pixels: int = 89_478_485) -> Decoded:
    """Decode ``data`` to RGB with EXIF rotation applied; never raises.

    The pixel cap is checked on the header, before any pixel is decoded, so a small file that
    claims a huge canvas (a decompression bomb) costs nothing. PIL's own default cap is the default.
    """
    if data is None:
        return Decoded(None, None, None, None, MISSING_IMAGE)
    if len(data) == 0:
        return Decoded(None, None, None, None, EMPTY_IMAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return Decoded(None, None, None, None, DECOMPRESSION_BOMB, str(e))
    except Exception as e:  # PIL raises many types for unknown or broken headers
        return Decoded(None, None, None, None, UNREADABLE_IMAGE, _describe(e))
    width, height, fmt = img.width, img.height, img.format
    if width * height > max_pixels:
        return Decoded(None, width, height, fmt, DECOMPRESSION_BOMB, f"{width}x{height} > {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = _to_rgb(img)
    except OSError as e:
        reason = TRUNCATED_IMAGE if "truncated" in str(e).lower() else CORRUPT_IMAGE
        return Decoded(None, width, height, fmt, reason, _describe(e))
    except Exception as e:
        return Decoded(None, width, height, fmt, CORRUPT_IMAGE, _describe(e))
    return Decoded(img, img.width, img.height, fmt)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white (as browsers show it) and convert any mode to RGB."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")
