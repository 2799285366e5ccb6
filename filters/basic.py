"""Per-sample checks. Each is a pure function that returns a drop reason, or None to keep the sample.

The defaults are DataComp's basic filter (Gadre et al., 2023, "DataComp: In search of the next
generation of multimodal datasets", section 3.4 and appendix): a caption of more than two words
and more than five characters, an image whose shorter side is at least 200 pixels and whose
aspect ratio is at most 3. DataComp also keeps English captions only; curate corpora are
multilingual, so language selection is a separate, configurable step.
"""
from __future__ import annotations

import re

# Reasons are data: the decisions table and the report count them by these exact strings.
IMAGE_TOO_SMALL = "image_too_small"
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
CAPTION_TOO_SHORT = "caption_too_short"
BOILERPLATE_CAPTION = "boilerplate_caption"
LOW_CLIP_SCORE = "low_clip_score"


def image_too_small(width: int, height: int, min_side: int = 200) -> str | None:
    """Drop images whose shorter side is below ``min_side`` pixels (DataComp: 200)."""
    return IMAGE_TOO_SMALL if min(width, height) < min_side else None


def extreme_aspect_ratio(width: int, height: int, max_ratio: float = 3.0) -> str | None:
    """Drop images whose longer side exceeds ``max_ratio`` times the shorter (DataComp: 3)."""
    return EXTREME_ASPECT_RATIO if max(width, height) > max_ratio * min(width, height) else None


def caption_too_short(caption: str, min_words: int = 3, min_chars: int = 6) -> str | None:
    """Drop captions with fewer than ``min_words`` words or ``min_chars`` characters.

    DataComp keeps captions with more than 2 words and more than 5 characters, i.e. the defaults
    3 and 6. Words are whitespace-separated; characters are counted after stripping.
    """
    text = caption.strip()
    if len(text) < min_chars or len(text.split()) < min_words:
        return CAPTION_TOO_SHORT
    return None


# Captions that describe the file or the page, not the image: camera file names, bare file names,
# and web boilerplate. LAION and DataComp report such alt-texts as the commonest useless captions.
_FILENAME = re.compile(r"^\s*[\w\-. ]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic)\s*$", re.IGNORECASE)
_CAMERA = re.compile(r"^\s*(img|dsc|dscn|dsc_|pict|p|gopr|mvimg|screenshot)[_\- ]?\d{2,}\w*\s*$", re.IGNORECASE)
_PHRASES = frozenset({
    "click here", "click here to enlarge", "click to enlarge", "image", "images", "untitled",
    "photo", "picture", "stock photo", "no description available", "thumbnail", "view larger image",
    "image not found", "placeholder", "default image", "no image", "loading",
})


def boilerplate_caption(caption: str) -> str | None:
    """Drop captions that are a file name, a camera counter, or a known web boilerplate phrase."""
    text = caption.strip()
    normalised = re.sub(r"[\s\W_]+", " ", text.lower()).strip()
    if _FILENAME.match(text) or _CAMERA.match(text) or normalised in _PHRASES:
        return BOILERPLATE_CAPTION
    return None


def low_clip_score(score: float, threshold: float) -> str | None:
    """Drop pairs whose image-text cosine is below ``threshold``.

    LAION-400M/5B kept English pairs with ViT-B/32 cosine >= 0.28 (0.3 for LAION-400M); each
    model has its own scale, so the threshold belongs to the scorer's config.
    """
    return LOW_CLIP_SCORE if score < threshold else None
