"""Selection modes as pure functions, and language identification on the sample corpus."""
import glob
import json
import os

import pytest
from curate.filters import select
from curate.pipelines import laion_filter

from curate import config, synth
from curate.io import iter_tar_samples
from curate.records import Sample


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
