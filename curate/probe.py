"""Learned filters on stored embeddings: a small head over the CLIP embeddings a score run stored.

    python -m curate.probe train --embeddings RUN_OR_EMB_DIR --labels TABLE --out HEAD.pt \\
        [--kind linear|mlp] [--target image|text|both] [--holdout 0.2] [--seed 0] [--keep above|below]
    python -m curate.probe score --embeddings RUN_OR_EMB_DIR --head HEAD.pt [--out SCORES.parquet|.csv]

A head maps one sample's stored embeddings (clip-retrieval layout, ``curate/embeddings.py``: image,
text, or both concatenated, each L2-normalised again in float32) to one score. The idea is that of the
aesthetic and NSFW heads that LAION-5B, NeMo Curator and Data-Juicer run on CLIP embeddings: once
the embeddings are stored, a filter costs a few matrix products and no image model. Heads are
evaluated in numpy (``Head.score``), so scoring needs no CLIP model and no GPU.

Head files are PyTorch state dicts (``torch.save``), read with ``torch.load(weights_only=True)``. Layouts:

- ``linear``: ``0.weight`` [1, d], ``0.bias`` [1] (``nn.Sequential(nn.Linear(d, 1))``); a bare
  ``weight``/``bias`` pair (an ``nn.Linear`` saved alone, as LAION's first aesthetic predictor,
  LAION-AI/aesthetic-predictor, ships it) reads the same.
- ``mlp``: ``0.*`` Linear(d, h), ReLU, ``2.*`` Linear(h, 1).
- ``aesthetic``: LAION's improved-aesthetic-predictor (christophschuhmann/improved-aesthetic-predictor,
  ``simple_inference.py``'s ``MLP``): ``layers.0`` Linear(768, 1024), Dropout, ``layers.2``
  Linear(1024, 128), Dropout, ``layers.4`` Linear(128, 64), Dropout, ``layers.6`` Linear(64, 16),
  ``layers.7`` Linear(16, 1), with no activation (its ReLUs are commented out), over L2-normalised
  CLIP ViT-L/14 image embeddings. Its output is the predicted rating (about 1-10), used as is.

A sidecar ``HEAD.json`` (same name, ``.json``) says the kind, target, input dims, output (``probability``:
a sigmoid of a logistic head trained here; ``raw``: the last layer's value), which side of the
threshold is kept, the suggested threshold and the held-out AUC. Without a sidecar the layout is
recognised from the state dict's keys, the target is ``image`` and the output ``raw``.

A head's decision (``Head.reason``): with ``keep: above`` a score below the threshold drops the
sample with reason ``probe:<name>`` (``keep: below``: a score above it). Nothing is downloaded:
a user who has the aesthetic predictor's ``.pth`` points ``--head`` at it.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from curate import fs
from curate.io import read_parquet, write_bytes, write_parquet

KINDS = ("linear", "mlp", "aesthetic")
TARGETS = ("image", "text", "both")
OUTPUTS = ("probability", "raw")
SIDECAR_FORMAT = "curate.probe/1"
MLP_HIDDEN = 64  # hidden width of a trained mlp head: a few hundred labels support little more
REASON_PREFIX = "probe:"
SCORES_SCHEMA = pa.schema([("key", pa.string()), ("shard_index", pa.int64()), ("source_index", pa.int64()),
                           ("score", pa.float32()), ("reason", pa.string())])

# Linear layers of improved-aesthetic-predictor's MLP, by state-dict index (Dropouts at 1, 3, 5).
_AESTHETIC_LINEARS = (0, 2, 4, 6, 7)


# --- heads ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One affine layer, ``x @ weight.T + bias``, then ReLU when ``relu``."""
    weight: np.ndarray  # [out, in], float32
    bias: np.ndarray    # [out], float32
    relu: bool = False


