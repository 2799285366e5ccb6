"""Image decoding as a check: each kind of bad image gets its own reason; odd modes become RGB."""
import io

import numpy as np
import pytest
from PIL import Image

from filters import image as img


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
