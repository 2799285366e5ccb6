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
"""
from __future__ import annotations

import glob
import os
import re

import numpy as np

from curate.records import stable

CONTAMINATED = "contaminated"
STAGE = "decontaminate"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class EvalSetError(ValueError):
    """The evaluation set cannot be read; the message is one line meant for the user."""


def _part(path: str) -> int:
    return int(re.search(r"_(\d+)\.npy$", path).group(1))


def check_eval_set(path: str) -> None:
    """Raise EvalSetError (one line) unless ``path`` is an evaluation set ``load_eval_set`` can read:
    the same checks, without loading embeddings or the scorer, so that a run can refuse it before
    touching its output folder."""
    if path.endswith(".npy") and os.path.isfile(path):
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) != 2:
            raise EvalSetError(f"eval set {path!r}: expected a 2-d array of embeddings, got shape {shape}")
        return
    if not os.path.isdir(path):
        raise EvalSetError(f"eval set {path!r} is neither a .npy file nor a folder")
    if glob.glob(os.path.join(path, "img_emb", "img_emb_*.npy")):
        return
    if not any(f.lower().endswith(IMAGE_SUFFIXES) for f in glob.iglob(os.path.join(path, "**", "*"), recursive=True)):
        raise EvalSetError(f"eval set {path!r} holds no img_emb/*.npy and no image files ({', '.join(IMAGE_SUFFIXES)})")


def load_eval_set(path: str, embed_images=None) -> tuple[np.ndarray, list[str]]:
    """(embeddings (n, d) float32, a name per row) of the evaluation set at ``path``.

    ``embed_images(list of file paths) -> (n, d) array`` embeds a folder of images (the scorer).
    """
    if path.endswith(".npy") and os.path.isfile(path):
        emb = np.load(path)
        if emb.ndim != 2:
            raise EvalSetError(f"eval set {path!r}: expected a 2-d array of embeddings, got shape {emb.shape}")
        return emb.astype(np.float32), [f"row:{i}" for i in range(len(emb))]
    if not os.path.isdir(path):
        raise EvalSetError(f"eval set {path!r} is neither a .npy file nor a folder")
    parts = sorted(glob.glob(os.path.join(path, "img_emb", "img_emb_*.npy")), key=_part)
    if parts:
        import pyarrow.parquet as pq

        embs, names = [], []
        for p in parts:
            emb = np.load(p).astype(np.float32)
            meta = os.path.join(path, "metadata", f"metadata_{_part(p)}.parquet")
            keys = pq.read_table(meta, columns=["key"]).column("key").to_pylist() if os.path.exists(meta) else None
            if keys is not None and len(keys) != len(emb):
                raise EvalSetError(f"eval set {path!r}: {meta} has {len(keys)} rows for {len(emb)} embeddings")
            embs.append(emb)
            names += keys or [f"{os.path.basename(p)}:{i}" for i in range(len(emb))]
        return np.concatenate(embs), names
    files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise EvalSetError(f"eval set {path!r} holds no img_emb/*.npy and no image files ({', '.join(IMAGE_SUFFIXES)})")
    if embed_images is None:
        raise EvalSetError(f"eval set {path!r} holds images; embedding them needs the scorer")
    return np.asarray(embed_images(files), dtype=np.float32), [os.path.relpath(f, path) for f in files]


def nearest_eval(emb: np.ndarray, eval_emb: np.ndarray) -> tuple[int, float]:
    """(index, cosine to 4 decimals) of the evaluation image closest to one embedding."""
    sims = eval_emb @ np.asarray(emb, dtype=np.float32)
    best = int(np.argmax(sims))  # the first of equal maxima: the same answer on every run
    return best, stable(sims[best])


def is_contaminated(similarity: float, threshold: float) -> bool:
    """At or above ``threshold`` the image counts as a copy of the evaluation image."""
    return similarity >= threshold