class Head:
    """A scoring head over stored embeddings, evaluated in numpy.

    ``dims`` names the input widths it takes per embedding (``{"image": 768}``, or image and text for
    target ``both``, concatenated image first). Picklable (plain arrays), so a Beam DoFn can hold one.
    """

    def __init__(self, layers: Sequence[Layer], *, name: str, kind: str, target: str, dims: Mapping[str, int],
                 output: str = "raw", threshold: float | None = None, keep: str = "above", source: str = ""):
        if kind not in KINDS or target not in TARGETS or output not in OUTPUTS or keep not in ("above", "below"):
            raise ValueError(f"{source or name}: bad head settings kind={kind!r} target={target!r} "
                             f"output={output!r} keep={keep!r}")
        self.layers, self.name, self.kind, self.target = tuple(layers), name, kind, target
        self.dims, self.output, self.threshold, self.keep, self.source = dict(dims), output, threshold, keep, source
        if sum(self.dims.values()) != self.layers[0].weight.shape[1] or self.layers[-1].weight.shape[0] != 1:
            raise ValueError(f"{source or name}: layers take {self.layers[0].weight.shape[1]} inputs and give "
                             f"{self.layers[-1].weight.shape[0]} outputs; dims say {self.dims} and 1")
        self._evaluated = compose(self.layers)

    @property
    def input_dim(self) -> int:
        return self.layers[0].weight.shape[1]

    def with_threshold(self, threshold: float | None) -> Head:
        """The same head with another threshold."""
        return Head(self.layers, name=self.name, kind=self.kind, target=self.target, dims=self.dims,
                    output=self.output, threshold=threshold, keep=self.keep, source=self.source)

    def features(self, image: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
        """The head's input rows (``features``)."""
        return features(self.dims, image, text, self.source or self.name)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The last layer's value for each feature row."""
        for layer in self._evaluated:
            x = x @ layer.weight.T + layer.bias
            if layer.relu:
                x = np.maximum(x, 0)
        return x[:, 0]

    def score(self, image: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
        """One float32 score per row: a probability for heads trained here, the raw output otherwise."""
        z = self.logits(self.features(image, text))
        if self.output == "probability":
            z = 1 / (1 + np.exp(-z))
        return z.astype(np.float32)

    def reason(self, score: float, threshold: float | None = None) -> str | None:
        """``probe:<name>`` when ``score`` falls on the dropped side of the threshold (``threshold``
        given, else the head's), None when kept or when there is no threshold."""
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            return None
        dropped = score < threshold if self.keep == "above" else score > threshold
        return f"{REASON_PREFIX}{self.name}" if dropped else None

    def state_dict(self) -> dict:
        """The layers as a PyTorch state dict in the layout of ``kind``."""
        import torch

        names = _layer_names(self.kind, len(self.layers))
        out = {}
        for name, layer in zip(names, self.layers):
            out[f"{name}weight"] = torch.from_numpy(np.ascontiguousarray(layer.weight))
            out[f"{name}bias"] = torch.from_numpy(np.ascontiguousarray(layer.bias))
        return out

    def sidecar(self, **extra) -> dict:
        return {"format": SIDECAR_FORMAT, "name": self.name, "kind": self.kind, "target": self.target,
                "dims": self.dims, "input_dim": self.input_dim, "output": self.output, "keep": self.keep,
                "threshold": self.threshold, **extra}


def features(dims: Mapping[str, int], image: np.ndarray | None, text: np.ndarray | None,
             where: str = "head") -> np.ndarray:
    """A head's input rows: the embeddings ``dims`` names, each row L2-normalised in float32 (stored
    float16 rows are unit length only to float16 precision, and LAION's aesthetic head expects unit
    vectors), concatenated image first. One-line ValueError when an embedding is missing or its
    width is not the head's (e.g. a ViT-L/14 head, 768-d, on the demo scorer's 64-d store)."""
    parts = []
    for what, emb in (("image", image), ("text", text)):
        if what not in dims:
            continue
        if emb is None:
            raise ValueError(f"{where}: head needs {what} embeddings")
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != dims[what]:
            raise ValueError(f"{where}: head takes {dims[what]}-d {what} embeddings, but the store holds "
                             f"{emb.shape[-1] if emb.ndim else 0}-d ones")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        parts.append(emb / np.where(norms == 0, 1, norms))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def compose(layers: Sequence[Layer]) -> list[Layer]:
    """The same function with each run of affine layers not separated by a ReLU merged into one
    (W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2), in float64): the aesthetic predictor, which has
    no activation, becomes one 768 -> 1 product per row instead of 768 x 1024 + ... (equal up to
    float32 rounding)."""
    out: list[Layer] = []
    for layer in layers:
        if out and not out[-1].relu:
            w = layer.weight.astype(np.float64) @ out[-1].weight.astype(np.float64)
            b = layer.weight.astype(np.float64) @ out[-1].bias.astype(np.float64) + layer.bias
            out[-1] = Layer(w.astype(np.float32), b.astype(np.float32), layer.relu)
        else:
            out.append(layer)
    return out


def _layer_names(kind: str, n: int) -> list[str]:
    if kind == "aesthetic":
        return [f"layers.{i}." for i in _AESTHETIC_LINEARS]
    return [f"{2 * i}." for i in range(n)]  # nn.Sequential(Linear, ReLU, Linear, ...)


def sidecar_path(head_path: str) -> str:
    """``HEAD.pt`` -> ``HEAD.json`` (beside it)."""
    stem = head_path[: -len(os.path.splitext(head_path)[1])] if os.path.splitext(head_path)[1] else head_path
    return stem + ".json"


def detect_kind(keys: Sequence[str]) -> str:
    """The layout of a state dict from its keys (module docstring); ValueError naming them otherwise."""
    keys = set(keys)
    if {f"layers.{i}.{p}" for i in _AESTHETIC_LINEARS for p in ("weight", "bias")} == keys:
        return "aesthetic"
    if keys in ({"weight", "bias"}, {"0.weight", "0.bias"}):
        return "linear"
    if keys == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        return "mlp"
    raise ValueError(f"unrecognised head layout (keys {', '.join(sorted(keys))}); expected linear "
                     "(0.weight, 0.bias), mlp (0.*, 2.*) or improved-aesthetic-predictor (layers.0 ... layers.7)")


def head_from_state_dict(state: Mapping, *, name: str, kind: str | None = None, target: str = "image",
                         dims: Mapping[str, int] | None = None, output: str = "raw", threshold: float | None = None,
                         keep: str = "above", source: str = "") -> Head:
    """A Head from a state dict (tensors or arrays). ``kind`` None: recognised from the keys.
    ``dims`` None: the input width goes to the target (``both`` needs ``dims``)."""
    where = source or name
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):  # a Lightning checkpoint
        state = state["state_dict"]
    laid_out = detect_kind(list(state))
    if kind is not None and kind != laid_out:
        raise ValueError(f"{where}: sidecar says kind {kind}, but the state dict is laid out as {laid_out}")
    kind = laid_out
    if kind == "aesthetic":
        prefixes = _layer_names(kind, len(_AESTHETIC_LINEARS))
    elif "weight" in state:  # a bare nn.Linear
        prefixes = [""]
    else:
        prefixes = _layer_names(kind, 1 if kind == "linear" else 2)
    layers = []
    for i, prefix in enumerate(prefixes):
        w = np.asarray(_numpy(state[f"{prefix}weight"]), dtype=np.float32)
        b = np.asarray(_numpy(state[f"{prefix}bias"]), dtype=np.float32).reshape(-1)
        if layers and layers[-1].weight.shape[0] != w.shape[1]:
            raise ValueError(f"{where}: layer {prefix}weight takes {w.shape[1]} inputs, the layer before gives "
                             f"{layers[-1].weight.shape[0]}")
        layers.append(Layer(w, b, relu=(kind == "mlp" and i < len(prefixes) - 1)))
    if dims is None:
        if target == "both":
            raise ValueError(f"{where}: target both needs the image and text widths (a sidecar)")
        dims = {target: layers[0].weight.shape[1]}
    return Head(layers, name=name, kind=kind, target=target, dims=dims, output=output, threshold=threshold,
                keep=keep, source=source)


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t)


