"""Conservation is checked, not assumed (issue 14 item 2): the samples counted where each input
shard is read travel to its decisions file, and the report compares them with the rows."""
import glob
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from curate.pipelines.laion_filter import BasicFilters

from curate import run, synth
from curate.decisions import InputCount, recorded_count, write_decision_file
from curate.io import iter_tar_groups
from curate.report import DecisionFile, conservation_problems, count_decisions

SAMPLES, PER_SHARD = 24, 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(out, SAMPLES, seed=3, noise=0.3, shard_size=PER_SHARD)
    return out


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("curated"))
    return out, run.run(["--pipeline", "laion_filter", "--input", corpus, "--output", out])


def test_a_run_records_what_each_shard_read_and_checks_it(corpus, curated):
    out, report = curated
    tars = sorted(glob.glob(os.path.join(corpus, "*.tar")))
    recorded = [recorded_count(p) for p in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet")))]
    # counted again here, as the reader groups members, from the raw tars
    assert recorded == [InputCount(i, sum(1 for _ in iter_tar_groups(t)), len(tars)) for i, t in enumerate(tars)]
    assert report["counts"]["conservation"] == {"input_read": SAMPLES, "files_checked": len(tars),
                                                "files_uncounted": [], "problems": []}
    assert report["counts"]["input"] == SAMPLES


def _rewrite_without_one_row(path):
    """The file as a lossy writer would leave it: one sample row gone, the recorded count kept."""
    table = pq.read_table(path)
    keep = [i for i, index in enumerate(table.column("source_index").to_pylist()) if index != 3]
    pq.write_table(table.take(keep), path)  # the schema, metadata included, stays as it was


def test_a_deleted_row_or_a_missing_file_is_found(curated, tmp_path):
    out, _report = curated
    decisions = str(tmp_path / "decisions")
    shutil.copytree(os.path.join(out, "decisions"), decisions)
    _rewrite_without_one_row(os.path.join(decisions, "00001.parquet"))
    os.remove(os.path.join(decisions, "00002.parquet"))
    problems = count_decisions(decisions)["conservation"]["problems"]
    assert problems == ["decisions/00001.parquet holds 7 sample rows for the 8 samples read from input shard 1",
                        "input shard 2 of 3 has no decisions file (00002.parquet)"]


def test_kept_rows_must_match_the_samples_written_into_shards(curated):
    out, report = curated
    with open(os.path.join(out, "shards", "sizes.json")) as f:
        written = sum(json.load(f).values())
    assert written == report["counts"]["kept"]
    problems = count_decisions(os.path.join(out, "decisions"), written + 1)["conservation"]["problems"]
    assert problems == [(f"{written} samples kept by the decisions, but {written + 1} written into the curated "
                         "shards (shards/sizes.json)")]


def test_a_step_that_swallows_a_sample_fails_the_run(corpus, tmp_path, monkeypatch, capsys):
    """A BasicFilters that loses one sample without a row: the run ends with status 1 and one line
    naming the shard and both counts, after the report (the evidence) is written."""
    original = BasicFilters.process

    def lossy(self, sample):
        if (sample.shard_index, sample.member_index) != (0, 1):
            yield from original(self, sample)

    monkeypatch.setattr(BasicFilters, "process", lossy)
    out = str(tmp_path / "out")
    assert run.main(["--pipeline", "laion_filter", "--input", corpus, "--output", out]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    line = "decisions/00000.parquet holds 7 sample rows for the 8 samples read from input shard 0"
    assert err == [f"error: samples lost: {line}"]
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["counts"]["conservation"]["problems"] == [line]


def test_ingest_rows_passed_on_must_be_read_from_the_raw_shard():
    """laion_filter on a URL table: ingest's file holds the failed rows and passes the downloads on;
    the raw shard's reader must count exactly those."""
    ingest = DecisionFile("ingest-00000.parquet", 3, InputCount(0, 10, 1, passed_on=7))
    assert conservation_problems([ingest, DecisionFile("00000.parquet", 7, InputCount(0, 7, 1))]) == []
    assert conservation_problems([ingest, DecisionFile("00000.parquet", 6, InputCount(0, 6, 1))]) == [
        "ingest shard 0 downloaded 7 samples, but 6 were read from its raw shard"]
    assert conservation_problems([DecisionFile("ingest-00000.parquet", 3, InputCount(0, 9, 1, passed_on=7))]) == [
        "decisions/ingest-00000.parquet holds 3 sample rows + 7 passed on for the 9 samples read from input shard 0",
        "ingest shard 0 downloaded 7 samples, but decisions/00000.parquet does not count them"]


def test_a_file_without_a_count_is_listed_not_failed(tmp_path):
    """A reader that does not count (export's) leaves a file the report lists as unchecked."""
    row = {"key": "a", "source_shard": "s.tar", "source_index": 0, "kept": True, "reason": None, "stage": "export"}
    write_decision_file(str(tmp_path / "00000.parquet"), [row], None)
    conservation = count_decisions(str(tmp_path))["conservation"]
    assert conservation == {"input_read": 0, "files_checked": 0, "files_uncounted": ["00000.parquet"], "problems": []}
