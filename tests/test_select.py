"""Selection modes as pure functions, and language identification on the sample corpus."""
import dataclasses
import glob
import json
import math
import os
import random
from collections import Counter

import numpy as np
import pytest
from curate.filters import select
from curate.pipelines import laion_filter

from curate import config, synth
from curate.io import iter_tar_samples
from curate.records import CLIP_SCORE, Sample, decision, stable


def s(key, score, language=None, caption="a red circle on the left"):
    return Sample(key=key, shard_index=0, shard_path="x.tar", member_index=int(key), clip_score=score,
                  language=language, caption=caption)


def test_top_fraction_keeps_the_best_share_with_deterministic_ties():
    samples = [s("1", 0.5), s("2", 0.9), s("3", 0.5), s("4", 0.1), s("5", 0.5)]
    kept, dropped, cutoff = select.top_fraction(samples, 0.5)  # ceil(2.5) = 3
    assert [x.key for x in kept] == ["2", "1", "3"] and cutoff == 0.5
    assert {x.key for x in dropped} == {"4", "5"}
    assert [x.key for x in select.top_fraction(list(reversed(samples)), 0.5)[0]] == ["2", "1", "3"]


@pytest.mark.parametrize("fraction,n", [(0.0, 0), (1.0, 5), (0.2, 1), (0.21, 2)])
def test_top_fraction_sizes(fraction, n):
    assert len(select.top_fraction([s(str(i), i / 10) for i in range(5)], fraction)[0]) == n


def test_language_thresholds_laion_style():
    t = {"en": 0.28, "default": 0.26}
    assert select.language_threshold("en", t) == 0.28
    assert select.language_threshold("de", t) == 0.26 and select.language_threshold(None, t) == 0.26


def test_recorded_language_wins_over_detection():
    assert select.language_of(s("1", 0.5, language="fr", caption="the cat sat on the mat"), True) == "fr"
    assert select.language_of(s("1", 0.5, caption="the cat sat on the mat"), True) == "en"
    assert select.language_of(s("1", 0.5), False) is None


def test_threshold_boundary():
    assert select.below_threshold(s("1", 0.28), 0.28) is None
    assert select.below_threshold(s("1", 0.2799), 0.28) == "low_clip_score"


def test_language_identification_on_the_sample_corpus(tmp_path):
    """py3langid names the language of >= 95% of the corpus's captions (5 languages, one Cyrillic)."""
    synth.generate(str(tmp_path), 600, seed=21, noise=0.0)
    right = total = 0
    for path in glob.glob(os.path.join(tmp_path, "*.tar")):
        for _key, fields in iter_tar_samples(path):
            total += 1
            right += select.detect_language(fields["txt"].decode()) == json.loads(fields["json"])["language"]
    print(f"language identified for {right / total:.1%} of {total} captions")
    assert right / total >= 0.95


def test_language_thresholds_from_config():
    cfg = config.load("laion_filter", laion_filter.SCHEMA, None,
                      ["select.mode=language", "select.language_thresholds.de=0.7"])
    assert cfg["select.language_thresholds"] == {"de": 0.7, "default": 0.6, "en": 0.6}
    with pytest.raises(config.ConfigError, match="select.language_thresholds.fr must be a number"):
        config.load("laion_filter", laion_filter.SCHEMA, None, ["select.language_thresholds.fr=high"])


def tied_corpus(n, seed, levels):
    """n samples whose scores take ``levels`` values (many ties), keys repeating (ties fall back to
    input order), in a shuffled arrival order."""
    rng = random.Random(seed)
    samples = [Sample(key=f"k{rng.randrange(max(1, n // 3))}", shard_index=i % 3, shard_path=f"{i % 3}.tar",
                      member_index=i, clip_score=stable(rng.randrange(levels) / 7 - 0.4)) for i in range(n)]
    rng.shuffle(samples)
    return samples


def expected_top_fraction(samples, fraction):
    """select.top_fraction's result as the pipeline emits it: kept copies carrying the cut, dropped rows."""
    kept, dropped, cutoff = select.top_fraction(samples, fraction)
    return ([dataclasses.replace(x, clip_threshold=cutoff) for x in kept],
            [decision(x, False, CLIP_SCORE, select.OUTSIDE_TOP_FRACTION, clip_threshold=cutoff) for x in dropped])