def load_head(path: str, name: str | None = None, threshold: float | None = None, target: str | None = None,
              keep: str | None = None) -> Head:
    """A head file (local or fsspec URL) with its sidecar when there is one. ``name`` (default: the
    file's stem) is what the reason says; ``threshold`` and ``keep`` override the sidecar's;
    ``target`` names what a head without a sidecar reads (default image; a sidecar's must agree)."""
    import torch

    if not fs.exists(path):
        raise ValueError(f"{path}: head file not found")
    try:
        state = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (UnpicklingError, KeyError, RuntimeError) on a foreign file
        raise ValueError(f"{path}: not a PyTorch state dict ({type(e).__name__}: {str(e)[:120]})") from None
    meta = {}
    if fs.exists(sidecar_path(path)):
        meta = json.loads(fs.read_bytes(sidecar_path(path)))
        if meta.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{sidecar_path(path)}: not a curate.probe sidecar (format {meta.get('format')!r})")
    name = name or meta.get("name") or re.sub(r"\W+", "_", os.path.splitext(fs.basename(path))[0])
    if target is not None and meta.get("target", target) != target:
        raise ValueError(f"{path}: target {target} asked, but the head was trained on {meta['target']} embeddings")
    return head_from_state_dict(state, name=name, kind=meta.get("kind"), target=meta.get("target", target or "image"),
                                dims=meta.get("dims"), output=meta.get("output", "raw"),
                                threshold=meta.get("threshold") if threshold is None else threshold,
                                keep=keep or meta.get("keep", "above"), source=path)


