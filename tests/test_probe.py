"""Learned filters on stored embeddings (curate/probe.py): heads, layouts, train and score commands."""
import json
import os

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate import probe, run, synth


def write_store(root, parts, dim=32, seed=0, text_dim=None):
    """A clip-retrieval folder of random unit embeddings with a planted direction: label 1 where the
    image embedding leans along ``u``, the text embedding along ``v``. Returns (labels, u, v)."""
    rng = np.random.default_rng(seed)
    text_dim = text_dim or dim
    u, v = rng.normal(size=dim), rng.normal(size=text_dim)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    labels, index = {}, 0
    for sub in ("img_emb", "text_emb", "metadata"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for part, n in enumerate(parts):
        y = rng.integers(0, 2, n)
        img = rng.normal(size=(n, dim)) + np.outer(2 * y - 1, u) * 1.5
        txt = rng.normal(size=(n, text_dim)) + np.outer(rng.integers(0, 2, n) * 2 - 1, v) * 1.5
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        np.save(os.path.join(root, "img_emb", f"img_emb_{part}.npy"), img.astype(np.float16))
        np.save(os.path.join(root, "text_emb", f"text_emb_{part}.npy"), txt.astype(np.float16))
        keys = [f"{index + i:09d}" for i in range(n)]
        index += n
        pq.write_table(pa.table({"key": keys, "source_index": pa.array(range(n), pa.int64())}),
                       os.path.join(root, "metadata", f"metadata_{part}.parquet"))
        labels |= dict(zip(keys, y.tolist()))
    return labels, u, v


def write_labels(path, labels):
    if path.endswith(".csv"):
        with open(path, "w") as f:
            f.write("key,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    else:
        pq.write_table(pa.table({"key": list(labels), "label": [bool(v) for v in labels.values()]}), path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("run") / "embeddings")
    labels, u, v = write_store(root, [150, 0, 250])  # an empty part too
    return root, labels


def test_train_and_score_commands_on_a_planted_direction(store, tmp_path, capsys):
    root, labels = store
    labelled = dict(list(labels.items())[::2])  # half the rows are labelled
    table = write_labels(str(tmp_path / "labels.csv"), labelled)
    head_path = str(tmp_path / "lean.pt")
    assert probe.main(["train", "--embeddings", os.path.dirname(root), "--labels", table, "--out", head_path,
                       "--seed", "1"]) == 0
    out = capsys.readouterr().out
    sidecar = json.load(open(tmp_path / "lean.json"))
    print(out)
    assert sidecar["kind"] == "linear" and sidecar["target"] == "image" and sidecar["dims"] == {"image": 32}
    assert sidecar["output"] == "probability" and sidecar["train_rows"] + sidecar["held_out_rows"] == 200
    assert sidecar["auc"] > 0.95 and f"held-out AUC {sidecar['auc']:.4f}" in out
    assert set(torch.load(head_path, weights_only=True)) == {"0.weight", "0.bias"}

    scores = str(tmp_path / "scores.parquet")
    assert probe.main(["score", "--embeddings", root, "--head", head_path, "--out", scores]) == 0
    rows = pq.read_table(scores).to_pylist()
    assert [r["key"] for r in rows] == list(labels) and {r["shard_index"] for r in rows} == {0, 2}
    # unlabelled rows are separated as well as the labelled ones
    unlabelled = [r for r in rows if r["key"] not in labelled]
    assert probe.auc(np.array([r["score"] for r in unlabelled]), np.array([labels[r["key"]] for r in unlabelled])) > 0.95
    assert all((r["reason"] == "probe:lean") == (r["score"] < sidecar["threshold"]) for r in rows)
    head = probe.load_head(head_path)
    part = probe.read_part(root, 2)
    np.testing.assert_array_equal(head.score(part.image), [r["score"] for r in rows[150:]])

    csv_out = str(tmp_path / "scores.csv")
    assert probe.main(["score", "--embeddings", root, "--head", head_path, "--out", csv_out, "--threshold", "2"]) == 0
    assert "400 of 400 would be dropped" in capsys.readouterr().out


@pytest.mark.parametrize("kind,target", [("mlp", "image"), ("linear", "both"), ("mlp", "text")])
def test_other_kinds_and_targets(store, tmp_path, kind, target):
    root, labels = store
    result = probe.train(root, labels, kind=kind, target=target, holdout=0.25, seed=0, keep="below", name="x")
    head = result.head
    assert head.kind == kind and head.target == target and result.held_out == 100
    if target == "text":  # the label lives in the image embedding: text carries nothing
        assert 0.3 < result.auc < 0.7
    else:
        assert result.auc > 0.95
    path = str(tmp_path / "h.pt")
    probe.save_head(head, path)
    loaded = probe.load_head(path)
    part = probe.read_part(root, 0)
    np.testing.assert_allclose(loaded.score(part.image, part.text), head.score(part.image, part.text))
    assert loaded.keep == "below" and loaded.reason(head.threshold + 0.01) == "probe:x"
    assert loaded.reason(head.threshold - 0.01) is None


def aesthetic_mlp(dim=768):
    """improved-aesthetic-predictor's MLP exactly as its simple_inference.py defines it."""
    class MLP(torch.nn.Module):
        def __init__(self, input_size):
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)
    return MLP(dim)


def test_aesthetic_predictor_layout(tmp_path):
    torch.manual_seed(0)
    model = aesthetic_mlp().eval()
    path = str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    torch.save(model.state_dict(), path)  # no sidecar: recognised by its keys
    head = probe.load_head(path, threshold=5.0)
    assert head.kind == "aesthetic" and head.dims == {"image": 768} and head.output == "raw"
    assert head.name == "sac_logos_ava1_l14_linearMSE"
    emb = np.random.default_rng(0).normal(size=(20, 768)).astype(np.float16)
    x = emb.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(head.score(emb), expected, rtol=1e-4, atol=1e-5)
    assert len(probe.compose(head.layers)) == 1  # no activation: evaluated as one 768 -> 1 product
    assert head.reason(4.9) == "probe:sac_logos_ava1_l14_linearMSE" and head.reason(5.1) is None
    # the state dict written back loads into the original module unchanged
    aesthetic_mlp().load_state_dict(head.state_dict(), strict=True)

    store = str(tmp_path / "emb")
    write_store(store, [10], dim=64)
    with pytest.raises(ValueError) as err:
        list(probe.score_store(head, store))
    assert str(err.value).count("\n") == 0
    assert "takes 768-d image embeddings, but the store holds 64-d ones" in str(err.value)
    assert probe.main(["score", "--embeddings", store, "--head", path]) == 2


def test_bare_linear_and_bad_layouts(tmp_path):
    lin = torch.nn.Linear(16, 1)
    path = str(tmp_path / "lin.pth")
    torch.save(lin.state_dict(), path)
    head = probe.load_head(path)
    x = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with torch.no_grad():
        np.testing.assert_allclose(head.score(x), lin(torch.from_numpy(x))[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert head.threshold is None and head.reason(-100.0) is None  # no threshold: scores only
    torch.save({"fc.weight": torch.zeros(1, 4)}, path)
    with pytest.raises(ValueError, match="unrecognised head layout"):
        probe.load_head(path)


def test_auc_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: ties across classes
    assert probe.auc(s, y) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert probe.youden_threshold(np.array([0.1, 0.3, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.35
    assert probe.youden_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.8  # tie: higher


def test_label_table_errors(store, tmp_path):
    root, labels = store
    bad = tmp_path / "bad.csv"
    bad.write_text("key,label\n000000001,2\n")
    with pytest.raises(ValueError, match="labels are 0/1 or false/true"):
        probe.read_labels(str(bad))
    bad.write_text("key,label\n000000001,1\n000000001,0\n")
    with pytest.raises(ValueError, match="labelled both 0 and 1"):
        probe.read_labels(str(bad))
    bad.write_text("id,label\n1,1\n")
    with pytest.raises(ValueError, match="lacks column"):
        probe.read_labels(str(bad))
    table = write_labels(str(tmp_path / "l.parquet"), {"000000001": 1, "nowhere": 0, "000000002": 0, "000000003": 1})
    assert probe.read_labels(table) == {"000000001": 1, "nowhere": 0, "000000002": 0, "000000003": 1}
    with pytest.raises(ValueError, match="none of the 1 labelled keys"):
        probe.train(root, {"nowhere": 1})
    with pytest.raises(ValueError, match="needs both labels"):
        probe.train(root, {"000000001": 1, "000000002": 1})
    with pytest.raises(ValueError, match="no stored embeddings"):
        probe.train(str(tmp_path), labels)


def test_probe_on_the_score_pipelines_embeddings(tmp_path, monkeypatch):
    """The demo scorer's stored image embeddings, labels from the corpus's ground truth (a red object
    in the scene): a few hundred labels make a filter. Scoring loads no CLIP model."""
    corpus, scored = str(tmp_path / "corpus"), str(tmp_path / "scored")
    truth = synth.generate(corpus, 120, seed=5, noise=0.0, shard_size=60)
    run.run(["--pipeline", "score", "--input", corpus, "--output", scored])
    labels = {r["key"]: int(any(g["colour"] == "red" for g in json.loads(r["scene"])))
              for r in pq.read_table(truth).to_pylist()}
    table = write_labels(str(tmp_path / "red.csv"), labels)
    head_path = str(tmp_path / "red.pt")
    assert probe.main(["train", "--embeddings", scored, "--labels", table, "--out", head_path]) == 0
    sidecar = json.load(open(tmp_path / "red.json"))
    print(f"held-out AUC {sidecar['auc']:.4f} ({sidecar['held_out_rows']} held out, {sidecar['positives']} positive)")
    assert sidecar["auc"] >= 0.95 and sidecar["dims"] == {"image": 64}

    def no_model(*args, **kwargs):
        raise AssertionError("scoring with a probe loaded a CLIP model")
    for factory in ("create_model", "create_model_and_transforms", "create_model_from_pretrained"):
        monkeypatch.setattr(open_clip, factory, no_model)
    scores = str(tmp_path / "s.parquet")
    assert probe.main(["score", "--embeddings", scored, "--head", head_path, "--out", scores]) == 0
    assert pq.read_table(scores).num_rows == 120


def test_foreign_head_files_explicit_null_threshold_and_missing_out_folder(tmp_path, capsys):
    """Found by trying the tool as a new user: a text file given as a head, `threshold: null` in a
    config, and an --out folder that does not exist."""
    from curate.pipelines.probes import load_heads

    text = tmp_path / "notpt.pt"
    text.write_text("not a state dict\n")
    with pytest.raises(ValueError, match="not a PyTorch state dict") as e:
        probe.load_head(str(text))
    assert "\n" not in str(e.value)
    lin = torch.nn.Linear(8, 1)
    path = str(tmp_path / "h.pt")
    probe.save_head(probe.head_from_state_dict(lin.state_dict(), name="h", threshold=0.25), path)
    assert load_heads({"probes": [{"path": path}]})[0].threshold == 0.25  # absent: the sidecar's
    assert load_heads({"probes": [{"path": path, "threshold": None}]})[0].threshold is None  # null: score only
    assert probe.main(["score", "--embeddings", str(tmp_path), "--head", path,
                       "--out", str(tmp_path / "nodir" / "s.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
