"""MetaCLIP balancing (filters/balance.py): the sampling rule, its determinism, MetaCLIP 2's language caps."""
import hashlib
import math
import os
import random
import subprocess
import sys

import pytest
from curate.filters import balance
from curate.filters.balance import (
    BALANCED_OUT,
    NO_METADATA_MATCH,
    balance_decision,
    balanced_keep,
    cap_for_tail_share,
    draw,
    head_to_tail_ratio,
    keep_probability,
    language_caps,
    tail_share,
)


def test_keep_probability():
    assert keep_probability(10, 1000) == 1.0 and keep_probability(1000, 1000) == 1.0
    assert keep_probability(4000, 1000) == 0.25 and keep_probability(5, 0) == 0.0
    with pytest.raises(ValueError):
        keep_probability(5, -1)


def test_draw_is_uniform_and_depends_on_key_entry_and_seed():
    values = [draw(f"{i:09d}", "red") for i in range(20000)]
    assert all(0 <= v < 1 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 4 * math.sqrt(1 / 12 / len(values))
    assert draw("k", "red") != draw("k", "blue") and draw("k", "red", 0) != draw("k", "red", 1)


def binomial_bounds(n, p, sigmas=4):
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


def test_one_head_entry_keeps_about_the_cap():
    n, cap = 20000, 1000
    counts = {"red": n}
    kept = sum(balanced_keep(f"{i:09d}", ("red",), counts, cap) for i in range(n))
    low, high = binomial_bounds(n, cap / n)
    assert low <= kept <= high  # 1000 +- 123


def test_per_entry_kept_counts_within_binomial_bounds_and_the_tail_kept_whole():
    cap = 500
    counts = {"red": 6000, "circle": 3000, "left": 1000, "cube": 500, "steam": 40}
    samples = [(f"{entry}-{i}", (entry,)) for entry, n in counts.items() for i in range(n)]
    kept = {entry: 0 for entry in counts}
    for key, entries in samples:
        if balanced_keep(key, entries, counts, cap, seed=7):
            kept[entries[0]] += 1
    for entry, n in counts.items():
        if n <= cap:
            assert kept[entry] == n, entry  # tail entries: every sample kept
        else:
            low, high = binomial_bounds(n, cap / n)
            assert low <= kept[entry] <= high, (entry, kept[entry])


def test_any_match_keeps_a_sample():
    counts = {"red": 1_000_000, "steam": 3}
    # a sample that also names a tail entry is always kept, however common its other entries are
    assert all(balanced_keep(f"k{i}", ("red", "steam"), counts, 100) for i in range(500))
    assert not balanced_keep("k", (), counts, 100)


def _digest(seed):
    keys = [f"{i:09d}" for i in range(2000)]
    counts = {"red": 40000, "blue": 9000, "steam": 10}
    kept = [k for k in keys if balanced_keep(k, ("red", "blue"), counts, 1000, seed)]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def test_same_result_in_any_order_and_in_another_process():
    keys = [f"{i:09d}" for i in range(2000)]
    counts = {"red": 40000, "blue": 9000}
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    kept = {k for k in keys if balanced_keep(k, ("red", "blue"), counts, 1000, 5)}
    assert {k for k in shuffled if balanced_keep(k, ("blue", "red"), counts, 1000, 5)} == kept
    # Python's str hash is salted per process; the draw must not be
    code = "from tests.test_balance import _digest; print(_digest(5))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"},
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.strip()
    assert out == _digest(5) != _digest(6)


def test_balance_decision_reasons():
    counts = {"red": 10**9, "steam": 1}
    assert balance_decision("k", (), counts, 100) == NO_METADATA_MATCH == "no_metadata_match"
    assert balance_decision("k", (), counts, 100, unmatched="keep") is None
    assert balance_decision("k", ("steam",), counts, 100) is None
    assert balance_decision("k", ("red",), counts, 100) == BALANCED_OUT == "balanced_out"
    with pytest.raises(ValueError):
        balance_decision("k", (), counts, 100, unmatched="maybe")


