"""Evaluate a checkpoint on every dataset of an evaluation folder with clip_benchmark's metric code.

A dataset is any folder in clip_benchmark's WebDataset layout (``test/nshards.txt`` + tars;
``classnames.txt`` and templates for zero-shot classification, ``dataset_type.txt`` = retrieval for
image-text retrieval): the built-in suite of curate.quality.evalsets, or a user's own export. The
datasets are loaded by clip_benchmark's ``build_dataset("wds/NAME", ...)`` and scored by its
``zeroshot_classification.evaluate`` / ``zeroshot_retrieval.evaluate``, the code behind DataComp's
and open_clip's published numbers.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from unittest import mock

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"
RECALL_K = (1, 5)


class EvalSuiteError(ValueError):
    """An evaluation folder holds no dataset or a broken one; the message is one line."""


@dataclass(frozen=True)
class EvalDataset:
    name: str    # the folder's name: <task>_<lang> for the built-in suite
    path: str
    kind: str    # CLASSIFICATION or RETRIEVAL

    def _builtin(self) -> tuple[str, str] | None:
        from curate.quality.evalsets import RETRIEVAL as BUILTIN_RETRIEVAL
        from curate.quality.evalsets import TASKS
        task, _, lang = self.name.rpartition("_")
        return (task, lang) if task in (*TASKS, BUILTIN_RETRIEVAL) and lang else None

    @property
    def task(self) -> str:
        """The built-in suite's task (``<task>_<lang>``: shape, ..., retrieval); any other dataset
        (imagenet_sketch, ...) is a task of its own, named in full."""
        builtin = self._builtin()
        return builtin[0] if builtin else self.name

    @property
    def language(self) -> str | None:
        builtin = self._builtin()
        return builtin[1] if builtin else None


def _kind(path: str) -> str:
    type_file = os.path.join(path, "dataset_type.txt")
    if os.path.exists(type_file):
        with open(type_file, encoding="utf-8") as f:
            kind = f.read().strip().lower()
        if kind == "retrieval":
            return RETRIEVAL
        if kind != "classification":
            raise EvalSuiteError(f"{type_file}: dataset type {kind!r} is not supported "
                                 "(classification or retrieval)")
    for needed in ("classnames.txt", "zeroshot_classification_templates.txt"):
        if not os.path.exists(os.path.join(path, needed)):
            raise EvalSuiteError(f"{path}: a classification dataset needs {needed} (clip_benchmark's layout)")
    return CLASSIFICATION


def discover(eval_dir: str) -> list[EvalDataset]:
    """Every dataset in ``eval_dir`` (itself one, or its sub-folders), sorted by name."""
    if not os.path.isdir(eval_dir):
        raise EvalSuiteError(f"--eval {eval_dir}: not a folder")
    if os.path.exists(os.path.join(eval_dir, "test", "nshards.txt")):
        candidates = [eval_dir]
    else:
        candidates = sorted(os.path.join(eval_dir, d) for d in os.listdir(eval_dir)
                            if os.path.exists(os.path.join(eval_dir, d, "test", "nshards.txt")))
    if not candidates:
        raise EvalSuiteError(f"--eval {eval_dir}: no dataset in clip_benchmark's WebDataset layout "
                             "(DIR/test/nshards.txt + DIR/test/0.tar ...) in it or its sub-folders")
    return [EvalDataset(os.path.basename(os.path.normpath(p)), p, _kind(p)) for p in candidates]


def load(dataset: EvalDataset, transform):
    """The dataset as clip_benchmark builds it (an iterable of (image tensor, label or captions))."""
    from clip_benchmark.datasets.builder import build_dataset
    return build_dataset(f"wds/{dataset.name}", root=dataset.path, transform=transform, split="test",
                         download=False, task=dataset.kind)


def evaluate_dataset(model, transform, tokenizer, dataset: EvalDataset, device: str = "cpu",
                     batch_size: int = 256) -> dict:
    """clip_benchmark's metrics for one dataset: acc1 (+ mean_per_class_recall and per_class_acc1, a
    dict) or recall@1/5 both ways."""
    import torch
    from clip_benchmark.metrics import zeroshot_retrieval

    data = load(dataset, transform)
    batched = data.batched(batch_size)
    batched.classes = data.classes  # clip_benchmark reads dataloader.dataset.classes
    loader = torch.utils.data.DataLoader(batched, batch_size=None, shuffle=False, num_workers=0)
    amp = device.startswith("cuda")  # on CPU autocast would mean bf16: keep fp32 there
    model.eval()
    with _no_bars():
        if dataset.kind == RETRIEVAL:
            out = zeroshot_retrieval.evaluate(model, loader, tokenizer, device=device, amp=amp,
                                              recall_k_list=list(RECALL_K))
        else:
            out = _classification(model, loader, tokenizer, data.classes, data.templates, device, amp)
    return {k: v if isinstance(v, dict) else float(v) for k, v in out.items()}


@contextlib.contextmanager
def _no_bars():
    """clip_benchmark draws a tqdm bar per class list and per pass: dozens per checkpoint, which would
    bury curate.quality's progress lines (TQDM_DISABLE is read when tqdm is imported: too early)."""
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
    with mock.patch.object(zeroshot_classification, "tqdm", _iterate), \
            mock.patch.object(zeroshot_retrieval, "tqdm", _iterate):
        yield


