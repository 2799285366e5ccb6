"""Reduced-size JPEG decoding: speed and agreement with the full decode, for scoring and for ingest.

    python benchmarks/decode_speed.py [--builtin 2000] [--web 1000] [--repeats 2] [--workers 1]
                                      [--images 200] [--work DIR]

1. laion_filter end to end (the real CLI, a subprocess per run, demo scorer), ``scorer.decode: cpu``
   (full decode) against ``cpu_fast`` (JPEGs at least twice the model's input decoded at 1/2-1/8
   scale), run alternately ``--repeats`` times on two corpora: the built-in sample corpus
   (``curate.synth``, 256-px scenes, seed 5, as benchmarks/demo_scorer.py) and web-sized photos
   (benchmarks/web_images.py: 1024x768 JPEGs cut from the photographs in scikit-image's and
   scikit-learn's wheels). Prints the median pipeline seconds (report.json) and their ratio.
2. Agreement of the two modes on each corpus (the last repeat's decisions): absolute CLIP-score
   differences (percentiles), samples on the other side of the default threshold
   (``select.clip_threshold``), final decisions (kept / reason) that differ, perceptual-hash bits
   that differ (near dedup's copy signal), and whether every width and height is the same.
3. In one process, alternately, per image on the web-sized photos: decode + CLIP preprocessing
   (filters.image.decode_image + the demo scorer's transform) full vs reduced; and ingest's resize
   (img2dataset's Resizer vs curate.ingest.resize.ReducedDecodeResizer) at the benchmark's setting
   (256, keep_ratio) and at ingest's defaults (512, keep_ratio_largest), with the PSNR and SSIM of
   the reduced path's output against the full path's (same size).

Nothing here is a pass/fail test; the load average is printed before and after, since the ratios
measured within one run are what a shared machine leaves meaningful.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from agreement import agreement, decisions  # noqa: E402
from web_images import web_corpus, web_jpegs  # noqa: E402

from curate import synth  # noqa: E402

MODES = ("cpu", "cpu_fast")


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def laion_filter(corpus: str, out: str, mode: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--input", corpus, "--output", out,
           "--overwrite", "--set", f"scorer.decode={mode}"]
    if workers > 1:
        cmd += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    t0 = time.time()
    # Not from the checkout's root: its curate/ folder would shadow the installed package's layout.
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(ROOT), check=False)
    if p.returncode:
        raise SystemExit(f"laion_filter failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    return {"process": time.time() - t0, "pipeline": report["time"]["wall_seconds"],
            "decode_cpu": report["time"].get("stage_cpu_seconds", {}).get("decode", float("nan")),
            "threshold": report["config"]["select.clip_threshold"]}


def end_to_end(name: str, corpus: str, args) -> tuple[list[str], dict]:
    runs = {m: [] for m in MODES}
    for rep in range(args.repeats):
        for mode in MODES:
            out = os.path.join(args.work, f"out-{name}-{mode}")
            before = load()
            r = laion_filter(corpus, out, mode, args.workers)
            runs[mode].append(r)
            print(f"  {name:<8} {mode:<8} run {rep + 1}: pipeline {r['pipeline']:.1f}s, process {r['process']:.1f}s, "
                  f"decode CPU {r['decode_cpu']:.1f}s, load {before} -> {load()}", flush=True)
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in ("pipeline", "process", "decode_cpu")}
           for m in MODES}
    lines = agreement(decisions(os.path.join(args.work, f"out-{name}-cpu")),
                      decisions(os.path.join(args.work, f"out-{name}-cpu_fast")), runs["cpu"][0]["threshold"])
    return lines, med


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def per_image(images: list[bytes], rounds: int = 3) -> list[str]:
    """Part 3: alternating in-process timings, images/s per path, and the resize outputs' PSNR/SSIM."""
    from curate.filters.image import decode_image
    from img2dataset.resizer import Resizer
    from PIL import Image
    from skimage.metrics import structural_similarity

    from curate.ingest.resize import ReducedDecodeResizer
    from curate.models import clip
    from curate.scoring import reduced_decode_size

    spec = clip.ScorerSpec()
    transform, target = clip.uint8_image_transform(spec), reduced_decode_size(spec, "cpu_fast")
    paths = {
        "decode + CLIP preprocess, full": lambda d: transform(decode_image(d).image),
        "decode + CLIP preprocess, reduced": lambda d: transform(decode_image(d, reduce_to=target).image),
    }
    resizers = {"256 keep_ratio": Resizer(256, "keep_ratio", False, encode_quality=95),
                "512 keep_ratio_largest": Resizer(512, "keep_ratio_largest", True, encode_quality=95)}
    for label, r in resizers.items():
        paths[f"ingest resize {label}, full"] = lambda d, r=r: r(io.BytesIO(d))
        paths[f"ingest resize {label}, reduced"] = lambda d, r=ReducedDecodeResizer(r): r(io.BytesIO(d))
    seconds = {p: [] for p in paths}
    for _ in range(rounds):
        for p, fn in paths.items():
            t0 = time.perf_counter()
            for d in images:
                fn(d)
            seconds[p].append(time.perf_counter() - t0)
    lines, names = [], list(paths)
    for full, reduced in zip(names[::2], names[1::2]):
        a, b = (len(images) / statistics.median(seconds[p]) for p in (full, reduced))
        lines.append(f"| {full.rsplit(',', 1)[0]} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    quality = []
    for label, r in resizers.items():
        scores = []
        for d in images:
            x = np.asarray(Image.open(io.BytesIO(r(io.BytesIO(d))[0])).convert("RGB"))
            y = np.asarray(Image.open(io.BytesIO(ReducedDecodeResizer(r)(io.BytesIO(d))[0])).convert("RGB"))
            assert x.shape == y.shape, (x.shape, y.shape)
            scores.append((psnr(x, y), structural_similarity(x, y, channel_axis=2, data_range=255)))
        p, s = np.array(scores).T
        quality.append(f"ingest resize {label}: output {x.shape[1]}x{x.shape[0]} in both; reduced vs full: PSNR "
                       f"median {np.median(p):.1f} dB, min {p.min():.1f} dB; SSIM median {np.median(s):.4f}, "
                       f"min {s.min():.4f}")
    return lines, quality


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builtin", type=int, default=2000, help="samples of the built-in corpus (0: skip)")
    ap.add_argument("--web", type=int, default=1000, help="web-sized photos (0: skip the end-to-end runs on them)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--images", type=int, default=200, help="web-sized photos for part 3")
    ap.add_argument("--work", default="work-tmp/decode-speed")
    args = ap.parse_args(argv)
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    print(f"load average before: {load()}; {os.cpu_count()} cores", flush=True)

    corpora = {}
    if args.builtin:
        corpora["builtin"] = os.path.join(args.work, f"builtin-{args.builtin}")
        if not os.path.exists(os.path.join(corpora["builtin"], "ground_truth.parquet")):
            synth.generate(corpora["builtin"], args.builtin, seed=5)
    if args.web:
        corpora["web"] = os.path.join(args.work, f"web-{args.web}")
        if not glob.glob(os.path.join(corpora["web"], "*.tar")):
            web_corpus(corpora["web"], args.web)
    results = {name: end_to_end(name, path, args) for name, path in corpora.items()}
    per, quality = per_image(web_jpegs(args.images, seed=1))
    print(f"load average after: {load()}")

    print(f"\n1. laion_filter end to end, demo scorer, {args.workers} worker process(es), median of {args.repeats}")
    print("| corpus | samples | cpu: pipeline s | cpu_fast: pipeline s | speed-up | cpu: decode CPU s | "
          "cpu_fast: decode CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    sizes = {"builtin": f"{args.builtin} (256 px)", "web": f"{args.web} (1024x768)"}
    for name, (_, med) in results.items():
        c, f = med["cpu"], med["cpu_fast"]
        print(f"| {name} | {sizes[name]} | {c['pipeline']:.1f} | {f['pipeline']:.1f} | "
              f"{c['pipeline'] / f['pipeline']:.2f}x | {c['decode_cpu']:.1f} | {f['decode_cpu']:.1f} |")
    print("\n2. agreement, cpu_fast against cpu")
    for name, (lines, _) in results.items():
        print(f"{name}:")
        for line in lines:
            print(f"  {line}")
    print(f"\n3. per image, one process, {args.images} web-sized photos (1024x768), alternating, median of 3")
    print("| path | full decode, images/s | reduced decode, images/s | ratio |")
    print("|---|---:|---:|---:|")
    for line in per:
        print(line)
    for line in quality:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
