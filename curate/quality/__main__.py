"""python -m curate.quality: does curation make better training data? Train and evaluate to see.

    python -m curate.quality [--out Q]                                  # DataComp in a box
    python -m curate.quality --subset raw=RAW_SHARDS --subset curated=OUT/shards [--eval DIR] [--out Q]

Every subset trains the same open_clip model (open_clip_train) for the same number of samples seen,
once per seed; every checkpoint is evaluated on the same suite with clip_benchmark's metrics.
Writes Q/results.json, Q/results.md and Q/results.png. With no --subset, the subsets are made
here: a sample pool of the built-in corpus, laion_filter's default recipe and its ablations
(curate/quality/subsets.py RECIPES), and the raw pool. With no --eval, the built-in evaluation
suite (curate/quality/evalsets.py) is generated from a seed disjoint from the pool's.
A rerun with the same settings reuses every finished subset, checkpoint and evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from curate import synth
from curate.models.clip import TINY_MODEL
from curate.quality import evalsets, results, subsets
from curate.quality.evaluate import EvalSuiteError, discover, evaluate_checkpoint
from curate.quality.training import (
    Subset,
    TrainSettings,
    samples_seen_for,
    train,
    trainable_samples,
)

POOL_SEED, EVAL_SEED = 2000, 3000  # apart from the tests' corpora (0, 1, ...) and the demo scorer's (1000)
SETTINGS = "settings.json"


class QualityError(ValueError):
    """A wrong argument or a folder that cannot be used; one line, printed before any work."""


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m curate.quality", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="quality", help="output folder (default: ./quality)")
    ap.add_argument("--subset", action="append", default=[], metavar="NAME=DIR",
                    help="a training subset: a folder of WebDataset tars (repeat; none = DataComp in a box)")
    ap.add_argument("--eval", action="append", default=[], metavar="DIR",
                    help="an evaluation dataset in clip_benchmark's WebDataset layout, or a folder of them "
                         "(repeat; none = the built-in suite)")
    ap.add_argument("--seeds", type=int, default=3, help="training runs per subset (seeds 0..N-1)")
    ap.add_argument("--samples-seen", type=int, default=24000, help="samples every training run sees")
    ap.add_argument("--model", default=TINY_MODEL, help="open_clip architecture trained from scratch")
    ap.add_argument("--batch-size", type=int, default=64, help="open_clip_train's batch size")
    ap.add_argument("--lr", type=float, default=1e-3, help="open_clip_train's peak learning rate (cosine schedule, "
                    "5%% warm-up)")
    ap.add_argument("--workers", type=int, default=2, help="open_clip_train data-loader workers (decoding runs there)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    box = ap.add_argument_group("DataComp in a box (no --subset)")
    box.add_argument("--pool-samples", type=int, default=8000, help="size of the built-in sample pool")
    box.add_argument("--noise", type=float, default=0.3, help="noisy share of the pool (curate.synth's default)")
    box.add_argument("--recipes", default=",".join(subsets.DEFAULT_RECIPES),
                     help=f"laion_filter recipes to compare with the raw pool (of {', '.join(subsets.RECIPES)})")
    box.add_argument("--mix", choices=synth.MIXES, default="default",
                     help="the pool's mix (curate.synth): skewed = 12 languages with a long tail of languages and "
                          "concepts; the built-in suite then covers all 12 languages")
    suite = ap.add_argument_group("built-in evaluation suite (no --eval)")
    suite.add_argument("--eval-images", type=int, default=500, help="images per concept task")
    suite.add_argument("--eval-pairs", type=int, default=500, help="retrieval pairs per language")
    return ap.parse_args(argv)


def _subsets(args) -> list[Subset]:
    out, names = [], set()
    for item in args.subset:
        name, sep, path = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path:
            raise QualityError(f"--subset {item!r}: expected NAME=DIR (NAME: letters, digits, _ . -)")
        if name in names:
            raise QualityError(f"--subset {name} is given twice")
        subset = Subset(name, os.path.normpath(os.path.abspath(path)))
        if not os.path.isdir(path) or not subset.tars():
            raise QualityError(f"--subset {item}: {path} is not a folder of .tar shards")
        if not any(trainable_samples(tar) for tar in subset.tars()):
            raise QualityError(f"--subset {item}: no sample with an image (jpg, png, jpeg, webp) and a txt caption "
                               "under one key, as open_clip_train reads them")
        names.add(name)
        out.append(subset)
    return out


def _recipes(args) -> list[str]:
    names = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in names if r not in subsets.RECIPES]
    if unknown or not names:
        raise QualityError(f"--recipes {args.recipes!r}: choose among {', '.join(subsets.RECIPES)}")
    return [subsets.DEFAULT] + [r for r in names if r != subsets.DEFAULT]  # the default run scores the pool


def check(args) -> tuple[list[Subset], list[str]]:
    """Everything that can be wrong with the arguments, before any work."""
    for flag in ("seeds", "samples_seen", "batch_size", "pool_samples", "eval_images", "eval_pairs"):
        if getattr(args, flag) < 1:
            raise QualityError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        raise QualityError("--workers must be 0 or more")
    if not args.lr > 0:
        raise QualityError("--lr must be above 0")
    if not 0 <= args.noise <= 1:
        raise QualityError("--noise must be within [0, 1]")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise QualityError("--device cuda: no CUDA device is visible")
    names = [d.name for e in args.eval for d in discover(e)]
    if len(set(names)) != len(names):
        raise QualityError("two --eval datasets share a folder name; clip_benchmark names them by it")
    return _subsets(args), ([] if args.subset else _recipes(args))


def _identity(args, given: list[Subset], device: str) -> dict:
    """What a finished checkpoint or subset in --out depends on: a rerun must match it."""
    keys = ["samples_seen", "model", "batch_size", "lr", "workers", "mix"]
    if not args.subset:
        keys += ["pool_samples", "noise"]
    if not args.eval:
        keys += ["eval_images", "eval_pairs"]
    where = {"subset": [f"{s.name}={s.path}" for s in given],  # absolute: raw=raw is raw=/x/raw
             "eval": [os.path.normpath(os.path.abspath(e)) for e in args.eval]}
    return {**where, **{k: getattr(args, k) for k in keys}, "device": device}


def _claim(out: str, identity: dict) -> None:
    path = os.path.join(out, SETTINGS)
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        if held != identity:
            diff = ", ".join(sorted(k for k in set(held) | set(identity) if held.get(k) != identity.get(k)))
            raise QualityError(f"{out} holds a comparison with other settings ({diff}); use another --out")
        return
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(identity, f, indent=2, sort_keys=True)


def _suite_languages(args) -> list[str]:
    """The built-in suite's languages: the pool's (--subset runs: the default corpus's)."""
    return synth.ALL_LANGUAGES if getattr(args, "mix", "default") == "skewed" else synth.LANGUAGES


def _datasets(args, out: str):
    if args.eval:
        return [d for e in args.eval for d in discover(e)]
    suite = os.path.join(out, "eval")
    done = os.path.join(suite, "complete")
    if not os.path.exists(done):
        print(f"[quality] writing the built-in evaluation suite to {suite}", flush=True)
        evalsets.write_suite(suite, EVAL_SEED, args.eval_images, args.eval_pairs, _suite_languages(args))
        open(done, "w").close()
    return discover(suite)


def _make_subsets(args, recipes: list[str], datasets, out: str) -> tuple[list[Subset], dict]:
    """DataComp in a box: pool, recipes (decontaminated against the suite), raw pool; and the hygiene record."""
    print(f"[quality] sample pool: {args.pool_samples:,} samples of the built-in corpus (seed {POOL_SEED})", flush=True)
    pool = subsets.make_pool(os.path.join(out, "pool"), args.pool_samples, POOL_SEED, args.noise, args.mix)
    images = subsets.export_eval_images([d.path for d in datasets], os.path.join(out, "hygiene", "eval_images"))
    emb = subsets.embed_eval_images(images, os.path.join(out, "hygiene", "eval_embeddings.npy"))
    made = {}
    for name in recipes:
        scores = None if name == subsets.DEFAULT else made[subsets.DEFAULT].path.rsplit(os.sep, 1)[0]
        made[name] = subsets.run_recipe(name, pool, os.path.join(out, "subsets", name), emb, scores)
    contaminated = subsets.pool_contamination(
        os.path.join(out, "subsets", subsets.DEFAULT, "embeddings"), emb)
    raw = subsets.raw_subset(pool, contaminated, os.path.join(out, "subsets", subsets.RAW))
    hygiene = {"eval_images": len(os.listdir(images)), "threshold": subsets.DECONTAMINATION_THRESHOLD,
               "pool_samples_near_an_eval_image": len(contaminated), "removed_from_raw": contaminated[:100],
               "curated_subsets": "laion_filter decontaminate.eval_set (see each subset's report.json)"}
    print(f"[quality] hygiene: {len(contaminated)} of the pool's images are within cosine "
          f"{subsets.DECONTAMINATION_THRESHOLD} of one of {hygiene['eval_images']:,} evaluation images"
          + (" (removed from every subset)" if contaminated else ""), flush=True)
    return [raw, *(made[n] for n in recipes)], hygiene


def _evaluate(run_dir: str, model: str, checkpoint: str, datasets, device: str, label: str) -> dict:
    path = os.path.join(run_dir, "eval.json")
    names = sorted(d.name for d in datasets)
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if sorted(cached) == names:
            return cached
    t0 = time.time()
    metrics = evaluate_checkpoint(model, checkpoint, datasets, device)
    with open(path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    print(f"[quality] {label}: evaluated on {len(datasets)} datasets in {time.time() - t0:.0f}s", flush=True)
    return metrics


def run(args) -> dict:
    given, recipes = check(args)
    import torch
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out
    identity = _identity(args, given, device)
    _claim(out, identity)
    t0 = time.time()
    datasets = _datasets(args, out)
    hygiene = None
    chosen = given or None
    if chosen is None:
        chosen, hygiene = _make_subsets(args, recipes, datasets, out)
    settings = TrainSettings(args.model, args.samples_seen, args.batch_size, args.lr, args.workers, device)
    seen = samples_seen_for(settings)
    if seen != args.samples_seen:
        print(f"[quality] every run trains on {seen:,} samples: --samples-seen {args.samples_seen:,} rounded up to "
              f"whole batches of {args.batch_size} per data-loader worker, as open_clip_train does", flush=True)
    runs_dir = os.path.join(out, "runs")
    total = len(chosen) * args.seeds
    runs, unique = [], {}
    for i, (subset, seed) in enumerate((s, seed) for s in chosen for seed in range(args.seeds)):
        label = f"train {subset.name} seed {seed} ({i + 1}/{total})"
        checkpoint = train(subset, settings, seed, runs_dir, label)
        metrics = _evaluate(os.path.dirname(os.path.dirname(checkpoint)), args.model, checkpoint, datasets,
                            device, label)
        if subset.name not in unique:
            unique[subset.name] = subset.unique_samples()  # scans the tars: once per subset
        runs.append(results.Run(subset.name, seed, unique[subset.name], seen, metrics))
    extra = {"settings": {**identity, "samples_seen_exact": seen, "seeds": args.seeds},
             "hygiene": hygiene, "wall_seconds": round(time.time() - t0, 1)}
    summary = results.write(out, runs, datasets, extra)
    print(results.markdown(summary, datasets).split("\n\n")[0])
    print(f"[quality] {total} training runs in {time.time() - t0:.0f}s; wrote {out}/results.json, results.md, "
          "results.png")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (QualityError, EvalSuiteError, subsets.RecipeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished subsets, checkpoints and evaluations are kept; the same command resumes",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
