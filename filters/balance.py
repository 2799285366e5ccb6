"""Balancing over metadata entries: MetaCLIP's sampling rule and MetaCLIP 2's per-language caps.

MetaCLIP (Xu et al., 2023, "Demystifying CLIP Data", section 3 and its curation pseudo-code) counts,
over the whole pool, how many captions match each metadata entry (filters/metadata.py), caps every
entry at ``t`` matches (t = 20,000 for its 400M set): an entry matched ``count`` times keeps each of its matches
with probability min(1, t / count), so "tail" entries (count <= t) keep every sample and "head"
entries keep about t. A sample is kept when ANY of its matched entries is drawn. Its reference code
draws with Python's random module; here each draw comes from a hash of (seed, key, entry)
(``draw``), so the result depends neither on order nor on workers, and a sample keeps its fate
when other samples are added or removed (only the counts move it).

MetaCLIP 2 (Chuang et al., 2025, "MetaCLIP 2: A Worldwide Scaling Recipe", section 3, and its code:
metaclip/curation/curate.py, ``t_to_p`` / ``p_to_t``) has one list and one cap per language:
English keeps its cap ``t_en``; the share of English matches that fall on tail entries,
p = (matches of entries with count < t_en) / (all matches), is computed once, and every other
language gets the cap ``t_lang`` at which its own tail share is (closest to) the same p
(``language_caps``). A language of a thousand captions and one of a billion thus keep the same
proportion of tail concepts, instead of the same absolute cap.

Samples that match no entry are MetaCLIP's "no metadata" case: it drops them; ``balance_decision``
takes the policy as an argument (``balance.unmatched``). Reasons are data, as in filters/basic.py.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

BALANCED_OUT = "balanced_out"
NO_METADATA_MATCH = "no_metadata_match"
UNMATCHED_POLICIES = ("keep", "drop")


def keep_probability(count: int, cap: float) -> float:
    """MetaCLIP: the probability that one match of an entry matched ``count`` times is drawn,
    min(1, cap / count); 1 for an entry at or under the cap (the tail keeps everything)."""
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    return 1.0 if count <= cap else cap / count


def draw(key: str, entry: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) for the pair (``key``, ``entry``): BLAKE2b of seed, key and entry
    (NUL-separated, UTF-8), its first 53 bits over 2**53. The same on every machine, process and
    worker, unlike Python's salted ``hash``."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{entry}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def balanced_keep(key: str, entries: Iterable[str], counts: Mapping[str, int], cap: float, seed: int = 0) -> bool:
    """MetaCLIP's rule for one sample: kept when any of its matched ``entries`` is drawn, i.e.
    ``draw(key, entry, seed) < keep_probability(counts[entry], cap)``. ``counts`` are the corpus-wide
    match counts of the sample's language. False when ``entries`` is empty (nothing to draw)."""
    return any(draw(key, entry, seed) < keep_probability(counts[entry], cap) for entry in entries)


def balance_decision(key: str, entries: Sequence[str], counts: Mapping[str, int], cap: float,
                     seed: int = 0, unmatched: str = "drop") -> str | None:
    """The drop reason of one sample, or None to keep it: ``NO_METADATA_MATCH`` for a sample that
    matches nothing when ``unmatched`` is "drop" (MetaCLIP drops them; "keep" keeps them unsampled),
    else ``BALANCED_OUT`` when ``balanced_keep`` draws none of its entries."""
    if unmatched not in UNMATCHED_POLICIES:
        raise ValueError(f"unmatched must be one of {UNMATCHED_POLICIES}, got {unmatched!r}")
    if not entries:
        return NO_METADATA_MATCH if unmatched == "drop" else None
    return None if balanced_keep(key, entries, counts, cap, seed) else BALANCED_OUT


def _positive(counts: Mapping[str, int] | Iterable[int]) -> list[int]:
    values = counts.values() if isinstance(counts, Mapping) else counts
    return [int(c) for c in values if c > 0]


def tail_share(counts: Mapping[str, int] | Iterable[int], cap: float) -> float:
    """MetaCLIP 2's ``t_to_p``: the share of all matches that fall on entries matched fewer than
    ``cap`` times. Raises ValueError when there are no matches."""
    values = _positive(counts)
    if not values:
        raise ValueError("tail_share of a language without matches")
    return sum(c for c in values if c < cap) / sum(values)