def save_head(head: Head, path: str, **sidecar_extra) -> None:
    """The head's state dict at ``path`` and its sidecar beside it, each written atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    write_bytes(path, buf.getvalue())
    write_bytes(sidecar_path(path), (json.dumps(head.sidecar(**sidecar_extra), indent=2, sort_keys=True) + "\n").encode())


# --- stored embeddings -------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredPart:
    """One input shard's stored rows: keys, positions, and the image/text embeddings (float16 as stored)."""
    part: int
    keys: list[str]
    source_index: np.ndarray
    image: np.ndarray | None
    text: np.ndarray | None


def embeddings_dir(path: str) -> str:
    """The clip-retrieval folder of a run folder (``RUN/embeddings``) or the folder itself; one-line
    ValueError when neither holds ``metadata/metadata_*.parquet``."""
    for candidate in (fs.join(path, "embeddings"), path):
        if fs.glob(fs.join(candidate, "metadata", "metadata_*.parquet")):
            return candidate
    raise ValueError(f"no stored embeddings in {path!r} (expected [embeddings/]metadata/metadata_*.parquet "
                     "from a score or laion_filter run)")


def list_parts(emb_dir: str) -> list[int]:
    names = fs.glob(fs.join(emb_dir, "metadata", "metadata_*.parquet"))
    return sorted(int(re.search(r"metadata_(\d+)\.parquet$", n).group(1)) for n in names)


def _load_rows(path: str, rows: np.ndarray | None) -> np.ndarray:
    """An npy file's rows (all when ``rows`` is None); local files are memory-mapped, so only the
    selected rows are read."""
    if fs.is_local(path):
        arr = np.load(fs.local_path(path), mmap_mode="r")
    else:
        arr = np.load(io.BytesIO(fs.read_bytes(path)))
    return np.asarray(arr if rows is None else arr[rows])


def read_part(emb_dir: str, part: int, targets: Sequence[str] = ("image", "text"),
              keys: set[str] | None = None) -> StoredPart:
    """One part of the store, only the embeddings of ``targets`` and, when ``keys`` is given, only
    those keys' rows. ValueError when the files disagree on the row count."""
    meta = read_parquet(fs.join(emb_dir, "metadata", f"metadata_{part}.parquet"), columns=["key", "source_index"])
    all_keys = meta.column("key").to_pylist()
    rows = None if keys is None else np.array([i for i, k in enumerate(all_keys) if k in keys], dtype=np.int64)
    arrays = {}
    for what, sub in (("image", "img_emb"), ("text", "text_emb")):
        if what in targets:
            arr = _load_rows(fs.join(emb_dir, sub, f"{sub}_{part}.npy"), None)
            if len(arr) != len(all_keys):
                raise ValueError(f"{emb_dir}: part {part} has {len(all_keys)} metadata rows but {len(arr)} {what} embeddings")
            arrays[what] = np.asarray(arr if rows is None else arr[rows])
    index = np.asarray(meta.column("source_index").to_numpy(zero_copy_only=False))
    return StoredPart(part, all_keys if rows is None else [all_keys[i] for i in rows],
                      index if rows is None else index[rows], arrays.get("image"), arrays.get("text"))


