"""The score pipeline: embeddings in clip-retrieval's layout, computed once and reused without the model."""
import glob
import io
import os

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curate import run, synth
from curate.io import iter_tar_samples
from curate.models import clip

SAMPLES = 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(out, SAMPLES, seed=9, noise=0.3, shard_size=150)
    return out


def score(corpus, out, *extra):
    return run.run(["--pipeline", "score", "--input", corpus, "--output", str(out), *extra])


@pytest.fixture(scope="module")
def scored(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored")
    report = score(corpus, out)
    return str(out), report


def metadata(out):
    parts = sorted(glob.glob(os.path.join(out, "embeddings", "metadata", "metadata_*.parquet")))
    return [row for p in parts for row in pq.read_table(p).to_pylist()]


def test_clip_retrieval_layout(scored):
    out, report = scored
    emb = os.path.join(out, "embeddings")
    assert sorted(os.listdir(emb)) == ["img_emb", "metadata", "text_emb"]
    total = 0
    for part in range(3):
        img = np.load(os.path.join(emb, "img_emb", f"img_emb_{part}.npy"))
        txt = np.load(os.path.join(emb, "text_emb", f"text_emb_{part}.npy"))
        meta = pq.read_table(os.path.join(emb, "metadata", f"metadata_{part}.parquet")).to_pylist()
        assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (len(meta), 64)
        np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(txt.astype(np.float32), axis=1), 1, atol=2e-3)
        assert [m["source_index"] for m in meta] == sorted(m["source_index"] for m in meta)
        # the stored score is the cosine of the stored embeddings
        cos = (img.astype(np.float32) * txt.astype(np.float32)).sum(1)
        np.testing.assert_allclose(cos, [m["clip_score"] for m in meta], atol=2e-3)
        total += len(meta)
    c = report["counts"]
    assert c["input"] == SAMPLES and c["kept"] == total and c["kept"] + c["dropped"] == SAMPLES
    assert set(c["dropped_by_stage"]) == {"decode"}


def test_scores_match_a_direct_open_clip_computation(scored, corpus):
    out, _ = scored
    model, _, preprocess = open_clip.create_model_and_transforms(clip.DEMO_MODEL, pretrained=clip.DEMO_CHECKPOINT)
    tokenizer = open_clip.get_tokenizer(clip.DEMO_MODEL)
    stored = {m["key"]: m["clip_score"] for m in metadata(out)}
    keys, images, captions = [], [], []
    for key, fields in iter_tar_samples(os.path.join(corpus, "00000.tar")):
        if key in stored:
            keys.append(key)
            images.append(preprocess(Image.open(io.BytesIO(fields["jpg"])).convert("RGB")))
            captions.append(fields["txt"].decode())
    with torch.no_grad():
        img = model.encode_image(torch.stack(images), normalize=True)
        txt = model.encode_text(tokenizer(captions), normalize=True)
    direct = (img * txt).sum(1).numpy()
    np.testing.assert_allclose(direct, [stored[k] for k in keys], atol=1e-3)


def test_batch_size_never_changes_a_score(scored, corpus, tmp_path):
    out, _ = scored
    reference = {m["key"]: m["clip_score"] for m in metadata(out)}  # batch size 64
    for bs in (1, 7):
        score(corpus, tmp_path / f"bs{bs}", "--set", f"scorer.batch_size={bs}")
        got = {m["key"]: m["clip_score"] for m in metadata(str(tmp_path / f"bs{bs}"))}
        assert got.keys() == reference.keys()
        assert max(abs(got[k] - reference[k]) for k in got) <= 1e-4, bs


