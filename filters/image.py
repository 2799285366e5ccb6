"""Image decoding as a check: bytes in, an RGB image or a specific drop reason out (pure, no Beam)."""
from __future__ import annotations

import io
import re
import threading
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, features

try:  # HEIC/HEIF decode only where the optional pillow-heif plugin is installed (not a dependency)
    import pillow_heif
    pillow_heif.register_heif_opener()
except ImportError:
    pillow_heif = None

MISSING_IMAGE = "missing_image"
EMPTY_IMAGE = "empty_image"
UNREADABLE_IMAGE = "unreadable_image"     # not an image format PIL knows, or a corrupt header
TRUNCATED_IMAGE = "truncated_image"       # header fine, pixel data cut short
CORRUPT_IMAGE = "corrupt_image"           # header fine, pixel data fails to decode
DECOMPRESSION_BOMB = "decompression_bomb"  # more pixels than allowed: refused before decoding
UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"  # a known image format Pillow cannot decode here
ORIENTATION = ExifTags.Base.Orientation


def _describe(e: Exception) -> str:
    """The error as text, without object addresses, so decisions are byte-identical across runs."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(e).__name__}: {e}")


@dataclass
class Decoded:
    image: Image.Image | None  # RGB, EXIF orientation applied; None when decoding failed
    width: int | None
    height: int | None
    format: str | None  # Pillow's format name (JPEG, PNG, WEBP, AVIF, ...), or the sniffed one when unsupported
    reason: str | None = None
    detail: str | None = None


# ISO-BMFF ``ftyp`` brands (major or compatible) of the still-image formats that live in that container.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes, for formats Pillow may not decode: ``SVG`` (XML
    whose first element is ``<svg``), ``AVIF`` / ``HEIF`` (ISO-BMFF ``ftyp`` brands), ``JXL``; else None."""
    if data[4:8] == b"ftyp":
        size = int.from_bytes(data[:4], "big")
        box = data[8:max(16, min(size, 256))]
        brands = {box[0:4]} | {box[i:i + 4] for i in range(8, len(box) - 3, 4)}  # major, then compatible
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS or box[0:4] in (b"mif1", b"msf1"):
            return "HEIF"
        return None
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JXL"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in head):
        return "SVG"
    return None


def _decodable(fmt: str) -> bool:
    """Whether this Pillow (with its plugins) decodes ``fmt``: a failure is then the file's, not the format's."""
    if fmt == "AVIF":
        return bool(features.check("avif"))
    return fmt == "HEIF" and pillow_heif is not None


_WHY_NOT = {"HEIF": "no HEIF plugin (pillow-heif) is installed", "AVIF": "this Pillow has no AVIF support",
            "SVG": "a vector image, which Pillow does not render", "JXL": "Pillow has no JPEG XL decoder"}


# PIL's own default Image.MAX_IMAGE_PIXELS: curate's default cap too.
PIL_DEFAULT_MAX_PIXELS = 89_478_485
_PIL_LIMIT_LOCK = threading.Lock()


def allow_pil(max_pixels: int) -> None:
    """Raise PIL's decompression-bomb limit to ``max_pixels`` when it is lower, so that the configured
    cap is the one that applies. PIL's check reads the module global ``Image.MAX_IMAGE_PIXELS`` (an
    error above twice it, about 179M pixels by default, also while seeking GIF frames and loading TIFF
    tiles); callers apply their own cap from the header. A process-wide setting, only ever raised,
    never lowered (PIL's default stays for every smaller cap): no caller can undo another's."""
    if Image.MAX_IMAGE_PIXELS is None or max_pixels <= Image.MAX_IMAGE_PIXELS:
        return
    with _PIL_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels


def reduced_scale(width: int, height: int, target: int) -> int:
    """The JPEG DCT-domain scale denominator (1, 2, 4 or 8) that PIL's ``draft`` picks for a
    ``target`` x ``target`` request: the largest that keeps both sides >= ``target``, so an image is
    reduced only when it is at least twice the target on both sides (libjpeg's scaled IDCT)."""
    fits = min(width // target, height // target)
    return next((s for s in (8, 4, 2) if fits >= s), 1)


# EXIF orientations that turn the picture by 90 degrees (ImageOps.exif_transpose swaps its sides).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def decode_image(data: bytes | None, max_pixels: int = PIL_DEFAULT_MAX_PIXELS, reduce_to: int | None = None) -> Decoded:
    """Decode ``data`` to RGB with EXIF rotation applied; never raises.

    ``reduce_to``: a JPEG at least twice this size on both sides is decoded at 1/2, 1/4 or 1/8 scale
    in the DCT domain (PIL's ``draft``, libjpeg's scaled IDCT; see ``reduced_scale``), for a caller
    that resizes to ``reduce_to`` anyway (scorer.decode: cpu_fast). Width and height still report the
    stored image's full size; other formats, and JPEGs that are not that large, decode as without it.

    The pixel cap is checked on the header, before any pixel is decoded, so a small file that
    claims a huge canvas (a decompression bomb) costs nothing. PIL's own default cap is the default;
    a larger ``max_pixels`` raises PIL's (see ``_allow_pil``), so the configured cap is the one that applies.
    The format comes from the bytes, never from a member name; a format recognised by its first bytes
    that Pillow cannot decode here (SVG, HEIF without plugin, JPEG XL) is ``unsupported_image_format``.
    """
    if data is None:
        return Decoded(None, None, None, None, MISSING_IMAGE)
    if len(data) == 0:
        return Decoded(None, None, None, None, EMPTY_IMAGE)
    allow_pil(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return Decoded(None, None, None, None, DECOMPRESSION_BOMB, str(e))
    except Exception as e:  # PIL raises many types for unknown or broken headers
        fmt = sniff_format(data)
        if fmt is not None and not _decodable(fmt):
            return Decoded(None, None, None, fmt, UNSUPPORTED_IMAGE_FORMAT, f"{fmt}: {_WHY_NOT[fmt]}")
        return Decoded(None, None, None, fmt, UNREADABLE_IMAGE, _describe(e))
    width, height, fmt = img.width, img.height, img.format
    if width * height > max_pixels:
        return Decoded(None, width, height, fmt, DECOMPRESSION_BOMB, f"{width}x{height} > {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reduced = bool(reduce_to) and fmt in ("JPEG", "MPO") and reduced_scale(width, height, reduce_to) > 1
            if reduced:
                img.draft(None, (reduce_to, reduce_to))
            img.load()
            if reduced and img.getexif().get(ORIENTATION) in _SWAPPING_ORIENTATIONS:
                width, height = height, width  # as exif_transpose turns the reduced image
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = _to_rgb(img)
    except OSError as e:
        reason = TRUNCATED_IMAGE if "truncated" in str(e).lower() else CORRUPT_IMAGE
        return Decoded(None, width, height, fmt, reason, _describe(e))
    except Exception as e:
        return Decoded(None, width, height, fmt, CORRUPT_IMAGE, _describe(e))
    if not reduced:
        width, height = img.width, img.height
    return Decoded(img, width, height, fmt)  # a reduced decode reports the stored (full) size


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white (as browsers show it) and convert any mode to RGB."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")
