"""Scoring throughput inside the Beam pipeline as a fraction of the raw model's forward throughput.

    python benchmarks/score_throughput.py [--work DIR]

For each model (the demo scorer, and ViT-B-32 with random weights: throughput does not depend on
the weights) and one batch size, it measures in one process:
  raw       model.encode_image + encode_text on tensors prepared beforehand (the ceiling)
  pipeline  the `score` pipeline end to end on the same samples: read, decode, preprocess,
            model, write embeddings (report.json's wall time: model loading and Beam's
            start-up included)
Also prints, per stage, both clocks of report.json (curate/timing.py), summed over workers: the
wall time inside each stage (``stage_wall_seconds``) and its CPU time (``stage_cpu_seconds``), and
the 1-minute load average before and after. Prints a table; nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from curate import run, synth  # noqa: E402
from curate.io import iter_tar_samples  # noqa: E402
from curate.models import clip  # noqa: E402


def raw_forward(spec: clip.ScorerSpec, corpus: str, batch: int, limit: int) -> float:
    model, transform, tok = clip.load_model(spec), clip.image_transform(spec), clip.tokenizer(spec.model)
    images, captions = [], []
    for path in sorted(glob.glob(os.path.join(corpus, "*.tar"))):
        for _k, f in iter_tar_samples(path):
            try:
                images.append(transform(Image.open(io.BytesIO(f["jpg"])).convert("RGB")))
                captions.append(f["txt"].decode())
            except Exception:
                continue
    images, tokens = torch.stack(images[:limit]), tok(captions[:limit])
    clip.encode(model, spec, images[:batch], tokens[:batch])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(images), batch):
        clip.encode(model, spec, images[s:s + batch], tokens[s:s + batch])
    return len(images) / (time.perf_counter() - t0)


def pipeline(model: str, pretrained: str, corpus: str, out: str, batch: int) -> tuple[float, dict]:
    report = run.run(["--pipeline", "score", "--input", corpus, "--output", out, "--overwrite",
                      "--set", f"scorer.model={model}", "--set", f"scorer.pretrained={pretrained}",
                      "--set", f"scorer.batch_size={batch}"])
    scored = report["counts"]["kept"]
    return scored / report["time"]["wall_seconds"], report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="work-tmp/bench-score")
    ap.add_argument("--demo-samples", type=int, default=3000)
    ap.add_argument("--vit-samples", type=int, default=320)
    args = ap.parse_args()
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for name, model, pretrained, n, batch in (
            ("demo scorer", clip.DEMO_MODEL, "demo", args.demo_samples, 64),
            ("ViT-B-32 (random weights)", "ViT-B-32", "random", args.vit_samples, 32)):
        corpus = os.path.join(args.work, f"corpus-{n}")
        if not os.path.exists(os.path.join(corpus, "ground_truth.parquet")):
            synth.generate(corpus, n, seed=3, noise=0.0, processes=os.cpu_count() or 1)
        t0 = time.perf_counter()
        pipe_rate, report = pipeline(model, pretrained, corpus, os.path.join(args.work, f"out-{model}"), batch)
        pipe_wall = time.perf_counter() - t0
        raw_rate = raw_forward(clip.ScorerSpec(model=model, pretrained=pretrained), corpus, batch, n)
        rows.append((name, batch, report["counts"]["kept"], raw_rate, pipe_rate, pipe_wall, report["time"]))
    print(f"machine: {os.cpu_count()} cores, CPU only; torch threads {torch.get_num_threads()}")
    print(f"{'model':<27} {'batch':>5} {'samples':>7} {'raw/s':>8} {'pipeline/s':>10} {'fraction':>8}")
    for name, batch, n, raw, pipe, _wall, times in rows:
        print(f"{name:<27} {batch:>5} {n:>7} {raw:>8.1f} {pipe:>10.1f} {pipe / raw:>8.2f}")
        for label, key in (("stage wall s (wall clock inside each stage)", "stage_wall_seconds"),
                           ("stage CPU s  (CPU time inside each stage)  ", "stage_cpu_seconds")):
            print(f"{'':>4}{label}: " + (", ".join(f"{k} {v:.1f}" for k, v in times.get(key, {}).items()) or "n/a"))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(json.dumps({"note": "pipeline/s counts the whole run (read, decode, preprocess, encode, write)"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