@pytest.mark.parametrize("n,levels", [(0, 1), (1, 1), (40, 1), (60, 3), (200, 12), (300, 1000)])
@pytest.mark.parametrize("fraction", [0.0, 1e-9, 0.3, 0.5, 0.999, 1.0])
def test_fraction_cut_from_the_histogram_equals_top_fraction(n, levels, fraction):
    """Pure: the histogram's cut plus the ties' keys decide every sample as top_fraction does
    (kept set and lowest kept score), for N = 0, all-equal scores and heavy ties."""
    samples = tied_corpus(n, seed=n + levels, levels=levels)
    cut = select.fraction_cut(Counter(x.clip_score for x in samples).items(), fraction)
    ties = [(x.key, x.order) for x in samples if x.clip_score == cut.score]
    assert len(ties) == cut.at_score
    last = select.last_kept_tie(ties, cut) if cut.splits_ties else None
    kept, _, cutoff = select.top_fraction(samples, fraction)
    assert {x.order for x in samples if select.in_top_fraction(x, cut, last)} == {x.order for x in kept}
    assert cut.score == cutoff


@pytest.mark.parametrize("n,levels,fraction", [(0, 1, 0.5), (30, 1, 0.5), (30, 1, 1.0), (30, 1, 1e-9),
                                               (90, 4, 0.3), (90, 40, 0.5)])
def test_top_fraction_transform_equals_the_pure_rule(n, levels, fraction):
    """The Beam composite (histogram + tie keys on one worker, samples never gathered): the same kept
    samples with the same clip_threshold, and the same decision rows, as select.top_fraction."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    samples = tied_corpus(n, seed=7 * n + levels, levels=levels)
    kept, dropped = expected_top_fraction(samples, fraction)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        selected = p | beam.Create(samples) | laion_filter.TopFraction(fraction)
        assert_that(selected.passed, equal_to(kept), label="kept")
        assert_that(selected.decisions, equal_to(dropped), label="dropped")


def languages_corpus(n, seed):
    """tied_corpus with a language per sample, the scores of one language lower than the others'
    (as a CLIP scores the languages it saw less), and some samples without a language."""
    rng = random.Random(seed)
    out = []
    for x in tied_corpus(n, seed, levels=9):
        lang = rng.choice(["en", "en", "en", "th", "ar", None])
        score = stable(x.clip_score - 0.3) if lang == "th" else x.clip_score
        out.append(dataclasses.replace(x, language=lang, clip_score=score))
    return out


def test_language_fraction_keeps_the_same_share_of_every_language():
    samples = languages_corpus(300, seed=3)
    kept, dropped, cutoffs = select.top_fraction_by_language(samples, 0.3, detect=False)
    assert len(kept) + len(dropped) == len(samples)
    for lang in ("en", "th", "ar", None):
        n = sum(x.language == lang for x in samples)
        assert sum(x.language == lang for x in kept) == math.ceil(0.3 * n)
    assert cutoffs["th"] < cutoffs["en"]  # the low-scored language keeps its share at its own cut
    # one global cut keeps almost none of it
    assert sum(x.language == "th" for x in select.top_fraction(samples, 0.3)[0]) < 0.3 * sum(
        x.language == "th" for x in samples) / 2


@pytest.mark.parametrize("n,fraction", [(0, 0.5), (120, 0.3), (120, 1e-9), (200, 0.5)])
def test_language_fraction_transform_equals_the_pure_rule(n, fraction):
    """The Beam composite with a cut per language (histogram and ties per language, on one worker)
    decides every sample as select.top_fraction_by_language does."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    samples = languages_corpus(n, seed=n + 1)
    kept, dropped, cutoffs = select.top_fraction_by_language(samples, fraction, detect=False)
    group = lambda x: x.language or ""  # noqa: E731
    want_kept = [dataclasses.replace(x, clip_threshold=cutoffs[group(x)]) for x in kept]
    want_dropped = [decision(x, False, CLIP_SCORE, select.OUTSIDE_TOP_FRACTION, clip_threshold=cutoffs[group(x)],
                             language=x.language) for x in dropped]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        selected = p | beam.Create(samples) | laion_filter.TopFraction(fraction, by_language=True)
        assert_that(selected.passed, equal_to(want_kept), label="kept")
        assert_that(selected.decisions, equal_to(want_dropped), label="dropped")


def test_rounding_is_not_batch_invariant_but_decisions_on_stored_scores_are_reproducible():
    """Issue 14: two adjacent float32 values of one cosine (its last bit may depend on the batch)
    round to different stored scores, so a threshold between them can decide differently; what is
    guaranteed is that a stored score read back (float32 in the metadata parquet, records.stable
    again) is the same number, so a decision re-run from stored scores is the same decision."""
    high = np.float32(0.96005005)
    low = np.nextafter(high, np.float32(0))  # the adjacent float32 below it, 0.96004999
    assert stable(low) == 0.96 and stable(high) == 0.9601
    assert select.below_threshold(s("1", stable(low)), 0.9601) != select.below_threshold(s("1", stable(high)), 0.9601)
    for score in (stable(low), stable(high), 0.28, -0.0371, 0.9999):
        stored = stable(np.float32(score))  # curate/embeddings.py: float32 column, stable() on read
        assert stored == score
        assert select.below_threshold(s("1", stored), 0.9601) == select.below_threshold(s("1", score), 0.9601)
