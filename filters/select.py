"""Selection by CLIP score: absolute threshold (LAION), per-language thresholds, top fraction (DataComp),
top fraction within each language.

Pure functions over scored samples; the pipeline applies exactly one mode (``select.mode``).
"""
from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

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
    Returns (kept, dropped, the lowest kept score). This is the rule, on a list in memory; the
    pipeline reaches the same result without gathering samples (``fraction_cut``, ``in_top_fraction``).
    """
    ranked = sorted(samples, key=lambda s: (-s.clip_score, s.key, s.order))
    n = math.ceil(fraction * len(ranked))
    kept, dropped = ranked[:n], ranked[n:]
    return kept, dropped, (kept[-1].clip_score if kept else None)


@dataclass(frozen=True)
class FractionCut:
    """Where ``top_fraction`` cuts, known without the samples: every score above ``score`` is kept,
    every score below it dropped, and of the ``at_score`` samples scoring exactly ``score`` the
    first ``keep_at_score`` by (key, input order). ``score`` is None when nothing is kept."""
    score: float | None
    keep_at_score: int = 0
    at_score: int = 0

    @property
    def splits_ties(self) -> bool:
        """Only some of the samples at the cut score are kept: their keys decide which."""
        return self.keep_at_score < self.at_score


def fraction_cut(histogram: Iterable[tuple[float, int]], fraction: float) -> FractionCut:
    """The cut of ``top_fraction`` from (score, count) pairs alone (a score may come more than once;
    its counts add up): keep n = ceil(fraction * N) of the N samples, the best scores first.

    Scores are stored to 4 decimals (records.stable), so the histogram has at most 20,001 distinct
    scores in [-1, 1] whatever N is; it is exact, not a quantile estimate.
    """
    counts: dict[float, int] = {}
    for score, count in histogram:
        counts[score] = counts.get(score, 0) + count
    total = sum(counts.values())
    n = min(math.ceil(fraction * total), total)
    above = 0
    for score in sorted(counts, reverse=True):
        if above + counts[score] >= n > 0:
            return FractionCut(score, n - above, counts[score])
        above += counts[score]
    return FractionCut(None)


def fraction_group(sample: Sample, by_language: bool, detect: bool = True) -> str:
    """Where a top fraction is taken: the whole corpus (""), or, for ``select.mode:
    language_fraction``, the sample's language ("" when it has none). Multilingual CLIP scores differ
    in scale between languages (LAION-5B set 0.28 for English and 0.26 for the rest), so one global
    cut keeps mostly the best-scored language; a cut per language keeps the same share of each."""
    return (language_of(sample, detect) or "") if by_language else ""


def top_fraction_by_language(samples: list[Sample], fraction: float, detect: bool = True
                             ) -> tuple[list[Sample], list[Sample], dict[str, float | None]]:
    """``top_fraction`` within each language (``fraction_group``): (kept, dropped, the lowest kept
    score per language). The rule on a list in memory; the pipeline uses ``fraction_cuts``."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(fraction_group(sample, True, detect), []).append(sample)
    kept, dropped, cutoffs = [], [], {}
    for group, members in groups.items():
        k, d, cutoffs[group] = top_fraction(members, fraction)
        kept += k
        dropped += d
    return kept, dropped, cutoffs


def fraction_cuts(histogram: Iterable[tuple[tuple[str, float], int]], fraction: float) -> dict[str, FractionCut]:
    """``fraction_cut`` per group from ((group, score), count) pairs: one cut per language (or one for
    the corpus, group "")."""
    by_group: dict[str, list[tuple[float, int]]] = {}
    for (group, score), count in histogram:
        by_group.setdefault(group, []).append((score, count))
    return {group: fraction_cut(pairs, fraction) for group, pairs in by_group.items()}


def last_kept_tie(ties: list[tuple[str, tuple[int, int]]], cut: FractionCut) -> tuple[str, tuple[int, int]]:
    """Of the (key, input order) of every sample scoring exactly the cut score, the greatest one kept:
    ``top_fraction`` keeps ties in (key, input order) order. Each sample counts once, however often
    a runner delivered it (input orders are unique)."""
    return sorted(set(ties))[cut.keep_at_score - 1]


def in_top_fraction(sample: Sample, cut: FractionCut, last_tie: tuple[str, tuple[int, int]] | None = None) -> bool | None:
    """Whether ``top_fraction`` keeps ``sample``, given the cut; None for a sample tied at the cut
    score when only some ties are kept and ``last_tie`` (``last_kept_tie``) is not given yet."""
    if cut.score is None or sample.clip_score != cut.score:
        return cut.score is not None and sample.clip_score > cut.score
    if not cut.splits_ties:
        return True
    return None if last_tie is None else (sample.key, sample.order) <= last_tie