def _targets(target: str) -> tuple[str, ...]:
    return ("image", "text") if target == "both" else (target,)


# --- labels, AUC, training -------------------------------------------------------------------

def read_labels(path: str) -> dict[str, int]:
    """A table of ``key,label`` (.csv or .parquet; label 0/1 or false/true) as {key: 0 or 1}.
    One-line ValueError for a missing column, another label or a key labelled both ways."""
    if not fs.exists(path):
        raise ValueError(f"{path}: labels table not found")
    if path.endswith(".parquet"):
        table = read_parquet(path)
    elif path.endswith(".csv"):
        table = pacsv.read_csv(io.BytesIO(fs.read_bytes(path)),
                               convert_options=pacsv.ConvertOptions(column_types={"key": pa.string()}))
    else:
        raise ValueError(f"{path}: labels must be a .csv or .parquet table with columns key, label")
    missing = {"key", "label"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: labels table lacks column(s) {', '.join(sorted(missing))} (has {', '.join(table.column_names)})")
    labels: dict[str, int] = {}
    for key, label in zip(table.column("key").to_pylist(), table.column("label").to_pylist()):
        text = str(int(label)) if isinstance(label, (bool, int, float)) and label in (0, 1) else str(label).strip().lower()
        value = {"0": 0, "1": 1, "false": 0, "true": 1}.get(text)
        if key is None or value is None:
            raise ValueError(f"{path}: key {key!r} has label {label!r}; labels are 0/1 or false/true")
        if labels.setdefault(str(key), value) != value:
            raise ValueError(f"{path}: key {key!r} is labelled both 0 and 1")
    return labels


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half. Computed as the Mann-Whitney U statistic over n1 * n0 pairs
    (scipy, a dependency; scikit-learn's roc_auc_score is equal but only in the test extra)."""
    from scipy.stats import mannwhitneyu

    labels = np.asarray(labels).astype(bool)
    pos, neg = np.asarray(scores)[labels], np.asarray(scores)[~labels]
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs both positive and negative labels")
    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises TPR - FPR (Youden's J) when scores >= it are called positive: a
    suggestion read off the held-out ROC curve; ties go to the higher threshold."""
    labels = np.asarray(labels).astype(bool)
    best, best_j = float(np.max(scores)), -1.0
    for t in np.unique(scores)[::-1]:
        called = scores >= t
        j = called[labels].mean() - called[~labels].mean()
        if j > best_j:
            best, best_j = float(t), j
    return best


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): ``ceil(fraction * n_class)`` of each class held out, drawn with
    ``seed`` (stratified, so both classes are in both halves when each has two or more rows)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for value in (0, 1):
        rows = rng.permutation(np.flatnonzero(labels == value))
        n = min(max(math.ceil(fraction * len(rows)), 1), len(rows) - 1) if fraction > 0 and len(rows) > 1 else 0
        held.append(rows[:n])
        train.append(rows[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def fit(x: np.ndarray, y: np.ndarray, kind: str = "linear", seed: int = 0, hidden: int = MLP_HIDDEN) -> list[Layer]:
    """Fit a logistic head on feature rows ``x`` and 0/1 labels ``y`` with torch (full batch).

    linear: logistic regression, L-BFGS, L2 penalty 1/(2n) ||w||^2 (scikit-learn's default C = 1
    written per sample). mlp: Linear(d, hidden), ReLU, Linear(hidden, 1), Adam (lr 1e-2, weight decay
    1e-3), 300 full-batch steps. Deterministic for a seed on one machine. Runs on one thread: at a few
    hundred rows, more threads only add synchronisation (300 mlp steps: 0.17 s on one thread, 2.7 s
    on two of a busy 2-core machine).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(torch, x, y, kind, seed, hidden)
    finally:
        torch.set_num_threads(threads)


def _fit(torch, x: np.ndarray, y: np.ndarray, kind: str, seed: int, hidden: int) -> list[Layer]:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.float32))
    lossf = torch.nn.BCEWithLogitsLoss()
    if kind == "linear":
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 1))
        torch.nn.init.zeros_(model[0].weight)
        torch.nn.init.zeros_(model[0].bias)
        opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-7,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = lossf(model(xt)[:, 0], yt) + model[0].weight.pow(2).sum() / (2 * len(yt))
            loss.backward()
            return loss
        opt.step(closure)
    elif kind == "mlp":
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(300):
            opt.zero_grad()
            lossf(model(xt)[:, 0], yt).backward()
            opt.step()
    else:
        raise ValueError(f"can train kind linear or mlp, not {kind!r}")
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return [Layer(_numpy(m.weight), _numpy(m.bias), relu=i < len(linears) - 1) for i, m in enumerate(linears)]


