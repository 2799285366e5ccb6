"""DataComp in a box: a sample pool, curated subsets of it by laion_filter recipes, and held-out hygiene.

The pool is the built-in synthetic corpus (curate.synth, with its labelled noise); each recipe is
laion_filter's default config plus a few ``--set`` overrides, so every ablation is one step away
from the default. The default recipe scores the pool once; the others reuse its stored scores
(``--set scores=...``), as a user re-selects without the model.

Hygiene: the evaluation images are embedded with the run's scorer and handed to laion_filter's
decontamination step (``decontaminate.eval_set``), so no curated subset keeps a near copy of one;
the raw pool is checked against them the same way (its stored embeddings, the same threshold),
and any pool sample that is a copy is removed from the raw subset too.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np

from curate import synth
from curate.io import iter_tar_groups, iter_tar_samples, write_tar
from curate.quality.training import Subset

RAW = "raw"
DEFAULT = "curated"
BALANCE = ("balance.enabled=true", "balance.cap=50")
LANGUAGE_TOP = ("select.mode=language_fraction", "select.fraction=0.5")
# Recipe name -> laion_filter --set overrides (the default recipe has none).
RECIPES: dict[str, tuple[str, ...]] = {
    DEFAULT: (),
    "no_clip_select": ("select.clip_threshold=-1",),
    "no_dedup": ("dedup.exact=false", "dedup.near=false", "dedup.url_caption=false"),
    "no_basic_filter": ("filters.min_image_size=0", "filters.max_aspect_ratio=1000000",
                        "filters.min_caption_words=0", "filters.min_caption_chars=0",
                        "filters.boilerplate_captions=false"),
    "clip_top30": ("select.mode=fraction", "select.fraction=0.3"),
    # Balancing (README "Balancing concepts and languages"), for a pool in the skewed mix (--mix skewed):
    # cap 50 keeps about 42% of the 8,000-sample pool's English captions and nearly all of every other
    # language; language_top keeps the top half of CLIP scores within each language.
    "balanced": BALANCE,
    "language_top": LANGUAGE_TOP,
    "language_top_balanced": (*LANGUAGE_TOP, *BALANCE),
}
# What `--recipes` runs unless told: the default recipe and the ablations of its steps.
DEFAULT_RECIPES = (DEFAULT, "no_clip_select", "no_dedup", "no_basic_filter", "clip_top30")
DECONTAMINATION_THRESHOLD = 0.96  # laion_filter's decontaminate.threshold default; passed explicitly


class RecipeError(RuntimeError):
    """A laion_filter run of a recipe failed; one line, its own output says why."""


def make_pool(out: str, samples: int, seed: int, noise: float, mix: str = "default") -> str:
    """The raw pool (curate.synth's corpus in ``mix``); reused when already complete."""
    if not os.path.exists(os.path.join(out, "ground_truth.parquet")):
        synth.generate(out, samples, seed=seed, noise=noise, shard_size=1000, processes=os.cpu_count() or 1,
                       mix=mix)
    return out


def export_eval_images(eval_folders: list[str], out: str) -> str:
    """Every distinct evaluation image as a file (the form decontaminate.eval_set embeds)."""
    os.makedirs(out, exist_ok=True)
    seen = set()
    for folder in eval_folders:
        for tar in sorted(os.listdir(os.path.join(folder, "test"))):
            if not tar.endswith(".tar"):
                continue
            for _key, fields in iter_tar_samples(os.path.join(folder, "test", tar)):
                ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in fields), None)
                if ext is None:
                    continue
                digest = hashlib.sha256(fields[ext]).hexdigest()[:20]
                if digest not in seen:
                    seen.add(digest)
                    with open(os.path.join(out, f"{digest}.{ext}"), "wb") as f:
                        f.write(fields[ext])
    return out


def embed_eval_images(images_dir: str, out_npy: str) -> str:
    """The evaluation images' embeddings by laion_filter's default scorer, as decontamination makes them."""
    if not os.path.exists(out_npy):
        from curate.models.clip import ScorerSpec
        from curate.pipelines.dedup import embed_image_files
        emb = embed_image_files(ScorerSpec())(sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir)))
        np.save(out_npy + ".tmp.npy", emb)
        os.replace(out_npy + ".tmp.npy", out_npy)
    return out_npy


def run_recipe(name: str, pool: str, out: str, eval_embeddings: str, scores: str | None) -> Subset:
    """laion_filter with one recipe; a finished run (its report.json) is reused."""
    if not os.path.exists(os.path.join(out, "report.json")):
        sets = [*RECIPES[name], f"decontaminate.eval_set={eval_embeddings}",
                f"decontaminate.threshold={DECONTAMINATION_THRESHOLD}"]
        # Stored scores name the shards they scored: such a run takes no --input.
        cmd = [sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--output", out,
               *(["--set", f"scores={scores}"] if scores else ["--input", pool])]
        for s in sets:
            cmd += ["--set", s]
        print(f"[quality] subset {name}: laion_filter {' '.join(RECIPES[name]) or '(default config)'}", flush=True)
        status = subprocess.run(cmd, check=False).returncode
        if status != 0:
            raise RecipeError(f"laion_filter exited {status} on recipe {name} (its messages are above)")
    return Subset(name, os.path.join(out, "shards"))


def pool_contamination(pool_embeddings: str, eval_embeddings: str) -> list[str]:
    """Keys of pool samples whose image is a near copy of an evaluation image (decontamination's rule)."""
    from curate.filters import decontaminate
    pool_emb, keys = decontaminate.load_eval_set(pool_embeddings)
    eval_emb = np.load(eval_embeddings).astype(np.float32)
    out = []
    for a in range(0, len(pool_emb), 4096):
        sims = pool_emb[a:a + 4096] @ eval_emb.T
        best = sims.max(axis=1)
        out += [keys[a + i] for i in np.flatnonzero(best >= DECONTAMINATION_THRESHOLD)]
    return out


def raw_subset(pool: str, drop_keys: list[str], out: str) -> Subset:
    """The pool as it is, or (when some of its images are evaluation copies) rewritten without them."""
    if not drop_keys:
        return Subset(RAW, pool)
    drop = set(drop_keys)
    os.makedirs(out, exist_ok=True)
    for tar in sorted(f for f in os.listdir(pool) if f.endswith(".tar")):
        members = [(g.key, g.fields) for g in iter_tar_groups(os.path.join(pool, tar)) if g.key not in drop]
        write_tar(os.path.join(out, tar), members)
    return Subset(RAW, out)
