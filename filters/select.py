"""Selection by CLIP score: absolute threshold (LAION), per-language thresholds, top fraction (DataComp).

Pure functions over scored samples; the pipeline applies exactly one mode (``select.mode``).
"""
from __future__ import annotations

import math
import unicodedata

from curate.filters.basic import low_clip_score

from curate.records import Sample

OUTSIDE_TOP_FRACTION = "outside_top_fraction"
DEFAULT_LANGUAGE_KEY = "default"


def detect_language(caption: str) -> str:
    """The caption's language by py3langid (langid.py's model, offline): an ISO 639-1 code where the
    language has one, else a 3-letter one (``yue``, ``wuu``, ``gom``). The caption is NFKC-normalised
    first (full-width Latin reads as Latin) and cut to its first 2,000 characters (a 10 MB caption
    must not cost seconds)."""
    import py3langid

    return py3langid.classify(unicodedata.normalize("NFKC", caption[:2000]))[0]


def caption_language(caption: str | None, recorded: str | None, detect: bool = True) -> str | None:
    """The input json's ``language``; else, if ``detect``, py3langid's guess for a caption that holds a
    letter (emoji or punctuation alone name no language); else None."""
    if recorded:
        return recorded
    return detect_language(caption) if detect and caption and any(ch.isalpha() for ch in caption) else None


def language_of(sample: Sample, detect: bool) -> str | None:
    """``caption_language`` of a sample: its recorded language, else the detected one."""
    return caption_language(sample.caption, sample.language, detect)


def language_threshold(language: str | None, thresholds: dict[str, float]) -> float:
    """LAION-5B: ViT-B/32 cosine >= 0.28 for English, multilingual CLIP >= 0.26 for the rest.

    ``thresholds`` maps language codes to thresholds; ``default`` covers every other language
    and samples whose language is unknown.
    """
    return thresholds.get(language or "", thresholds[DEFAULT_LANGUAGE_KEY])


def below_threshold(sample: Sample, threshold: float) -> str | None:
    """Absolute threshold: drop a pair whose image-text cosine is below ``threshold``."""
    return low_clip_score(sample.clip_score, threshold)


def top_fraction(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample], float | None]:
    """DataComp's CLIP-score top fraction: keep the ceil(fraction * n) best-scoring samples.

    Ties are broken by key, then input position, so the cut never depends on arrival order.
    Returns (kept, dropped, the lowest kept score).
    """
    ranked = sorted(samples, key=lambda s: (-s.clip_score, s.key, s.order))
    n = math.ceil(fraction * len(ranked))
    kept, dropped = ranked[:n], ranked[n:]
    return kept, dropped, (kept[-1].clip_score if kept else None)
