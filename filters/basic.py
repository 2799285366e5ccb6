"""Per-sample checks. Each is a pure function that returns a drop reason, or None to keep the sample.

The defaults are DataComp's basic filter (Gadre et al., 2023, "DataComp: In search of the next
generation of multimodal datasets", section 3.4 and appendix): a caption of more than two words
and more than five characters, an image whose shorter side is at least 200 pixels and whose
aspect ratio is at most 3. DataComp also keeps English captions only; curate corpora are
multilingual, so language selection is a separate, configurable step.
"""
from __future__ import annotations

import math
import re
import unicodedata

# Unicode script classes (\p{scx=Han}): the stdlib re has none; regex comes with open_clip_torch and transformers.
import regex

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


# Letters per word in the scripts written without spaces between words (see caption_words).
CHARS_PER_WORD = {"Han": 2, "Hiragana": 2, "Katakana": 4, "Thai": 3, "Lao": 3, "Khmer": 3, "Myanmar": 3}
_UNSPACED_RUN = regex.compile("|".join(rf"(?P<{script}>[[\p{{scx={script}}}]&&[\p{{L}}\p{{M}}]]+)"
                                       for script in CHARS_PER_WORD), regex.V1)
_LETTER_OR_DIGIT = regex.compile(r"[\p{L}\p{N}]")


def caption_words(caption: str) -> int:
    """Words in ``caption``, in any script.

    Where words are separated by spaces (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
    Hangul...), a word is a whitespace-separated token that holds a letter or a digit (Unicode
    category L or N): emoji and punctuation alone are no word. In scripts written without spaces, a
    run of N letters of one script counts as ceil(N / CHARS_PER_WORD[script]) words; combining marks
    (category M: Thai, Lao, Khmer and Myanmar vowel and tone signs) do not count as letters. With
    ``min_words`` = 3 such a caption passes when it holds more letters than two average words, the
    analogue of DataComp's "more than 2 words". Letters per word, from word-segmented text:

    - Han 2: Chinese words average 1.54-1.71 characters in the four SIGHAN 2005 bakeoff corpora (AS,
      CityU, PKU, MSR) and 1.66 over jieba's frequency dictionary; Japanese kanji-only words 1.73.
      On Chinese prose (GnuPG's help text) this counts 0.87 words per jieba word: it errs low.
    - Hiragana 2, Katakana 4: hiragana-only words average 1.45 kana, katakana-only words 4.39
      (janome's IPADIC segmentation of 47k words of Japanese prose: GnuPG's help text and Rust by
      Example's translation). Hiragana is rounded up, not to the nearer 1: a Japanese word is often a
      kanji stem plus a kana ending (書く), two runs that count a word each; with 1 this counts 1.39
      words per segmenter word on that prose, with 2 it counts 1.06.
    - Thai 3: letters per word 3.24 in the Thai National Corpus word-frequency list and 3.02 in the
      TTC list (both shipped with PyThaiNLP); at ``min_words`` = 3, 3 and 3.24 both ask for 7 letters.
    - Lao, Khmer, Myanmar 3: not measured here; Thai's figure stands in (abugidas whose vowel and tone
      signs are marks, words of one or two syllables). Korean Hangul is written with spaces.

    Whole numbers, not the corpus means, for rounding that a reader can check by hand; no letter
    count tells two words from three exactly (Thai captions of two words drawn by corpus frequency
    reach 7 letters in about 40% of cases).
    """
    words = 0
    for run in _UNSPACED_RUN.finditer(caption):
        letters = sum(unicodedata.category(c).startswith("L") for c in run.group())
        words += math.ceil(letters / CHARS_PER_WORD[run.lastgroup])
    tokens = _UNSPACED_RUN.sub(" ", caption).split()
    return words + sum(1 for token in tokens if _LETTER_OR_DIGIT.search(token))


def caption_too_short(caption: str, min_words: int = 3, min_chars: int = 6) -> str | None:
    """Drop captions with fewer than ``min_words`` words or ``min_chars`` characters.

    DataComp keeps captions with more than 2 words and more than 5 characters, i.e. the defaults
    3 and 6. Words are counted by ``caption_words`` (spaces, or letters per word in scripts written
    without spaces); characters are counted after stripping.
    """
    text = caption.strip()
    if len(text) < min_chars or caption_words(text) < min_words:
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
