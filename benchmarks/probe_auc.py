"""How well probes trained on a few hundred labels separate a property, and what scoring with a head costs.

    python benchmarks/probe_auc.py [--samples 1000] [--labels 300] [--noise 0.3] [--seed 0]

Writes the built-in corpus (``curate.synth``, ``--noise`` of it labelled noise) to a temporary
folder, scores it with the demo scorer (the score pipeline, which stores 64-d image and text
embeddings), then for each property below takes ``--labels`` scored keys at random as the
"human" labels (their truth from the corpus's ``ground_truth.parquet``) and runs
``curate.probe.train`` (held-out fraction 0.2) for each kind and target. It prints the held-out AUC
(what ``python -m curate.probe train`` reports, on 20% of the labels) and the AUC on every scored
sample that was not labelled, and the time of each fit. Properties: ``red``, ``large``, ``circle``
(a red / large / circle object in the scene), ``mismatched`` (the caption describes another
image), ``boilerplate`` (a boilerplate caption). Last, the cost of scoring with a head: rows per
second of ``Head.score`` for a trained linear head on the store, and for a random head in
improved-aesthetic-predictor's layout on 100,000 random 768-d rows (ViT-L/14's width).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from curate import probe, run, synth

PROPERTIES = {
    "red": lambda row, groups: any(g["colour"] == "red" for g in groups),
    "large": lambda row, groups: any(g["size"] == "large" for g in groups),
    "circle": lambda row, groups: any(g["shape"] == "circle" for g in groups),
    "mismatched": lambda row, groups: row["kind"] == "mismatched_caption",
    "boilerplate": lambda row, groups: row["kind"] == "boilerplate_caption",
}
FITS = [("linear", "image"), ("linear", "text"), ("linear", "both"), ("mlp", "both")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="probe_auc_") as tmp:
        corpus, scored = os.path.join(tmp, "corpus"), os.path.join(tmp, "scored")
        truth_path = synth.generate(corpus, args.samples, seed=args.seed, noise=args.noise, shard_size=250)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            run.run(["--pipeline", "score", "--input", corpus, "--output", scored])
        score_s = time.perf_counter() - t0
        truth = {r["key"]: r for r in pq.read_table(truth_path).to_pylist()}
        emb_dir = probe.embeddings_dir(scored)
        parts = [probe.read_part(emb_dir, p) for p in probe.list_parts(emb_dir)]
        keys = [k for p in parts for k in p.keys]
        image = np.concatenate([p.image for p in parts])
        text = np.concatenate([p.text for p in parts])
        rng = np.random.default_rng(args.seed)
        labelled = set(rng.choice(keys, size=min(args.labels, len(keys)), replace=False).tolist())
        rest = np.array([k not in labelled for k in keys])
        for prop, rule in PROPERTIES.items():
            truth_of = {k: int(rule(truth[k], json.loads(truth[k]["scene"]))) for k in keys}
            y = np.array([truth_of[k] for k in keys])
            labels = {k: truth_of[k] for k in labelled}
            for kind, target in FITS:
                t0 = time.perf_counter()
                result = probe.train(scored, labels, kind=kind, target=target, holdout=0.2, seed=args.seed)
                fit_s = time.perf_counter() - t0
                scores = result.head.score(image[rest] if "image" in result.head.dims else None,
                                           text[rest] if "text" in result.head.dims else None)
                rows.append((prop, kind, target, int(y.sum()), len(y), result.auc, probe.auc(scores, y[rest]), fit_s))
        head = probe.train(scored, {k: int(truth[k]["kind"] == "clean") for k in labelled}).head
        t0 = time.perf_counter()
        for _ in range(20):
            head.score(image)
        store_rate = 20 * len(image) / (time.perf_counter() - t0)
    aesthetic = aesthetic_head(args.seed)
    big = np.random.default_rng(args.seed).normal(size=(100_000, 768)).astype(np.float16)
    t0 = time.perf_counter()
    aesthetic.score(big)
    aesthetic_rate = len(big) / (time.perf_counter() - t0)

    print(f"{args.samples} corpus samples (noise {args.noise}), {len(keys)} scored by the demo scorer in "
          f"{score_s:.1f} s; {len(labelled)} labelled, {int(rest.sum())} unlabelled; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| property | kind | target | positives (all scored) | held-out AUC (20% of labels) | AUC on unlabelled | fit s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for prop, kind, target, pos, n, held, unl, fit_s in rows:
        held_text = "n/a" if held is None else f"{held:.3f}"
        print(f"| {prop} | {kind} | {target} | {pos}/{n} | {held_text} | {unl:.3f} | {fit_s:.2f} |")
    print(f"Head.score: linear head on the stored 64-d image embeddings {store_rate:,.0f} rows/s; "
          f"improved-aesthetic-predictor layout (768-1024-128-64-16-1) on 768-d float16 rows {aesthetic_rate:,.0f} rows/s "
          "(numpy; layers without an activation between them are evaluated as one product, probe.compose)")
    return 0


def aesthetic_head(seed: int) -> probe.Head:
    """A random head in improved-aesthetic-predictor's layout (its real weights are not downloaded)."""
    rng = np.random.default_rng(seed)
    widths = [768, 1024, 128, 64, 16, 1]
    state = {}
    for index, (a, b) in zip(probe._AESTHETIC_LINEARS, zip(widths, widths[1:])):
        state[f"layers.{index}.weight"] = rng.normal(size=(b, a)).astype(np.float32) / np.sqrt(a)
        state[f"layers.{index}.bias"] = np.zeros(b, np.float32)
    return probe.head_from_state_dict(state, name="aesthetic")


if __name__ == "__main__":
    sys.exit(main())
