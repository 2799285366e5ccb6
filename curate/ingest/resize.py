"""Reduced-size JPEG decoding in front of img2dataset's Resizer (ingest's resize step).

A JPEG at least twice the target size is decoded in the DCT domain at 1/2, 1/4 or 1/8 scale
(libjpeg's scaled IDCT, OpenCV's ``IMREAD_REDUCED_COLOR_*``), then resized exactly as img2dataset's
Resizer resizes (albumentations' SmallestMaxSize / LongestMaxSize with its interpolation, centre
crop or white border, ``cv2.imencode`` with its quality). The scale is the largest that keeps the
side the resize mode fits at or above ``image_size``, so the resize still only shrinks and the
output has the same size as with a full decode. Decoding is most of the Resizer's work on large
images; ``benchmarks/decode_speed.py`` prints the speed-up and the PSNR/SSIM of the outputs against
the full-decode path.

Everything else goes to the Resizer unchanged: other formats, grey and CMYK JPEGs, images smaller
than twice the target, resize mode ``no``, blurring, and images its own checks refuse (too small,
too large, aspect ratio), so those keep its exact bytes and error messages.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
from img2dataset.resizer import ResizeMode
from PIL import Image

from curate.filters.image import reduced_scale

_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# cv2.IMREAD_UNCHANGED, the Resizer's flag, ignores EXIF orientation; so must the reduced decode.
_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION
_FIT_SHORT = (ResizeMode.keep_ratio, ResizeMode.center_crop)
_FIT_LONG = (ResizeMode.border, ResizeMode.keep_ratio_largest)


def fitted_side(width: int, height: int, resize_mode: ResizeMode) -> int | None:
    """The side img2dataset's resize brings to ``image_size``: the shorter for keep_ratio and
    center_crop, the longer for border and keep_ratio_largest; None for ``no``."""
    if resize_mode in _FIT_SHORT:
        return min(width, height)
    return max(width, height) if resize_mode in _FIT_LONG else None


def reduction(width: int, height: int, image_size: int, resize_mode: ResizeMode) -> int:
    """1, 2, 4 or 8: the largest JPEG DCT scale denominator that keeps the side ``resize_mode`` fits
    (``fitted_side``) at or above ``image_size`` (``reduced_scale``'s rule for that side); 1 (full
    decode) for an image under twice that, or resize mode ``no``."""
    side = fitted_side(width, height, resize_mode)
    return 1 if side is None else reduced_scale(side, side, image_size)


class ReducedDecodeResizer:
    """img2dataset's Resizer with reduced-size decoding of large JPEGs (see the module docstring);
    called as the Resizer is: ``(img_stream, blurring_bbox_list)`` -> (bytes, width, height,
    original width, original height, error)."""

    def __init__(self, resizer):
        self._r = resizer

    def _scale(self, img_stream, blurring_bbox_list) -> tuple[int, int, int]:
        """(scale, width, height) from the header; scale 1 hands the image to the Resizer as it is."""
        r = self._r
        if blurring_bbox_list is not None or r.disable_all_reencoding or r.skip_reencode:
            return 1, 0, 0
        try:
            with Image.open(img_stream) as im:
                if im.format not in ("JPEG", "MPO") or im.mode != "RGB":
                    return 1, 0, 0
                width, height = im.size  # stored orientation, as cv2.IMREAD_UNCHANGED decodes it
        except Exception:  # noqa: BLE001 - the Resizer reports its own error
            return 1, 0, 0
        if (min(width, height) < r.min_image_size or width * height > r.max_image_area
                or max(width, height) / max(1, min(width, height)) > r.max_aspect_ratio):
            return 1, 0, 0  # the Resizer refuses it, with its own message
        # A scale above 1 means the fitted side is at least twice image_size: the Resizer downscales
        # it whatever resize_only_if_bigger says.
        return reduction(width, height, r.image_size, r.resize_mode), width, height

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        scale, width, height = self._scale(img_stream, blurring_bbox_list)
        img_stream.seek(0)
        if scale == 1:
            return self._r(img_stream, blurring_bbox_list)
        try:
            cv2.setNumThreads(1)
            img = cv2.imdecode(np.frombuffer(img_stream.read(), np.uint8), _REDUCED_FLAGS[scale] | _FLAGS)
            if img is None:  # let the Resizer find and name the problem
                raise ValueError("reduced decode failed")
            img = resize_like_img2dataset(img, self._r, width, height)
            data = cv2.imencode(f".{self._r.encode_format}", img, params=self._r.encode_params)[1].tobytes()
        except Exception:  # noqa: BLE001 - the full-decode Resizer handles (and names) whatever went wrong
            img_stream.seek(0)
            return self._r(img_stream, blurring_bbox_list)
        return data, img.shape[1], img.shape[0], width, height, None


def fitted_size(width: int, height: int, image_size: int, resize_mode: ResizeMode) -> tuple[int, int]:
    """(width, height) after img2dataset's resize of a ``width`` x ``height`` image, before any crop or
    border: albumentations 1.4's SmallestMaxSize / LongestMaxSize (scale = image_size over the fitted
    side, each side rounded). Computed from the full size, so a reduced decode lands on it exactly."""
    scale = image_size / fitted_side(width, height, resize_mode)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_like_img2dataset(img: np.ndarray, r, width: int, height: int) -> np.ndarray:
    """img2dataset 1.47 Resizer's resize step for keep_ratio, center_crop, border and
    keep_ratio_largest (its code: SmallestMaxSize / LongestMaxSize, then CenterCrop or PadIfNeeded
    with white), on a BGR image decoded at reduced size from a ``width`` x ``height`` one: to the
    size (``fitted_size``) and with the interpolation the Resizer gives the full image."""
    fitted = fitted_side(width, height, r.resize_mode)
    interpolation = r.downscale_interpolation if fitted > r.image_size else r.upscale_interpolation
    out_w, out_h = fitted_size(width, height, r.image_size, r.resize_mode)
    img = A.Resize(height=out_h, width=out_w, interpolation=interpolation, p=1.0)(image=img)["image"]
    if r.resize_mode in _FIT_SHORT:
        if r.resize_mode == ResizeMode.center_crop:
            img = A.CenterCrop(height=r.image_size, width=r.image_size)(image=img)["image"]
        return img
    if r.resize_mode == ResizeMode.border:
        img = A.PadIfNeeded(min_height=r.image_size, min_width=r.image_size, border_mode=cv2.BORDER_CONSTANT,
                            value=[255, 255, 255], p=1.0)(image=img)["image"]
    return img
