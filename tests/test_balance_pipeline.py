"""The balancing step in Beam (pipelines/balance.py) and the coverage audit (curate/coverage.py):
the step decides as the pure rule does on corpus-wide counts, keeps head entries within binomial
bounds of the cap and tail entries whole, gives the same bytes with 1 and 2 workers, and the audit's
numbers equal a direct count over the corpus and the curated shards."""
import glob
import json
import math
import os
from collections import Counter

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that
from curate.filters import balance
from curate.filters.metadata import Metadata, load_metadata
from curate.pipelines.balance import Balance, BalanceParams
from curate.pipelines.specs import PIPELINES

from curate import run, synth
from curate.io import iter_tar_groups
from curate.records import Sample

CAP = 150
# (entries, samples): one head entry far over the cap, one over it, one tail entry, a sample of a
# head and a tail entry, samples that match nothing, and samples in a language without a list.
GROUPS = [(("circle",), 3000), (("square",), 600), (("star",), 30), (("circle", "star"), 40), ((), 25)]
METADATA = Metadata({"en": ["circle", "square", "star"], "de": ["Kreis"]})


def _samples():
    samples, index = [], 0
    for entries, n in GROUPS:
        for _ in range(n):
            samples.append(Sample(key=f"k{index:05d}", shard_index=index // 500, shard_path=f"s{index // 500}.tar",
                                  member_index=index % 500, language="en", metadata_entries=entries))
            index += 1
    samples += [Sample(key=f"it{i}", shard_index=99, shard_path="it.tar", member_index=i, language="it",
                       metadata_entries=()) for i in range(5)]
    return samples


def _check_balance(params, check):
    """Run the Beam step on ``_samples`` and call ``check(kept keys, decision rows)`` on its outputs
    (inside the pipeline: a matcher's side effects do not come back, its assertions do)."""
    with beam.Pipeline() as p:
        out = p | beam.Create(_samples()) | Balance(params, METADATA)
        keys = out.passed | "KeptKeys" >> beam.Map(lambda s: (None, ("kept", s.key)))
        rows = out.decisions | "Rows" >> beam.Map(lambda r: (None, ("row", r)))
        both = (keys, rows) | beam.Flatten() | beam.GroupByKey() | beam.MapTuple(
            lambda _, items: ([v for tag, v in items if tag == "kept"], [v for tag, v in items if tag == "row"]))
        assert_that(both, lambda results: [check(sorted(kept), rows) for kept, rows in results] or check([], []))


class _SameAsPureRule:
    def __init__(self, unmatched):
        self.unmatched = unmatched

    def __call__(self, kept, rows):
        samples = _samples()
        counts = Counter(e for s in samples if s.language == "en" for e in s.metadata_entries)
        expected = [s.key for s in samples
                    if balance.balance_decision(s.key, s.metadata_entries, counts, CAP, 3, self.unmatched) is None]
        assert kept == sorted(expected)
        assert len(kept) + len(rows) == len(samples)
        reasons = Counter(r["reason"] for r in rows)
        assert reasons["no_metadata_match"] == (30 if self.unmatched == "drop" else 0)  # 25 English + 5 Italian
        assert reasons["balanced_out"] > 0
        assert all(r["stage"] == "balance" and r["balance_cap"] == CAP for r in rows)
        assert all(r["metadata_entries"] in (["circle"], ["square"], []) for r in rows)


@pytest.mark.parametrize("unmatched", ["keep", "drop"])
def test_the_step_decides_as_the_pure_rule_on_corpus_counts(unmatched):
    _check_balance(BalanceParams(enabled=True, cap=CAP, unmatched=unmatched, seed=3), _SameAsPureRule(unmatched))


def _within_bounds(kept, rows):
    kept, by_group, index = set(kept), {}, 0
    for entries, n in GROUPS:
        by_group[entries] = sum(f"k{i:05d}" in kept for i in range(index, index + n))
        index += n
    for entries, n, matches in ((("circle",), 3000, 3000 + 40), (("square",), 600, 600)):
        p = CAP / matches  # every circle match counts towards circle's count
        mean, sd = n * p, math.sqrt(n * p * (1 - p))
        assert abs(by_group[entries] - mean) <= 5 * sd, (entries, by_group[entries], mean)
    assert by_group[("star",)] == 30 and by_group[("circle", "star")] == 40  # the tail, and any match
    assert by_group[()] == 25  # unmatched: keep


