"""python -m curate.inspect OUT KEY: one sample's story, read back from a laion_filter run on the tiny
corpus of tests/report_corpus.py (a duplicate group, a decode failure, a low score)."""
import io
import os

import pyarrow.parquet as pq
import pytest
import report_corpus
from PIL import Image

from curate import inspect, run
from curate.io import iter_tar_samples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny"))
    raw = report_corpus.write(folder)
    out = os.path.join(folder, "out")
    run.run(["--pipeline", "laion_filter", "--input", raw, "--output", out])
    decisions = {d["key"]: d for d in pq.read_table(os.path.join(out, "decisions")).to_pylist()}
    inputs = dict(iter_tar_samples(os.path.join(raw, "00000.tar")))
    return out, decisions, inputs


def story(capsys, *argv) -> tuple[int, str]:
    status = inspect.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_a_duplicate_names_the_sample_kept_instead_and_its_group(tiny, capsys):
    out, decisions, _ = tiny
    dropped = next(k for k in ("en-0", *report_corpus.COPIES) if not decisions[k]["kept"])
    row = decisions[dropped]
    status, text = story(capsys, out, dropped)
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == f"{dropped}: dropped: exact_duplicate (stage exact_dedup)"
    assert f"{row['source_shard']} #{row['source_index']}" in lines[1]
    assert f"  sha256            {row['sha256']}" in lines and f"  dup_group         {row['dup_group']}" in lines
    assert f"kept instead: {row['kept_instead']}: kept (stage write)" in text
    group = text.split("group of ")[1].splitlines()
    assert group[0].endswith(": 3 samples") and f"{dropped} " in next(line for line in group if "<- this sample" in line)


def test_a_kept_sample_says_where_it_was_written_and_whom_it_replaced(tiny, capsys):
    out, decisions, _ = tiny
    kept = decisions[report_corpus.COPIES[0]]["kept_instead"]
    status, text = story(capsys, out, kept)
    assert status == 0 and text.startswith(f"{kept}: kept (stage write)")
    tar, position = text.split("curated as        ")[1].split()[:2]
    rows = pq.read_table(tar[:-len(".tar")] + ".parquet").column("key").to_pylist()
    assert rows[int(position.lstrip("#"))] == kept
    assert "kept   <- this sample" in text and text.count("exact_duplicate") == 2


def test_a_decode_failure_and_a_low_score_show_their_values_and_settings(tiny, capsys):
    out, decisions, _ = tiny
    status, text = story(capsys, out, report_corpus.BROKEN)
    assert status == 0 and "dropped: unreadable_image (stage decode)" in text
    assert f"  detail            {decisions[report_corpus.BROKEN]['detail']}" in text
    status, text = story(capsys, out, report_corpus.SWAPPED)
    row = decisions[report_corpus.SWAPPED]
    assert "dropped: low_clip_score (stage clip_score)" in text
    assert f"  clip_score        {row['clip_score']:.4f}".rstrip("0") in text
    assert 'rule settings     select.mode="threshold", select.clip_threshold=' in text


def test_image_is_written_as_the_input_holds_it(tiny, capsys, tmp_path):
    out, _, inputs = tiny
    path = str(tmp_path / "not" / "made" / "en-1.jpg")  # the folder is made
    status, text = story(capsys, out, "en-1", "--image", path)
    assert status == 0 and f"to {path}" in text
    with open(path, "rb") as f:
        data = f.read()
    assert data == inputs["en-1"]["jpg"] and Image.open(io.BytesIO(data)).size[0] > 0


def test_an_unknown_key_or_folder_is_one_line(tiny, capsys, tmp_path):
    out, _, _ = tiny
    assert story(capsys, out, "nope") == (1, f"error: no decision for key 'nope' in {out}/decisions\n")
    status, text = story(capsys, str(tmp_path), "en-1")
    assert status == 1 and text.count("\n") == 1 and "holds no decisions" in text
