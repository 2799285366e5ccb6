"""Image decoding as a check: each kind of bad image gets its own reason; odd modes become RGB."""
import io
import struct
import zlib

import numpy as np
import pytest
from curate.filters import image as img
from PIL import Image, features


def encode(im, fmt="JPEG", **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w=64, h=48, mode="RGB"):
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def test_good_jpeg_decodes_to_rgb_with_its_size():
    d = img.decode_image(encode(photo(64, 48)))
    assert d.reason is None and d.image.mode == "RGB" and (d.width, d.height) == (64, 48)


@pytest.mark.parametrize("data,reason", [(None, img.MISSING_IMAGE), (b"", img.EMPTY_IMAGE),
                                         (b"not an image at all", img.UNREADABLE_IMAGE)])
def test_missing_empty_and_unknown_bytes(data, reason):
    assert img.decode_image(data).reason == reason


def test_truncated_jpeg():
    data = encode(photo(256, 256), quality=95)
    d = img.decode_image(data[: len(data) // 2])
    assert d.reason == img.TRUNCATED_IMAGE and d.width == 256


def test_decompression_bomb_refused_from_header():
    data = encode(Image.new("L", (4000, 4000)), "PNG")
    d = img.decode_image(data, max_pixels=1_000_000)
    assert d.reason == img.DECOMPRESSION_BOMB and (d.width, d.height) == (4000, 4000)


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
                                      ("L", "PNG"), ("I;16", "PNG")])
def test_other_modes_become_rgb(mode, fmt):
    src = photo(32, 16).convert("L").convert(mode) if mode == "I;16" else photo(32, 16, mode)
    d = img.decode_image(encode(src, fmt))
    assert d.reason is None and d.image.mode == "RGB" and d.image.size == (32, 16)


def test_transparent_pixels_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    d = img.decode_image(encode(rgba, "PNG"))
    assert d.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied():
    src = photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    d = img.decode_image(encode(src, exif=exif.tobytes()))
    assert (d.width, d.height) == (20, 40)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with a few bytes of pixel data: the pixels
    are never there, so nothing large is allocated unless a decoder believes the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


@pytest.fixture
def pil_limit(monkeypatch):
    """decode_image may raise PIL's process-wide limit; put it back after the test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def test_a_cap_above_pils_own_limit_is_the_one_that_applies(pil_limit):
    """Issue 13, item 2: 20000 x 10000 = 200M pixels, above PIL's default error limit (2 x 89.5M =
    178,956,970). A cap of 300M lets it past the header (it then fails on its missing pixels, not as
    a bomb); a cap of 100M refuses it with our own message."""
    data = huge_png_header(20_000, 10_000)
    above = img.decode_image(data, max_pixels=300_000_000)
    assert above.reason != img.DECOMPRESSION_BOMB and above.reason in (img.TRUNCATED_IMAGE, img.CORRUPT_IMAGE)
    assert (above.width, above.height, above.format) == (20_000, 10_000, "PNG")
    below = img.decode_image(data, max_pixels=100_000_000)
    assert below.reason == img.DECOMPRESSION_BOMB and below.detail == "20000x10000 > 100000000 pixels"
    assert "178956970" not in (above.detail or "") + (below.detail or "")


def test_pils_limit_is_only_raised_never_lowered(pil_limit):
    default = Image.MAX_IMAGE_PIXELS
    img.decode_image(encode(photo(8, 8)), max_pixels=1_000)
    assert Image.MAX_IMAGE_PIXELS == default
    img.decode_image(encode(photo(8, 8)), max_pixels=default * 3)
    assert Image.MAX_IMAGE_PIXELS == default * 3


# Issue 13, item 7: the bytes decide the format, whatever the member is called.
@pytest.mark.parametrize("fmt,kw", [("JPEG", {}), ("PNG", {}), ("WEBP", {"quality": 90}), ("GIF", {}),
                                    ("TIFF", {}), ("BMP", {}),
                                    pytest.param("AVIF", {"quality": 90}, marks=pytest.mark.skipif(
                                        not features.check("avif"), reason="this Pillow has no AVIF"))])
def test_each_format_pillow_decodes_is_decoded_and_named(fmt, kw):
    d = img.decode_image(encode(photo(40, 30), fmt, **kw))
    assert d.reason is None and d.format == fmt and d.image.mode == "RGB" and d.image.size == (40, 30)


def heic_bytes() -> bytes:
    """The start of a HEIC file as phones write it: an ftyp box with major brand heic."""
    ftyp = b"ftyp" + b"heic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + b"\x00\x00\x00\x08meta" + bytes(200)


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300"><rect/></svg>'


@pytest.mark.parametrize("data,fmt", [
    (SVG, "SVG"), (b"\xef\xbb\xbf  <svg width='10'></svg>", "SVG"),
    (b"\xff\x0a" + bytes(64), "JXL"),
    pytest.param(heic_bytes(), "HEIF", marks=pytest.mark.skipif(img.pillow_heif is not None,
                                                                   reason="pillow-heif decodes HEIF here")),
])
def test_a_format_pillow_cannot_decode_is_named(data, fmt):
    d = img.decode_image(data)
    assert d.reason == img.UNSUPPORTED_IMAGE_FORMAT and d.format == fmt and d.detail.startswith(f"{fmt}: ")


@pytest.mark.parametrize("data,fmt", [(SVG, "SVG"), (heic_bytes(), "HEIF"), (b"\x00\x00\x00\x1cftypavif" + bytes(20), "AVIF"),
                                      (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avif" + bytes(8), "AVIF"),
                                      (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp41", None),
                                      (b"<html><body>not an image</body></html>", None), (b"GIF89a", None)])
def test_sniff_format(data, fmt):
    assert img.sniff_format(data) == fmt


def test_unknown_bytes_stay_unreadable_not_unsupported():
    d = img.decode_image(b"<html><body>a page, not an image</body></html>")
    assert d.reason == img.UNREADABLE_IMAGE and d.format is None