def cap_for_tail_share(counts: Mapping[str, int] | Iterable[int], share: float) -> int:
    """MetaCLIP 2's ``p_to_t``: sort the entries' counts ascending, take the cumulative share of
    matches after each, and return the count at which that share is closest to ``share`` (the first
    such, as numpy's argmin). Entries never matched are left out (MetaCLIP 2's arrays hold them as
    zeros; there, a small ``share`` can pick a zero and a cap of 0 that drops every match). The
    cumulative share counts the entries up to and including those at the returned count, while
    ``tail_share`` counts entries strictly below a cap: MetaCLIP 2's ``p_to_t`` and ``t_to_p`` differ
    so, and both are kept as they are. Raises ValueError when there are no matches."""
    values = sorted(_positive(counts))
    if not values:
        raise ValueError("cap_for_tail_share of a language without matches")
    total, running, best, best_gap = sum(values), 0, values[0], math.inf
    for count in values:
        running += count
        gap = abs(running / total - share)
        if gap < best_gap:
            best, best_gap = count, gap
    return best


def language_caps(counts_by_language: Mapping[str, Mapping[str, int]], reference_cap: float,
                  reference: str = "en") -> dict[str, float]:
    """MetaCLIP 2's per-language caps: ``reference`` (English) keeps ``reference_cap`` (t_en); its
    tail share p = ``tail_share(counts[reference], t_en)``; every other language gets
    ``cap_for_tail_share(its counts, p)``. A language without matches gets ``reference_cap`` (it has
    nothing to balance). Raises ValueError when the reference language has no matches: p is then
    undefined (give the caps per language instead)."""
    if not _positive(counts_by_language.get(reference, {})):
        raise ValueError(f"the reference language {reference!r} has no metadata matches: no tail share to carry over")
    share = tail_share(counts_by_language[reference], reference_cap)
    caps: dict[str, float] = {}
    for language, counts in sorted(counts_by_language.items()):
        if language == reference or not _positive(counts):
            caps[language] = reference_cap
        else:
            caps[language] = cap_for_tail_share(counts, share)
    return caps


def head_to_tail_ratio(counts: Mapping[str, int] | Iterable[int], head_fraction: float = 0.1) -> float | None:
    """How much more often a head entry is matched than the rest: the mean count of the
    ceil(``head_fraction`` * n) most-matched entries (at least one) over the mean count of the other
    entries. 1 for a flat corpus; balancing at a cap pulls it towards 1. Zeros count: pass every
    entry of the language's list, so that the ratios before and after a run compare the same
    entries. None when it is undefined (fewer than two entries, or the other entries all at 0)."""
    values = sorted((int(c) for c in (counts.values() if isinstance(counts, Mapping) else counts)), reverse=True)
    if not 0 < head_fraction < 1:
        raise ValueError(f"head_fraction must be within (0, 1), got {head_fraction}")
    head = max(1, math.ceil(head_fraction * len(values)))
    rest = values[head:]
    if not rest or sum(rest) == 0:
        return None
    return (sum(values[:head]) / head) / (sum(rest) / len(rest))


CAP_RULES = ("fixed", "tail_share")


def caps_by_language(counts_by_language: Mapping[str, Mapping[str, int]], cap: float, rule: str = "fixed",
                     reference: str = "en", overrides: Mapping[str, float] | None = None) -> tuple[dict[str, float], str | None]:
    """The cap of every language with counts, and a note when the rule could not be followed.

    ``fixed``: every language gets ``cap`` (MetaCLIP's one t). ``tail_share``: MetaCLIP 2's
    ``language_caps`` with ``cap`` as the reference language's t; when the reference language has
    no matches, every language gets ``cap`` and the note says so (a run does not die on a corpus
    without English). ``overrides`` (``balance.language_caps``) win over both rules."""
    if rule not in CAP_RULES:
        raise ValueError(f"rule must be one of {CAP_RULES}, got {rule!r}")
    caps, note = {language: float(cap) for language in counts_by_language}, None
    if rule == "tail_share":
        try:
            caps = {language: float(t) for language, t in language_caps(counts_by_language, cap, reference).items()}
        except ValueError as e:
            note = f"caps tail_share not applied ({e}): every language capped at {cap:g}"
    caps.update({language: float(t) for language, t in (overrides or {}).items()})
    return dict(sorted(caps.items())), note