def test_language_caps_keep_the_english_tail_share():
    """By hand. English, t_en = 40: the entries under 40 (30 + 10 + 10) hold 50 of 200 matches, p = 0.25.
    German, sorted 5, 10, 10, 25, 50, 100 (200 matches): cumulative shares .025 .075 .125 .25 .5 1, so
    t_de = 25: the entries at or under 25 hold exactly a quarter of the German matches."""
    counts = {
        "en": {"a": 100, "b": 50, "c": 30, "d": 10, "e": 10},
        "de": {"a": 100, "b": 50, "c": 25, "d": 10, "e": 10, "f": 5, "never": 0},
        "th": {"a": 0},
    }
    assert tail_share(counts["en"], 40) == 0.25
    caps = language_caps(counts, 40)
    assert caps == {"de": 25, "en": 40, "th": 40}
    de = counts["de"]
    assert sum(c for c in de.values() if c <= caps["de"]) / sum(de.values()) == tail_share(counts["en"], 40)
    # MetaCLIP 2's p_to_t takes the closest cumulative share (the first, on a tie)
    assert cap_for_tail_share([10, 10, 20, 60, 400], 0.25) == 60  # shares .02 .04 .08 .2 1
    assert cap_for_tail_share([1, 1, 1, 1], 0.3) == 1
    with pytest.raises(ValueError, match="reference language"):
        language_caps({"de": de}, 40)


def test_head_to_tail_ratio():
    assert head_to_tail_ratio([100] + [10] * 9) == 10.0  # top decile (1 entry) over the other 9
    assert head_to_tail_ratio({"a": 20, **{str(i): 10 for i in range(9)}}) == 2.0  # after a cap of 20
    assert head_to_tail_ratio([7] * 10) == 1.0
    assert head_to_tail_ratio([100, 90, 10, 10, 10], head_fraction=0.4) == 9.5  # 2 head entries
    assert head_to_tail_ratio([5, 0, 0]) is None and head_to_tail_ratio([5]) is None
    with pytest.raises(ValueError):
        head_to_tail_ratio([1, 2], head_fraction=1.5)
    assert balance.UNMATCHED_POLICIES == ("keep", "drop")


def test_caps_by_language_rules_overrides_and_fallback():
    counts = {"en": {"a": 100, "b": 10, "c": 1}, "de": {"x": 50, "y": 5}}
    assert balance.caps_by_language(counts, 20) == ({"de": 20.0, "en": 20.0}, None)
    derived, note = balance.caps_by_language(counts, 20, "tail_share")
    assert note is None and derived == {k: float(v) for k, v in balance.language_caps(counts, 20).items()}
    caps, _ = balance.caps_by_language(counts, 20, "tail_share", overrides={"de": 7})
    assert caps["de"] == 7.0 and caps["en"] == 20.0
    caps, note = balance.caps_by_language({"de": {"x": 50}}, 20, "tail_share")  # no English to carry over
    assert caps == {"de": 20.0} and "tail_share not applied" in note
    with pytest.raises(ValueError):
        balance.caps_by_language(counts, 20, "median")


def test_guard_rail_names_languages_that_drop_for_want_of_a_list():
    from curate import guard_rails

    coverage = {"coverage": {"unlisted": {"it": 138, "nl": 4}}}
    on = {"balance.enabled": True, "balance.unmatched": "drop"}
    warning = guard_rails.unlisted_languages_dropped(on, coverage)
    assert "2 language(s)" in warning and "it 138, nl 4" in warning and "balance.unmatched=keep" in warning
    assert guard_rails.unlisted_languages_dropped({**on, "balance.unmatched": "keep"}, coverage) is None
    assert guard_rails.unlisted_languages_dropped({**on, "balance.enabled": False}, coverage) is None
    assert guard_rails.unlisted_languages_dropped(on, {"coverage": {"unlisted": {}}}) is None