def test_kept_counts_within_binomial_bounds_and_the_tail_kept_whole():
    _check_balance(BalanceParams(enabled=True, cap=CAP, seed=0), _within_bounds)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A skewed 12-language corpus, scored once (the runs below reuse the stored scores)."""
    corpus = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(corpus, 450, seed=11, noise=0.2, shard_size=150, mix="skewed")
    out = str(tmp_path_factory.mktemp("scored"))
    assert run.main(["--pipeline", "score", "--input", corpus, "--output", out]) == 0
    return corpus, out


BALANCED = ["--set", "balance.enabled=true", "--set", "balance.cap=12", "--set", "balance.caps=tail_share",
            "--set", "select.mode=language_fraction", "--set", "select.fraction=0.8"]


def _balanced_run(scored, out, *extra):
    _, scores = scored
    assert run.main(["--pipeline", "laion_filter", "--set", f"scores={scores}", "--output", str(out),
                     "--set", "shards.samples_per_shard=100", *BALANCED, *extra]) == 0
    return json.load(open(os.path.join(out, "report.json")))


@pytest.fixture(scope="module")
def balanced(scored, tmp_path_factory):
    out = tmp_path_factory.mktemp("balanced")
    return str(out), _balanced_run(scored, out)


def _bytes(folder):
    return {os.path.relpath(p, folder): open(p, "rb").read()
            for sub in ("shards", "decisions") for p in sorted(glob.glob(os.path.join(folder, sub, "*")))}


def test_one_and_two_workers_write_the_same_bytes(scored, balanced, tmp_path):
    out, report = balanced
    assert report["counts"]["dropped_by_reason"].get("balanced_out", 0) > 0
    two = _balanced_run(scored, tmp_path / "two", "--direct_running_mode=multi_processing",
                        "--direct_num_workers=2")
    assert _bytes(out) == _bytes(tmp_path / "two")
    assert two["coverage"] == report["coverage"]


def test_coverage_equals_a_direct_count(scored, balanced):
    """Input: every readable sample of the raw corpus, matched here from its own caption and
    language; kept: the curated shards' captions and KEY.json languages."""
    corpus, _ = scored
    out, report = balanced
    metadata = load_metadata()
    unreadable = {r["key"] for r in pq.read_table(os.path.join(out, "decisions")).to_pylist()
                  if r["stage"] in ("read", "decode")}

    def count(tars):
        counts: dict[str, Counter] = {}
        for tar in tars:
            for group in iter_tar_groups(tar):
                meta = json.loads(group.fields["json"])
                language = metadata.list_language(meta.get("language"))
                if group.key in unreadable or language is None:
                    continue
                counts.setdefault(language, Counter()).update(
                    metadata.match(group.fields["txt"].decode(), meta.get("language")))
        return counts

    direct_input = count(sorted(glob.glob(os.path.join(corpus, "*.tar"))))
    direct_kept = count(sorted(glob.glob(os.path.join(out, "shards", "*.tar"))))
    languages = report["coverage"]["languages"]
    assert len(languages) == 12
    for language, audit in languages.items():
        table = audit["entries"]
        assert {e: c["input"] for e, c in table.items() if c["input"]} == dict(direct_input[language])
        assert {e: c["kept"] for e, c in table.items() if c["kept"]} == dict(direct_kept.get(language, {}))
        assert audit["lost"] == [e for e in table if table[e]["input"] and not table[e]["kept"]]
        # the audit's caps are the ones the run drew with (recorded on each balanced_out row)
    rows = pq.read_table(os.path.join(out, "decisions")).to_pylist()
    for r in rows:
        if r["reason"] == "balanced_out":
            assert r["balance_cap"] == languages[metadata.list_language(r["language"])]["cap"]


def test_balance_metadata_errors_before_any_work(tmp_path, capsys):
    empty = tmp_path / "lists"
    empty.mkdir()
    code = run.main(["--pipeline", "laion_filter", "--output", str(tmp_path / "out"),
                     "--set", "balance.enabled=true", "--set", f"balance.metadata={empty}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "balance.metadata" in err[0] and "no metadata files" in err[0]
    assert not (tmp_path / "out" / "sample_corpus").exists()


def test_skewed_corpus_has_every_metadata_language_and_a_long_tail(scored):
    corpus, _ = scored
    languages, shapes = Counter(), Counter()
    for tar in sorted(glob.glob(os.path.join(corpus, "*.tar"))):
        for group in iter_tar_groups(tar):
            languages[json.loads(group.fields["json"])["language"]] += 1
    for row in pq.read_table(os.path.join(corpus, "ground_truth.parquet")).to_pylist():
        shapes.update(g["shape"] for g in json.loads(row["scene"]))
    assert set(languages) == set(synth.ALL_LANGUAGES) == set(load_metadata().languages)
    assert languages.most_common(1)[0][0] == "en" and languages["en"] > 0.35 * sum(languages.values())
    assert shapes["circle"] > 5 * shapes["cross"]
    assert PIPELINES["laion_filter"].schema["sample_corpus.mix"].choices == synth.MIXES