@dataclass(frozen=True)
class TrainResult:
    head: Head
    train: int
    held_out: int
    positives: int
    auc: float | None
    unmatched: int  # labelled keys with no stored embedding


def train(embeddings: str, labels: Mapping[str, int], *, kind: str = "linear", target: str = "image",
          holdout: float = 0.2, seed: int = 0, keep: str = "above", name: str = "probe") -> TrainResult:
    """Fit a head on the labelled keys' stored embeddings; AUC and the suggested threshold come from
    the held-out rows, scored by the numpy Head that ``score`` uses. A key stored twice (the same key
    in two input shards) contributes every stored row."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    emb_dir = embeddings_dir(embeddings)
    wanted = set(labels)
    parts = [read_part(emb_dir, p, _targets(target), wanted) for p in list_parts(emb_dir)]
    keys = [k for p in parts for k in p.keys]
    if not keys:
        raise ValueError(f"none of the {len(labels)} labelled keys has stored embeddings in {emb_dir}")
    image = np.concatenate([p.image for p in parts]) if "image" in _targets(target) else None
    text = np.concatenate([p.text for p in parts]) if "text" in _targets(target) else None
    y = np.array([labels[k] for k in keys], dtype=np.int64)
    if y.min() == y.max():
        raise ValueError(f"all {len(y)} labelled rows with embeddings are labelled {y[0]}: a probe needs both labels")
    dims = {"image": image.shape[1]} if image is not None else {}
    dims |= {"text": text.shape[1]} if text is not None else {}
    x = features(dims, image, text, embeddings)
    train_rows, held = split_holdout(y, holdout, seed)
    head = Head(fit(x[train_rows], y[train_rows], kind, seed), name=name, kind=kind, target=target, dims=dims,
                output="probability", keep=keep)
    measured, threshold = None, None
    if len(held) and 0 < y[held].sum() < len(held):
        held_scores = head.score(None if image is None else image[held], None if text is None else text[held])
        measured = auc(held_scores, y[held])
        threshold = youden_threshold(held_scores, y[held])
        if keep == "below":  # Youden's cut calls >= t positive; dropping above t keeps < t, nearly the same cut
            threshold = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    return TrainResult(head.with_threshold(threshold), len(train_rows), len(held), int(y.sum()), measured, len(set(labels) - set(keys)))


def score_store(head: Head, embeddings: str):
    """Yield (part, StoredPart, scores) for every part of a store, one part in memory at a time."""
    emb_dir = embeddings_dir(embeddings)
    for p in list_parts(emb_dir):
        stored = read_part(emb_dir, p, _targets(head.target))
        yield p, stored, head.score(stored.image, stored.text)


# --- command line ------------------------------------------------------------------------------

def _train_main(args) -> int:
    labels = read_labels(args.labels)
    name = args.name or re.sub(r"\W+", "_", os.path.splitext(os.path.basename(args.out))[0])
    result = train(args.embeddings, labels, kind=args.kind, target=args.target, holdout=args.holdout,
                   seed=args.seed, keep=args.keep, name=name)
    head = result.head
    save_head(head, args.out, auc=result.auc, train_rows=result.train, held_out_rows=result.held_out,
              positives=result.positives, labels=args.labels, seed=args.seed, holdout=args.holdout)
    dims = " + ".join(f"{d}-d {w}" for w, d in head.dims.items())
    print(f"trained {head.kind} probe {head.name!r} on {dims} embeddings: {result.train} rows trained, "
          f"{result.held_out} held out ({result.positives} positive of {result.train + result.held_out})")
    if result.unmatched:
        print(f"  {result.unmatched} labelled key(s) have no stored embedding (dropped before scoring?): skipped")
    if result.auc is None:
        print("  no held-out AUC: the held-out rows need both labels (--holdout 0 trains on everything)")
    else:
        print(f"  held-out AUC {result.auc:.4f}; suggested threshold {head.threshold:.4f} (Youden's J, "
              f"keep scores {head.keep} it)")
    print(f"  wrote {args.out} and {sidecar_path(args.out)}")
    return 0


def _score_main(args) -> int:
    head = load_head(args.head, threshold=args.threshold)
    tables, n, dropped = [], 0, 0
    for part, stored, scores in score_store(head, args.embeddings):
        n += len(scores)
        reasons = [head.reason(float(s)) for s in scores]
        dropped += sum(r is not None for r in reasons)
        table = pa.table({"key": stored.keys, "shard_index": [part] * len(scores), "source_index": stored.source_index,
                          "score": scores, "reason": reasons}, schema=SCORES_SCHEMA)
        if args.out:
            tables.append(table)
        else:
            for key, s, r in zip(stored.keys, scores, reasons):
                print(f"{key}\t{s:.6f}\t{r or ''}")
    if args.out:
        table = pa.concat_tables(tables) if tables else None
        if table is None:
            raise ValueError(f"{args.embeddings}: the store holds no rows")
        if args.out.endswith(".csv"):
            buf = io.BytesIO()
            pacsv.write_csv(table, buf)
            write_bytes(args.out, buf.getvalue())
        else:
            write_parquet(args.out, table)
    rule = ("no threshold" if head.threshold is None else
            f"threshold {head.threshold:.4f}, keep {head.keep}: {dropped} of {n} would be dropped as probe:{head.name}")
    print(f"scored {n} stored samples with {head.kind} head {args.head} ({rule})"
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr if not args.out else sys.stdout)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m curate.probe", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fit a head from a labelled table (key, label) against stored embeddings")
    t.add_argument("--embeddings", required=True, help="a score/laion_filter run folder, or its embeddings/ folder")
    t.add_argument("--labels", required=True, help=".csv or .parquet with columns key, label (0/1)")
    t.add_argument("--out", required=True, help="the head's state dict (HEAD.pt); HEAD.json is written beside it")
    t.add_argument("--kind", choices=("linear", "mlp"), default="linear")
    t.add_argument("--target", choices=TARGETS, default="image")
    t.add_argument("--holdout", type=float, default=0.2, help="fraction of each label held out for AUC and threshold")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--keep", choices=("above", "below"), default="above",
                   help="above: label 1 marks what to keep; below: label 1 marks what to drop")
    t.add_argument("--name", help="the head's name in reason probe:<name> (default: the file's stem)")
    s = sub.add_parser("score", help="score a run's stored embeddings with a head")
    s.add_argument("--embeddings", required=True, help="a score/laion_filter run folder, or its embeddings/ folder")
    s.add_argument("--head", required=True, help="a head state dict (HEAD.pt, with HEAD.json when it has one)")
    s.add_argument("--out", help="write key, shard_index, source_index, score, reason (.parquet or .csv); "
                                 "default: print them tab-separated")
    s.add_argument("--threshold", type=float, help="override the sidecar's threshold")
    args = ap.parse_args(argv)
    out_dir = os.path.dirname(args.out or "")
    if out_dir and fs.is_local(out_dir) and not fs.isdir(out_dir):
        print(f"error: --out {args.out}: the folder {out_dir} does not exist", file=sys.stderr)
        return 2
    try:
        return _train_main(args) if args.command == "train" else _score_main(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
