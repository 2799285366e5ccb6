"""Decontamination: evaluation sets as embeddings, embedding folders or images; the drop rule."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate.filters import decontaminate
from curate.pipelines.dedup import embed_image_files
from PIL import Image

from curate import synth
from curate.models.clip import ScorerSpec


def unit_rows(n, d=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_npy_file_and_nearest_eval_item(tmp_path):
    e = unit_rows(5)
    np.save(tmp_path / "eval.npy", e)
    emb, names = decontaminate.load_eval_set(str(tmp_path / "eval.npy"))
    assert names == [f"row:{i}" for i in range(5)] and np.allclose(emb, e)
    best, sim = decontaminate.nearest_eval(e[3], emb)
    assert best == 3 and sim == 1.0 and decontaminate.is_contaminated(sim, 0.96)
    far = -e.sum(axis=0) / np.linalg.norm(e.sum(axis=0))
    assert not decontaminate.is_contaminated(decontaminate.nearest_eval(far, emb)[1], 0.96)


def test_clip_retrieval_folder_names_rows_by_key(tmp_path):
    for part, keys in ((0, ["a", "b"]), (1, ["c"])):
        os.makedirs(tmp_path / "img_emb", exist_ok=True)
        os.makedirs(tmp_path / "metadata", exist_ok=True)
        np.save(tmp_path / "img_emb" / f"img_emb_{part}.npy", unit_rows(len(keys), seed=part).astype(np.float16))
        pq.write_table(pa.table({"key": keys}), tmp_path / "metadata" / f"metadata_{part}.parquet")
    emb, names = decontaminate.load_eval_set(str(tmp_path))
    assert names == ["a", "b", "c"] and emb.shape == (3, 8) and emb.dtype == np.float32


def test_image_folder_is_embedded_by_the_scorer(tmp_path):
    """A copy of an evaluation image (re-encoded, resized) is within the threshold; another picture is not."""
    rng = np.random.default_rng(0)
    scenes = [synth.make_scene(rng) for _ in range(3)]
    imgs = [synth.render(g, (256, 256), rng) for g in scenes]
    os.makedirs(tmp_path / "eval" / "sub")
    imgs[0].save(tmp_path / "eval" / "a.png")
    imgs[1].save(tmp_path / "eval" / "sub" / "b.jpg", quality=90)
    imgs[0].resize((230, 230)).save(tmp_path / "copy.jpg", quality=70)
    imgs[2].save(tmp_path / "other.jpg")
    embed = embed_image_files(ScorerSpec())
    emb, names = decontaminate.load_eval_set(str(tmp_path / "eval"), embed)
    assert names == ["a.png", "sub/b.jpg"] and emb.shape[0] == 2
    copy, other = embed([str(tmp_path / "copy.jpg"), str(tmp_path / "other.jpg")])
    best, sim = decontaminate.nearest_eval(copy, emb)
    assert best == 0 and decontaminate.is_contaminated(sim, 0.96), sim
    assert not decontaminate.is_contaminated(decontaminate.nearest_eval(other, emb)[1], 0.96)


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "is neither a .npy file nor a folder"),
    (lambda p: os.makedirs(p), "holds no img_emb/\\*.npy and no image files"),
    (lambda p: np.save(p + ".npy", np.zeros(3)), "expected a 2-d array"),
])
def test_unreadable_eval_sets_get_one_line(tmp_path, setup, match):
    path = str(tmp_path / "eval")
    setup(path)
    target = path + ".npy" if "2-d" in match else path
    with pytest.raises(decontaminate.EvalSetError, match=match):
        decontaminate.load_eval_set(target)


def test_image_folder_without_scorer(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(decontaminate.EvalSetError, match="needs the scorer"):
        decontaminate.load_eval_set(str(tmp_path))


def test_eval_sets_are_read_through_fsspec(tmp_path):
    """Issue 14: eval-set paths go through curate.fs like every other path; here fsspec's memory://
    filesystem holds a .npy file, a clip-retrieval folder and an image folder, read as the same
    files on a local disk are."""
    from curate import fs

    root = "memory://decontaminate-evalsets"
    rng = np.random.default_rng(1)
    images = [synth.render(synth.make_scene(rng), (64, 64), rng) for _ in range(2)]
    e = unit_rows(3)
    for base in (str(tmp_path), root):
        for name, write in (("eval.npy", lambda f: np.save(f, e)),
                            ("emb/img_emb/img_emb_0.npy", lambda f: np.save(f, e.astype(np.float16))),
                            ("emb/metadata/metadata_0.parquet", lambda f: pq.write_table(pa.table({"key": ["a", "b", "c"]}), f)),
                            ("images/a.png", lambda f: images[0].save(f, format="PNG")),
                            ("images/sub/b.jpg", lambda f: images[1].save(f, format="JPEG", quality=90))):
            fs.makedirs(fs.dirname(fs.join(base, name)))
            with fs.open(fs.join(base, name), "wb") as f:
                write(f)
    try:
        embed = embed_image_files(ScorerSpec())
        for name, expect_names in (("eval.npy", ["row:0", "row:1", "row:2"]), ("emb", ["a", "b", "c"]),
                                   ("images", ["a.png", "sub/b.jpg"])):
            decontaminate.check_eval_set(fs.join(root, name))
            remote_emb, remote_names = decontaminate.load_eval_set(fs.join(root, name), embed)
            local_emb, local_names = decontaminate.load_eval_set(str(tmp_path / name), embed)
            assert remote_names == local_names == expect_names and np.array_equal(remote_emb, local_emb)
        with pytest.raises(decontaminate.EvalSetError, match="neither a .npy file nor a folder"):
            decontaminate.check_eval_set(fs.join(root, "missing"))
    finally:
        fs.remove(root)
