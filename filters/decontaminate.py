"""Decontamination: drop training samples whose image is a near copy of an evaluation image.

Rule: a sample is contaminated when the cosine (4 decimals) of its CLIP image embedding to any
image of the evaluation set is at least ``threshold``; the decision names the closest evaluation
item. Benchmarks built from web images (and the web corpora used to train on) share pictures;
DataComp and LAION removed evaluation images the same way, by CLIP image-embedding similarity.

The evaluation set is one of:
- a ``.npy`` file of L2-normalised image embeddings (rows named ``row:<i>``);
- a folder in clip-retrieval's layout (``img_emb/img_emb_*.npy``, optionally
  ``metadata/metadata_*.parquet`` with a ``key`` column), e.g. a score run's ``embeddings/``;
- a folder of image files (jpg, jpeg, png, webp), embedded with the run's scorer.
The embeddings must come from the same model as the corpus's: they are compared as they are.
The path is local or any fsspec URL (gs://, s3://, memory:// ...): it is read through curate.fs,
as every other path is.
"""
from __future__ import annotations

import io
import os
import re

import numpy as np

from curate import fs
from curate.io import npy_shape
from curate.records import stable

CONTAMINATED = "contaminated"
STAGE = "decontaminate"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class EvalSetError(ValueError):
    """The evaluation set cannot be read; the message is one line meant for the user."""


def _part(path: str) -> int:
    return int(re.search(r"_(\d+)\.npy$", path).group(1))


def _is_npy_file(path: str) -> bool:
    return path.endswith(".npy") and fs.isfile(path)


def _load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(fs.read_bytes(path)))


def _image_files(folder: str) -> list[str]:
    """Image files anywhere under ``folder``, sorted."""
    return sorted(f for f in fs.walk_files(folder) if f.lower().endswith(IMAGE_SUFFIXES))


def _relative(path: str, root: str) -> str:
    """``path``, found under ``root`` by fs.walk_files, relative to ``root`` ('/'-separated for URLs,
    whose listing spells the root its own way: memory://ev lists memory:///ev/...)."""
    if fs.is_local(root):
        return os.path.relpath(path, fs.local_path(root))
    inside = root.split("://", 1)[1].strip("/")
    return path.split("://", 1)[1].lstrip("/")[len(inside) + 1:]


def check_eval_set(path: str) -> None:
    """Raise EvalSetError (one line) unless ``path`` (local or an fsspec URL) is an evaluation set
    ``load_eval_set`` can read: the same checks, without loading embeddings or the scorer, so that a
    run can refuse it before touching its output folder."""
    if _is_npy_file(path):
        shape = npy_shape(path)
        if len(shape) != 2:
            raise EvalSetError(f"eval set {path!r}: expected a 2-d array of embeddings, got shape {shape}")
        return
    if not fs.isdir(path):
        raise EvalSetError(f"eval set {path!r} is neither a .npy file nor a folder")
    if fs.glob(fs.join(path, "img_emb", "img_emb_*.npy")):
        return
    if not _image_files(path):
        raise EvalSetError(f"eval set {path!r} holds no img_emb/*.npy and no image files ({', '.join(IMAGE_SUFFIXES)})")


def load_eval_set(path: str, embed_images=None) -> tuple[np.ndarray, list[str]]:
    """(embeddings (n, d) float32, a name per row) of the evaluation set at ``path`` (local or an
    fsspec URL, through curate.fs like every other path).

    ``embed_images(list of file paths) -> (n, d) array`` embeds a folder of images (the scorer).
    """
    if _is_npy_file(path):
        emb = _load_npy(path)
        if emb.ndim != 2:
            raise EvalSetError(f"eval set {path!r}: expected a 2-d array of embeddings, got shape {emb.shape}")
        return emb.astype(np.float32), [f"row:{i}" for i in range(len(emb))]
    if not fs.isdir(path):
        raise EvalSetError(f"eval set {path!r} is neither a .npy file nor a folder")
    parts = sorted(fs.glob(fs.join(path, "img_emb", "img_emb_*.npy")), key=_part)
    if parts:
        from curate.io import read_parquet

        embs, names = [], []
        for p in parts:
            emb = _load_npy(p).astype(np.float32)
            meta = fs.join(path, "metadata", f"metadata_{_part(p)}.parquet")
            keys = read_parquet(meta, columns=["key"]).column("key").to_pylist() if fs.exists(meta) else None
            if keys is not None and len(keys) != len(emb):
                raise EvalSetError(f"eval set {path!r}: {meta} has {len(keys)} rows for {len(emb)} embeddings")
            embs.append(emb)
            names += keys or [f"{fs.basename(p)}:{i}" for i in range(len(emb))]
        return np.concatenate(embs), names
    files = _image_files(path)
    if not files:
        raise EvalSetError(f"eval set {path!r} holds no img_emb/*.npy and no image files ({', '.join(IMAGE_SUFFIXES)})")
    if embed_images is None:
        raise EvalSetError(f"eval set {path!r} holds images; embedding them needs the scorer")
    return np.asarray(embed_images(files), dtype=np.float32), [_relative(f, path) for f in files]


def nearest_eval(emb: np.ndarray, eval_emb: np.ndarray) -> tuple[int, float]:
    """(index, cosine to 4 decimals) of the evaluation image closest to one embedding."""
    sims = eval_emb @ np.asarray(emb, dtype=np.float32)
    best = int(np.argmax(sims))  # the first of equal maxima: the same answer on every run
    return best, stable(sims[best])


def is_contaminated(similarity: float, threshold: float) -> bool:
    """At or above ``threshold`` the image counts as a copy of the evaluation image."""
    return similarity >= threshold
