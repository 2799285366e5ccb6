"""curate.quality end to end at CI size: two subsets, one seed, a small budget; and its parts."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from curate import synth
from curate.quality import evalsets
from curate.quality.__main__ import main
from curate.quality.evaluate import discover

BOX = ["--pool-samples", "300", "--samples-seen", "256", "--seeds", "1", "--recipes", "curated",
       "--eval-images", "24", "--eval-pairs", "24"]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _json(path: str):
    return json.loads(_read(path))


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quality") / "q")
    assert main(["--out", out, *BOX]) == 0
    return out, _json(os.path.join(out, "results.json"))


def test_every_subset_trains_at_equal_samples_seen_and_every_checkpoint_is_evaluated(box):
    out, doc = box
    assert [r["subset"] for r in doc["runs"]] == ["raw", "curated"]
    names = {d["name"] for d in doc["datasets"]}
    assert names == {f"{t}_{lang}" for t in (*evalsets.TASKS, "retrieval") for lang in synth.LANGUAGES}
    for run in doc["runs"]:
        assert set(run["metrics"]) == names
        assert run["samples_seen"] == doc["settings"]["samples_seen_exact"] == 256
        log = _read(os.path.join(out, "runs", f"{run['subset']}-seed0.log"))
        assert "[256/256 (100%)]" in log  # open_clip_train's own count of what it trained on
    raw, curated = doc["summary"]["raw"], doc["summary"]["curated"]
    assert curated["unique_samples"] < raw["unique_samples"] <= 300
    sizes = _json(os.path.join(out, "subsets", "curated", "shards", "sizes.json"))
    assert curated["unique_samples"] == sum(sizes.values())


def test_results_files_are_written(box):
    out, _ = box
    table = _read(os.path.join(out, "results.md"))
    assert table.startswith("| subset | unique samples | samples seen | shape | colour | size | count | position |"
                            " retrieval R@1 | retrieval R@5 | mean | spread |")
    assert "| raw | " in table and "| curated | " in table
    with Image.open(os.path.join(out, "results.png")) as im:
        assert im.format == "PNG" and im.size[0] > 300
        low, high = im.convert("L").getextrema()
        assert high - low > 100  # bars and text, not a blank canvas


def test_evaluation_images_are_kept_out_of_every_subset(box):
    out, doc = box
    h = doc["hygiene"]
    assert h["eval_images"] == 24 + 24 * len(synth.LANGUAGES)
    near = h["pool_samples_near_an_eval_image"]
    assert doc["summary"]["raw"]["unique_samples"] == 300 - near  # copies of evaluation images leave the raw pool
    if near:
        raw = os.path.join(out, "subsets", "raw")
        keys = {m.name.split(".")[0] for tar in os.listdir(raw) for m in tarfile.open(os.path.join(raw, tar))}
        assert not keys & set(h["removed_from_raw"])
    report = _json(os.path.join(out, "subsets", "curated", "report.json"))
    assert report["config"]["decontaminate.eval_set"].endswith("eval_embeddings.npy")


def _direct_accuracy(checkpoint: str, dataset_dir: str) -> tuple[float, dict[str, float]]:
    """Zero-shot top-1 on one built-in set, and per class name, computed here without clip_benchmark."""
    import open_clip

    from curate.models.clip import TINY_MODEL, register_model_configs
    register_model_configs()
    model, _, transform = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=checkpoint)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    model.eval()
    classnames = _read(os.path.join(dataset_dir, "classnames.txt")).splitlines()
    images, labels = [], []
    with tarfile.open(os.path.join(dataset_dir, "test", "0.tar")) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    for name in sorted(n for n in members if n.endswith(".jpg")):
        images.append(transform(Image.open(io.BytesIO(members[name])).convert("RGB")))
        labels.append(int(members[name[:-4] + ".cls"]))
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack(images)), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(classnames)), dim=-1)
    pred, labels = (img @ txt.T).argmax(dim=1).numpy(), np.array(labels)
    per_class = {name: float(np.mean(pred[labels == i] == i)) for i, name in enumerate(classnames) if (labels == i).any()}
    return float(np.mean(pred == labels)), per_class


def test_reported_accuracy_equals_a_direct_zero_shot_computation(box):
    out, doc = box
    run = next(r for r in doc["runs"] if r["subset"] == "curated")
    checkpoint = os.path.join(out, "runs", "curated-seed0", "checkpoints", "epoch_1.pt")
    for name in ("colour_en", "shape_ru"):
        acc1, per_class = _direct_accuracy(checkpoint, os.path.join(out, "eval", name))
        assert run["metrics"][name]["acc1"] == pytest.approx(acc1, abs=1e-6)
        assert run["metrics"][name]["per_class_acc1"] == pytest.approx(per_class, abs=1e-6)


def test_clip_benchmarks_own_cli_reads_a_built_in_set_and_agrees(box, tmp_path):
    """clip_benchmark's CLI (its own loader, dataloader and retrieval metric) on retrieval_de with the
    curated checkpoint gives the recalls results.json holds. (Its classification path cannot run
    under NumPy 2: see curate/quality/evaluate.py.)"""
    import subprocess
    import sys
    out, doc = box
    checkpoint = os.path.join(out, "runs", "curated-seed0", "checkpoints", "epoch_1.pt")
    result = str(tmp_path / "cli.json")
    launch = ("from curate.models.clip import register_model_configs; register_model_configs(); "
              "import sys; from clip_benchmark.cli import main; sys.argv[0] = 'clip_benchmark'; main()")
    subprocess.run([sys.executable, "-c", launch, "eval", "--dataset", "wds/retrieval_de",
                    "--dataset_root", os.path.join(out, "eval", "retrieval_de"), "--model", "curate-tiny-64",
                    "--pretrained", checkpoint, "--task", "zeroshot_retrieval", "--recall_k", "1", "5",
                    "--no_amp", "--num_workers", "0", "--batch_size", "256", "--output", result, "--quiet"],
                   check=True, capture_output=True)
    theirs = _json(result)["metrics"]
    ours = next(r for r in doc["runs"] if r["subset"] == "curated")["metrics"]["retrieval_de"]
    assert theirs == pytest.approx(ours, abs=1e-6)


def test_built_in_sets_load_in_clip_benchmarks_builder(box):
    from clip_benchmark.datasets.builder import build_dataset
    out, _ = box
    ds = build_dataset("wds/count_de", root=os.path.join(out, "eval", "count_de"), transform=None,
                       split="test", task="zeroshot_classification", download=False)
    assert ds.classes == ["ein", "zwei", "drei"] and ds.templates == ["{c}"]
    labels = [label for _img, label in ds]
    assert len(labels) == 24 and set(labels) <= {0, 1, 2}


def test_concept_labels_are_the_drawn_attributes_in_every_language():
    group, data = evalsets.concept_scene(3000, 5)
    with Image.open(io.BytesIO(data)) as im:
        assert min(im.size) == evalsets.STORED_SIDE
    for task in evalsets.TASKS:
        values = evalsets.class_values(task)
        assert getattr(group, task) in values
        for lang in synth.LANGUAGES:
            names = evalsets.class_names(task, lang)
            assert len(names) == len(set(names)) == len(values)  # one distinct word per class
    assert evalsets.class_names("shape", "fr")[synth.SHAPES.index("star")] == "étoile"
    _img, text = evalsets.retrieval_pair(3001, 0, "ru")
    assert any("\u0400" <= ch <= "\u04ff" for ch in text)


class _Photos(torch.utils.data.Dataset):
    """Quadrants of real photographs, labelled by photograph: a classification set clip_benchmark writes."""

    def __init__(self):
        from curate.photo_corpus import quadrants, real_photos
        photos = real_photos()[:3]
        self.items = [(q, label) for label, p in enumerate(photos) for q in quadrants(p.load())]
        self.classes = [p.subject for p in photos]
        self.templates = ["a photo of {c}"]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_given_subsets_and_a_foreign_eval_set_written_by_clip_benchmark(box, tmp_path):
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset
    out, _ = box
    foreign = str(tmp_path / "photos")
    convert_dataset(_Photos(), "test", foreign, transform=PIL_to_bytes("webp"), verbose=False)
    q = str(tmp_path / "q")
    assert main(["--subset", f"mine={out}/subsets/curated/shards", "--eval", foreign, "--seeds", "1",
                 "--samples-seen", "128", "--out", q]) == 0
    doc = _json(os.path.join(q, "results.json"))
    assert [d["name"] for d in doc["datasets"]] == ["photos"]
    acc = doc["runs"][0]["metrics"]["photos"]["acc1"]
    assert 0 <= acc <= 1 and doc["hygiene"] is None
    assert "| mine | " in _read(os.path.join(q, "results.md"))


def _tar(path, members):
    import webdataset as wds
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wds.TarWriter(path) as w:
        for m in members:
            w.write(m)
    return os.path.dirname(path)


def _eval_set(folder, classnames=True, templates=True):
    os.makedirs(os.path.join(folder, "test"))
    _tar(os.path.join(folder, "test", "0.tar"), [{"__key__": "a", "jpg": synth.encode_jpeg(
        Image.new("RGB", (8, 8)), 90), "cls": "0"}])
    with open(os.path.join(folder, "test", "nshards.txt"), "w") as f:
        f.write("1\n")
    for name, wanted in (("classnames.txt", classnames), ("zeroshot_classification_templates.txt", templates)):
        if wanted:
            with open(os.path.join(folder, name), "w") as f:
                f.write("{c}\n" if "templates" in name else "thing\n")
    return folder


def test_inputs_open_clip_train_cannot_read_stop_before_any_work(tmp_path, capsys):
    """A caption under another key than txt, keys with dots (WebDataset keys end at the first dot)
    and an empty tar: open_clip_train's resampled loader would wait forever on them."""
    image = synth.encode_jpeg(Image.new("RGB", (8, 8)), 90)
    cases = {"caption": [{"__key__": "a", "jpg": image, "caption": "a red circle"}],
             "dotted": [{"__key__": "img.0001.v2", "jpg": image, "txt": "a red circle"}],
             "empty": []}
    for name, members in cases.items():
        folder = _tar(str(tmp_path / name / "0.tar"), members)
        out = tmp_path / f"q-{name}"
        assert main(["--out", str(out), "--subset", f"x={folder}"]) == 2
        assert "no sample with an image (jpg, png, jpeg, webp) and a txt caption" in capsys.readouterr().err
        assert not out.exists()


