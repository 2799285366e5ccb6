"""The built-in sample corpus: img2dataset layout, determinism, and truthful noise labels."""
import glob
import hashlib
import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import synth
from curate.io import iter_tar_samples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    synth.generate(out, 600, seed=11, noise=0.5, shard_size=250)
    return out


def samples(out):
    return {k: f for p in sorted(glob.glob(os.path.join(out, "*.tar"))) for k, f in iter_tar_samples(p)}


def truth(out):
    return {r["key"]: r for r in pq.read_table(os.path.join(out, "ground_truth.parquet")).to_pylist()}


def test_img2dataset_layout(corpus):
    names = sorted(os.listdir(corpus))
    assert names == ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar",
                     "00001_stats.json", "00002.parquet", "00002.tar", "00002_stats.json", "ground_truth.parquet"]
    table = pq.read_table(os.path.join(corpus, "00000.parquet")).to_pylist()
    assert len(table) == 250 and {"key", "url", "caption", "status", "error_message", "width", "height"} <= set(table[0])
    assert json.load(open(os.path.join(corpus, "00002_stats.json")))["count"] == 100
    s = samples(corpus)
    assert len(s) == 600
    assert all(set(f) == {"jpg", "txt", "json"} and "." not in k for k, f in s.items())


def test_deterministic_for_a_seed(corpus, tmp_path):
    synth.generate(str(tmp_path), 600, seed=11, noise=0.5, shard_size=250, processes=2)
    for name in ("00000.tar", "00001.tar", "00002.tar", "ground_truth.parquet"):
        a = open(os.path.join(corpus, name), "rb").read()
        b = open(os.path.join(tmp_path, name), "rb").read()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), name


def test_other_seed_differs(corpus, tmp_path):
    synth.generate(str(tmp_path), 50, seed=12, noise=0.5)
    assert samples(str(tmp_path))["000000000"]["jpg"] != samples(corpus)["000000000"]["jpg"]


def test_ground_truth_stays_out_of_the_shards(corpus):
    for fields in samples(corpus).values():
        meta = json.loads(fields["json"])
        assert "kind" not in meta and "original_key" not in meta
    assert not any("ground_truth" in n for p in glob.glob(os.path.join(corpus, "*.tar"))
                   for n in __import__("tarfile").open(p).getnames())


def test_languages_recorded_including_non_latin(corpus):
    langs = {json.loads(f["json"])["language"] for f in samples(corpus).values()}
    assert langs == set(synth.LANGUAGES) and "ru" in langs
    ru = [f["txt"].decode() for f in samples(corpus).values() if json.loads(f["json"])["language"] == "ru"]
    assert any("\u0400" <= ch <= "\u04ff" for ch in ru[0])  # Cyrillic


def test_noise_labels_are_true(corpus):
    s, t = samples(corpus), truth(corpus)
    kinds = {r["kind"] for r in t.values()}
    assert kinds == {"clean", *synth.NOISE_KINDS}
    for key, row in t.items():
        data, caption = s[key]["jpg"], s[key]["txt"].decode()
        kind = row["kind"]
        if kind == "exact_duplicate":
            assert data == s[row["original_key"]]["jpg"]
        elif kind == "near_duplicate":
            assert data != s[row["original_key"]]["jpg"]
            assert t[row["original_key"]]["scene"] == row["scene"]
        elif kind == "mismatched_caption":
            assert caption == s[row["original_key"]]["txt"].decode()
            assert t[row["original_key"]]["scene"] != row["scene"]
        elif kind == "small_image":
            assert min(Image.open(io.BytesIO(data)).size) < 200
        elif kind == "extreme_aspect":
            w, h = Image.open(io.BytesIO(data)).size
            assert max(w, h) > 3 * min(w, h)
        elif kind == "empty_caption":
            assert caption.strip() == ""
        elif kind in ("corrupt_image", "truncated_image"):
            with pytest.raises((OSError, SyntaxError)):  # PIL: unidentified, truncated or broken data
                Image.open(io.BytesIO(data)).load()
        elif kind == "clean":
            im = Image.open(io.BytesIO(data))
            im.load()
            assert min(im.size) >= 200 and len(caption.split()) >= 3
        if kind in ("exact_duplicate", "near_duplicate", "mismatched_caption"):
            assert t[row["original_key"]]["kind"] == "clean"


def test_noise_fraction_is_configurable(tmp_path):
    synth.generate(str(tmp_path), 300, seed=1, noise=0.0)
    assert {r["kind"] for r in truth(str(tmp_path)).values()} == {"clean"}


def test_cli(tmp_path, capsys):
    assert synth.main(["--out", str(tmp_path), "--samples", "20", "--seed", "3", "--processes", "1"]) == 0
    assert "wrote 20 samples" in capsys.readouterr().out
