"""Foreign test corpora (real photo quadrants, random colour fields): shape, truth, layout, determinism."""
import glob
import hashlib
import io
import json
import os
from collections import Counter

import pytest
from curate.filters.basic import (
    boilerplate_caption,
    caption_too_short,
    extreme_aspect_ratio,
    image_too_small,
)
from PIL import Image

from curate import photo_corpus as pc
from curate.io import iter_tar_samples

pytest.importorskip("skimage", reason="the photo corpus needs the test extra (scikit-image)")
pytest.importorskip("sklearn", reason="the photo corpus needs the test extra (scikit-learn)")


def build(tmp_path_factory, name, fn, **kwargs):
    root = tmp_path_factory.mktemp(name)
    truth = fn(str(root / "shards"), **kwargs)
    return {"root": root, "shards": str(root / "shards"), "truth": truth}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return build(tmp_path_factory, "photos", pc.photo_corpus, seed=3)


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    return build(tmp_path_factory, "fields", pc.random_fields_corpus, samples=200, seed=3)


def samples(shards):
    return {k: f for p in sorted(glob.glob(os.path.join(shards, "*.tar"))) for k, f in iter_tar_samples(p)}


def test_real_photos_ship_in_the_wheels():
    photos = pc.real_photos()
    names = {p.name for p in photos}
    assert {"skimage/astronaut.png", "skimage/coffee.png", "sklearn/china.jpg", "sklearn/flower.jpg"} <= names
    assert all(os.path.isfile(p.path) for p in photos)
    assert min(min(p.load().size) for p in photos) >= 150


def test_photo_corpus_shape(photos):
    truth, rows = photos["truth"], photos["truth"]["samples"]
    distinct = 4 * len(pc.real_photos())
    assert 60 <= distinct <= 80
    assert truth["counts"] == {"distinct": distinct, "exact_copy": 12, "near_copy": 28}
    assert Counter(r["kind"] for r in rows.values()) == truth["counts"]
    near = [r for r in rows.values() if r["kind"] == "near_copy"]
    assert Counter(r["transform"] for r in near) == {t: 7 for t in pc.PHOTO_TRANSFORMS}
    copies = [r for r in rows.values() if r["kind"] != "distinct"]
    assert len({r["original"] for r in copies}) == 40  # each copy of a different original


@pytest.mark.parametrize("corpus", ["photos", "fields"])
def test_truth_matches_shards(corpus, request):
    c = request.getfixturevalue(corpus)
    rows, s = c["truth"]["samples"], samples(c["shards"])
    assert sorted(os.listdir(c["shards"])) == ["00000.tar", "00001.tar"]
    assert set(s) == set(rows)
    assert c["truth"]["shards"] == {"00000.tar": (len(s) + 1) // 2, "00001.tar": len(s) // 2}
    assert json.loads((c["root"] / "shards.truth.json").read_text()) == c["truth"]
    keys = sorted(s)
    for i, key in enumerate(keys):
        r = rows[key]
        assert key.isdigit() and set(s[key]) == {"jpg", "txt", "json"}
        assert json.loads(s[key]["json"])["caption"] == s[key]["txt"].decode()
        if r["kind"] == "distinct":
            assert r["original"] is None and r["transform"] is None
            continue
        original = rows[r["original"]]
        assert original["kind"] == "distinct" and original["source"] == r["source"]
        assert (r["transform"] is None) == (r["kind"] == "exact_copy")
        same = s[key]["jpg"] == s[r["original"]]["jpg"]
        assert same == (r["kind"] == "exact_copy")
        # Shuffled apart: no copy sits next to its original.
        neighbours = {keys[j] for j in (i - 1, i + 1) if 0 <= j < len(keys)}
        assert r["original"] not in neighbours
    # The shards hide the truth: no json member names a kind or an original.
    assert not any(b"copy" in f["json"] or b"original\"" in f["json"] for f in s.values())


@pytest.mark.parametrize("corpus", ["photos", "fields"])
def test_every_sample_passes_the_basic_filter(corpus, request):
    """Copies must reach the duplicate step: DataComp's basic filter keeps every sample."""
    for key, f in samples(request.getfixturevalue(corpus)["shards"]).items():
        caption = f["txt"].decode()
        with Image.open(io.BytesIO(f["jpg"])) as im:
            assert im.format == "JPEG"
            size = im.size
        assert not (caption_too_short(caption) or boilerplate_caption(caption)), (key, caption)
        assert not (image_too_small(*size) or extreme_aspect_ratio(*size)), (key, size)


def test_near_copy_captions_vary_exact_copies_repeat(photos):
    rows, s = photos["truth"]["samples"], samples(photos["shards"])
    for key, r in rows.items():
        if r["kind"] != "distinct":
            assert (s[key]["txt"] == s[r["original"]]["txt"]) == (r["kind"] == "exact_copy")


def test_fields_shape(fields):
    truth, rows = fields["truth"], fields["truth"]["samples"]
    assert truth["counts"] == {"distinct": 168, "exact_copy": 16, "near_copy": 16}
    assert {r["transform"] for r in rows.values() if r["kind"] == "near_copy"} == {pc.FIELD_TRANSFORM}
    s = samples(fields["shards"])
    distinct = [hashlib.sha256(s[k]["jpg"]).hexdigest() for k, r in rows.items() if r["kind"] == "distinct"]
    assert len(set(distinct)) == len(distinct)


def test_shards_read_with_webdataset(photos):
    import webdataset as wds

    urls = sorted(glob.glob(os.path.join(photos["shards"], "*.tar")))
    read = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [r["__key__"] for r in read] == sorted(photos["truth"]["samples"])
    assert all(isinstance(r["jpg"], Image.Image) and r["txt"] and r["json"]["key"] == r["__key__"] for r in read)


@pytest.mark.parametrize("fn, kwargs", [(pc.photo_corpus, {}), (pc.random_fields_corpus, {"samples": 120})])
def test_deterministic(tmp_path, fn, kwargs):
    def tar_bytes(name, seed):
        fn(str(tmp_path / name / "shards"), seed=seed, **kwargs)
        return [open(p, "rb").read() for p in sorted(glob.glob(str(tmp_path / name / "shards" / "*.tar")))]

    first = tar_bytes("a", 5)
    assert first == tar_bytes("b", 5)
    assert (tmp_path / "a" / "shards.truth.json").read_bytes() == (tmp_path / "b" / "shards.truth.json").read_bytes()
    assert first != tar_bytes("c", 6)


def test_truth_stays_outside_the_shard_folder(tmp_path):
    shards = tmp_path / "shards"
    pc.random_fields_corpus(str(shards), samples=30, truth_path=str(tmp_path / "elsewhere" / "t.json"))
    assert (tmp_path / "elsewhere" / "t.json").is_file()
    assert sorted(os.listdir(shards)) == ["00000.tar", "00001.tar"]
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "shards"]
    with pytest.raises(ValueError, match="must not lie inside"):
        pc.random_fields_corpus(str(shards), samples=30, truth_path=str(shards / "truth.json"))


def test_cli(tmp_path, capsys):
    assert pc.main([str(tmp_path / "out" / "shards"), "--kind", "fields", "--samples", "50"]) == 0
    assert "50 samples (42 distinct, 4 exact copies, 4 near copies)" in capsys.readouterr().out
    assert (tmp_path / "out" / "shards.truth.json").is_file()
