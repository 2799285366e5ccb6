"""Duplicate removal on corpora that curate did not generate: real photographs shipped in pip wheels
and photo-like random colour fields (``curate.photo_corpus``), with the truth kept outside the shards.

The default config, with ``select.clip_threshold=-1`` (the demo scorer's scores mean nothing on such
images; the guard rail says so), must: drop every exact copy, catch at least 85% of near copies,
drop at most 2% of distinct images as duplicates, and name for every dropped duplicate a kept
sample within the rule.
"""
import json
import os

import pyarrow.parquet as pq
import pytest

from curate import dedup_truth, guard_rails, photo_corpus, run, synth

DUP_REASONS = ("exact_duplicate", "near_duplicate", "duplicate_url_caption", "semantic_duplicate")
MAX_DISTANCE, THRESHOLD = 10, 0.96  # configs/laion_filter.yaml defaults (dedup.near_method: both)


def curate(corpus, out, *sets):
    args = ["--pipeline", "laion_filter", "--input", corpus, "--output", str(out), "--set", "select.clip_threshold=-1"]
    for s in sets:
        args += ["--set", s]
    report = run.run(args)
    rows = {r["key"]: r for r in pq.read_table(os.path.join(str(out), "decisions")).to_pylist()}
    return report, rows


def assert_kept_instead_is_kept_and_within_the_rule(rows):
    for r in rows.values():
        if r["reason"] in DUP_REASONS:
            assert rows[r["kept_instead"]]["kept"], r
        if r["reason"] == "near_duplicate":
            assert r["dup_hash_distance"] <= MAX_DISTANCE and r["dup_similarity"] >= THRESHOLD, r


@pytest.fixture(scope="module", params=["photos", "fields"])
def foreign(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    corpus = str(base / "shards")
    if request.param == "photos":
        photo_corpus.photo_corpus(corpus, seed=0)
    else:
        photo_corpus.random_fields_corpus(corpus, samples=400, seed=0)
    report, rows = curate(corpus, base / "out")
    return corpus, report, rows


def test_foreign_copies_are_found_and_distinct_images_kept(foreign):
    corpus, _, rows = foreign
    scores = dedup_truth.decision_scores(dedup_truth.load_truth(corpus), rows)
    assert scores["exact_copies"] > 0 and scores["exact_caught"] == scores["exact_copies"], scores
    assert scores["near_recall"] >= 0.85, scores
    assert scores["distinct_dropped"] <= 0.02, scores


def test_foreign_duplicates_name_a_kept_sample_within_the_rule(foreign):
    assert_kept_instead_is_kept_and_within_the_rule(foreign[2])


def test_demo_scorer_on_foreign_input_is_a_warning(foreign, capsys):
    _, report, _ = foreign
    assert any("demo scorer knows only the built-in synthetic scenes" in w for w in report["warnings"])
    with open(os.path.join(report["config"]["output"], "report.json")) as f:
        assert json.load(f)["warnings"] == report["warnings"]


def test_demo_scorer_warning_follows_stored_scores(foreign, tmp_path):
    _, report, _ = foreign
    again = run.run(["--pipeline", "laion_filter", "--output", str(tmp_path / "again"), "--set",
                     f"scores={report['config']['output']}", "--set", "select.clip_threshold=-1"])
    assert again["warnings"] == report["warnings"] and not again["synthetic_input"]


def test_hashes_are_recorded_in_decisions_and_shards(foreign):
    _, report, rows = foreign
    assert all(len(r["phash"]) == 16 for r in rows.values() if r["kept"])
    shard_dir = os.path.join(report["config"]["output"], "shards")
    shards = [r for name in sorted(os.listdir(shard_dir)) if name.endswith(".parquet")
              for r in pq.read_table(os.path.join(shard_dir, name)).to_pylist()]
    assert shards and all(s["phash"] == rows[s["key"]]["phash"] for s in shards)


def test_builtin_corpus_holds_the_same_rule(tmp_path):
    corpus = str(tmp_path / "corpus")
    synth.generate(corpus, 300, seed=3, noise=0.5, shard_size=150)
    report, rows = curate(corpus, tmp_path / "out")
    assert report["synthetic_input"] and not report["warnings"]  # synth's folder is the demo scorer's world
    assert_kept_instead_is_kept_and_within_the_rule(rows)
    scores = dedup_truth.decision_scores(dedup_truth.load_truth(corpus), rows)
    assert scores["exact_caught"] == scores["exact_copies"] and scores["near_recall"] >= 0.85, scores
    assert scores["distinct_dropped"] <= 0.02, scores


def test_clip_alone_on_foreign_fields_warns_about_the_share_it_drops(tmp_path):
    """The demo scorer puts random fields within ~0.94 cosine of each other: CLIP-only dedup at 0.9
    drops most of them (benchmarks/dedup_quality.py: 90% of distinct fields), and the run says so."""
    corpus = str(tmp_path / "shards")
    photo_corpus.random_fields_corpus(corpus, samples=200, seed=1)
    report, _ = curate(corpus, tmp_path / "out", "dedup.near_method=clip", "dedup.near_threshold=0.9")
    assert any(w.startswith("near dedup dropped") and "dedup.near_method" in w for w in report["warnings"]), report


def test_large_group_guard_rail():
    counts = {"dropped_by_stage": {}, "largest_duplicate_groups": {"near:a": 150, "near:b": 20}}
    (w,) = [w for w in guard_rails.warnings(counts, {}, synthetic=True)]
    assert "near:a" in w and "150" in w and "dedup.phash_max_distance" in w
    assert not guard_rails.warnings({"dropped_by_stage": {}, "largest_duplicate_groups": {"near:b": 20}}, {}, True)


def test_nothing_kept_guard_rail():
    counts = {"input": 300, "kept": 0, "dropped_by_reason": {"low_clip_score": 280, "caption_too_short": 20},
              "dropped_by_stage": {}, "largest_duplicate_groups": {}}
    (w,) = guard_rails.warnings(counts, {}, synthetic=True)
    assert w.startswith("no sample was kept of 300") and "low_clip_score (280)" in w and "select.clip_threshold" in w
    assert not guard_rails.warnings({**counts, "kept": 1}, {}, True)
    assert not guard_rails.warnings({**counts, "input": 0}, {}, True)  # an empty input is no surprise