def _iterate(iterable, *args, **kwargs):
    return iterable


def _classification(model, loader, tokenizer, classnames, templates, device, amp) -> dict[str, float]:
    """clip_benchmark's zeroshot_classification.evaluate without its ``accuracy`` helper, which fails
    under NumPy 2 (``float()`` of a one-element array): its classifier (prompt ensemble) and its
    classification pass, then top-1 accuracy and balanced accuracy as it computes them."""
    from clip_benchmark.metrics import zeroshot_classification as zc
    from sklearn.metrics import balanced_accuracy_score

    classifier = zc.zero_shot_classifier(model, tokenizer, classnames, templates, device, amp=amp)
    logits, target = zc.run_classification(model, classifier, loader, device, amp=amp)
    pred = logits.argmax(axis=1)
    with warnings.catch_warnings():  # a small set may lack a class the model predicts: that is no error
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        recall = balanced_accuracy_score(target, pred)
    # per class: where a skewed training corpus shows (its tail concepts; benchmarks/balance_quality.py)
    per_class = {name: (pred[target == i] == i).float().mean().item()
                 for i, name in enumerate(classnames) if (target == i).any()}
    return {"acc1": (pred == target).float().mean().item(), "mean_per_class_recall": recall,
            "per_class_acc1": per_class}


def headline(dataset: EvalDataset, metrics: dict[str, float]) -> float:
    """One number per dataset: top-1 accuracy, or mean recall@1 over both retrieval directions."""
    if dataset.kind == RETRIEVAL:
        return (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return metrics["acc1"]


def load_checkpoint(model_name: str, checkpoint: str, device: str = "cpu"):
    """(model, eval transform, tokenizer) of an open_clip_train checkpoint."""
    import open_clip

    from curate.models.clip import register_model_configs
    register_model_configs()
    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint, device=device)
    return model, transform, open_clip.get_tokenizer(model_name)


def evaluate_checkpoint(model_name: str, checkpoint: str, datasets: list[EvalDataset], device: str = "cpu",
                        batch_size: int = 256) -> dict[str, dict[str, float]]:
    """{dataset name: metrics} for one checkpoint over every dataset."""
    import torch
    torch.manual_seed(0)
    model, transform, tokenizer = load_checkpoint(model_name, checkpoint, device)
    return {d.name: evaluate_dataset(model, transform, tokenizer, d, device, batch_size) for d in datasets}