def test_reselection_reuses_scores_without_the_model(scored, corpus, tmp_path, monkeypatch):
    out, _ = scored

    def no_model(*_a, **_k):
        raise AssertionError("the model was used")

    monkeypatch.setattr(clip, "load_model", no_model)
    monkeypatch.setattr(clip, "encode", no_model)
    strict = run.run(["--pipeline", "laion_filter", "--set", f"scores={out}", "--output", str(tmp_path / "a"),
                      "--set", "select.clip_threshold=0.8"])
    loose = run.run(["--pipeline", "laion_filter", "--set", f"scores={out}", "--output", str(tmp_path / "b"),
                     "--set", "select.clip_threshold=0.2"])
    assert strict["counts"]["input"] == loose["counts"]["input"] == SAMPLES
    assert strict["counts"]["kept"] < loose["counts"]["kept"]
    assert strict["counts"]["dropped_by_reason"]["low_clip_score"] > loose["counts"]["dropped_by_reason"].get(
        "low_clip_score", 0)


def test_reselection_decides_exactly_as_a_direct_run(scored, corpus, tmp_path):
    out, _ = scored
    run.run(["--pipeline", "laion_filter", "--input", corpus, "--output", str(tmp_path / "direct")])
    run.run(["--pipeline", "laion_filter", "--set", f"scores={out}", "--output", str(tmp_path / "reused")])
    for sub in ("shards", "decisions"):
        names = sorted(os.listdir(tmp_path / "direct" / sub))
        assert names == sorted(os.listdir(tmp_path / "reused" / sub))
        for name in names:
            assert (tmp_path / "direct" / sub / name).read_bytes() == (tmp_path / "reused" / sub / name).read_bytes()


def test_scores_folder_without_scores_is_refused(tmp_path, capsys):
    assert run.main(["--pipeline", "laion_filter", "--set", f"scores={tmp_path}", "--output",
                     str(tmp_path / "o")]) == 2
    assert "no stored scores" in capsys.readouterr().err


def test_fraction_mode_keeps_the_top_share(scored, tmp_path):
    out, _ = scored
    report = run.run(["--pipeline", "laion_filter", "--set", f"scores={out}", "--output", str(tmp_path / "f"),
                      "--set", "select.mode=fraction", "--set", "select.fraction=0.5",
                      "--set", "dedup.near=false", "--set", "dedup.exact=false"])
    decisions = pq.read_table(str(tmp_path / "f" / "decisions")).to_pylist()
    ranked = [d for d in decisions if d["stage"] not in ("decode", "basic_filter")]
    kept = [d for d in ranked if d["kept"]]
    assert len(kept) == -(-len(ranked) // 2)
    cutoff = {d["clip_threshold"] for d in ranked if d["reason"] == "outside_top_fraction"}
    assert len(cutoff) == 1 and min(d["clip_score"] for d in kept) >= min(cutoff)
    assert {d["clip_threshold"] for d in kept} == cutoff  # kept rows name the cut too
    assert report["counts"]["dropped_by_reason"]["outside_top_fraction"] == len(ranked) - len(kept)


def test_language_mode_applies_each_language_threshold(scored, tmp_path):
    out, _ = scored
    run.run(["--pipeline", "laion_filter", "--set", f"scores={out}", "--output", str(tmp_path / "l"),
             "--set", "select.mode=language", "--set", "select.language_thresholds.ru=0.99"])
    decisions = pq.read_table(str(tmp_path / "l" / "decisions")).to_pylist()
    judged = [d for d in decisions if d["stage"] == "clip_score"]
    russian = [d["clip_threshold"] for d in judged if d["language"] == "ru"]
    assert russian and all(t == pytest.approx(0.99) for t in russian)
    assert not any(d["kept"] and d["language"] == "ru" for d in decisions)
    assert any(d["kept"] and d["language"] == "en" for d in decisions)
    assert all(d["clip_threshold"] == pytest.approx(0.6) for d in decisions if d["kept"])  # en and default: 0.6


def test_a_stored_score_reads_back_as_the_score_decided_on():
    """A resumed run takes scores from the float32 metadata column (curate.resume); for its decisions
    to be the uninterrupted run's, stable(float32(stable(x))) must be stable(x) for every score:
    checked for every 4-decimal value in [-1, 1] (cosines) and a margin beyond."""
    from curate.records import stable

    decided = [stable(k / 10_000) for k in range(-10_100, 10_101)]
    stored = np.array(decided, dtype=np.float32)   # metadata's clip_score column
    assert [stable(x) for x in stored.tolist()] == decided