def test_eval_sets_are_checked_before_any_work_and_named_in_full(tmp_path, capsys):
    _eval_set(str(tmp_path / "a" / "same"))
    _eval_set(str(tmp_path / "b" / "same"))
    out = tmp_path / "q"
    assert main(["--out", str(out), "--eval", str(tmp_path / "a"), "--eval", str(tmp_path / "b")]) == 2
    assert "two --eval datasets share a folder name" in capsys.readouterr().err and not out.exists()
    _eval_set(str(tmp_path / "c" / "notemplates"), templates=False)
    assert main(["--out", str(out), "--eval", str(tmp_path / "c")]) == 2
    assert "needs zeroshot_classification_templates.txt" in capsys.readouterr().err and not out.exists()
    named = discover(_eval_set(str(tmp_path / "d" / "imagenet_sketch")))[0]
    assert (named.task, named.language) == ("imagenet_sketch", None)
    assert [(d.task, d.language) for d in discover(str(tmp_path / "a"))] == [("same", None)]


def test_the_same_folders_named_otherwise_resume(box, capsys, monkeypatch):
    """--subset raw=raw and raw=/abs/raw/ are one folder: the settings match, nothing retrains."""
    out, _ = box
    q = os.path.join(os.path.dirname(out), "given")
    shards = os.path.join(out, "subsets", "curated", "shards")
    args = ["--seeds", "1", "--samples-seen", "64", "--eval", os.path.join(out, "eval", "size_en"), "--out", q]
    assert main(["--subset", f"c={shards}/", *args]) == 0
    monkeypatch.chdir(os.path.dirname(shards))
    assert main(["--subset", "c=shards", *args]) == 0
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "--lr must be above 0"),
    (["--subset", "raw"], "expected NAME=DIR"),
    (["--subset", "raw=/nonexistent/folder"], "is not a folder of .tar shards"),
    (["--eval", "/nonexistent/eval"], "not a folder"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--recipes", "curated,bogus"], "choose among"),
])
def test_bad_arguments_stop_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "q"
    assert main(["--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_other_settings_in_the_same_folder_are_refused(box, capsys):
    out, _ = box
    assert main(["--out", out, *BOX[:-2], "--eval-pairs", "25"]) == 2
    assert "holds a comparison with other settings (eval_pairs)" in capsys.readouterr().err


def test_discover_names_a_folder_without_datasets(tmp_path):
    from curate.quality.evaluate import EvalSuiteError
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalSuiteError, match="no dataset in clip_benchmark's WebDataset layout"):
        discover(str(tmp_path / "empty"))
