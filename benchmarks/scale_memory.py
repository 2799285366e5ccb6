"""Peak memory of every process of laion_filter on stored scores, at growing corpus sizes (issue 15 item 7).

    python benchmarks/scale_memory.py                          # 20k, 100k, 300k samples (the full run)
    python benchmarks/scale_memory.py --sizes 500,1000         # a check of the script itself

For each size it builds (once, cached under --work) a corpus of distinct 16x16 random-noise JPEGs
with captions in raw shards (img2dataset layout, --shard-size samples each) and a stored-scores
folder in clip-retrieval's layout as a ``score`` run writes it (``curate.embeddings.write_part``):
random unit image embeddings of the demo scorer's dimension, text embeddings at a cosine drawn from
[0.3, 0.9] to their image's, the clip_score of the two stored float16 vectors, the image's real
sha256 and perceptual hash. No model runs. Then, per selection mode (threshold, fraction), it runs

    python -m curate.run --pipeline laion_filter --set scores=SCORES --output OUT --overwrite \
        --set filters.min_image_size=16 [--set select.mode=fraction] \
        --direct_running_mode=multi_processing --direct_num_workers=2

(the CLI hands the last two flags to Beam; ``filters.min_image_size=16`` lets the 16 px images
through the basic filter, whose other rules they pass) and polls /proc every 0.2 s for every
process of the run: the CLI process (which also runs Beam's local runner) and its worker processes
(curate.local_worker, Beam's SDK worker). Each process's peak RSS is the kernel's VmHWM. Prints,
per size and mode, the peak RSS of every process, and per mode the ratio of the largest worker's peak RSS at the
biggest size to that at the smallest. Target (issue 15): at most 1.2.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from proctree import is_beam_worker, run_monitored  # noqa: E402

TARGET = 1.2
TARGET_SIZES = (20_000, 300_000)  # the target compares these two sizes
MODES = {"threshold": [], "fraction": ["--set", "select.mode=fraction"]}
WORDS = ("red", "blue", "green", "small", "large", "round", "square", "bright", "dark", "striped")


def demo_dim() -> int:
    """The demo scorer's embedding dimension, from its open_clip config."""
    with open(os.path.join(ROOT, "curate", "models", "curate-demo-64.json")) as f:
        return int(json.load(f)["embed_dim"])


def caption(i: int) -> str:
    """A distinct caption of at least three words for sample ``i``."""
    words = [WORDS[(i // 10 ** d) % 10] for d in range(6)]
    return f"a {' '.join(words)} pattern number {i}"


def write_shard(args) -> int:
    """Raw shard ``shard`` (samples [start, start + count)) and its stored-scores part."""
    from curate.filters import phash
    from PIL import Image

    from curate import embeddings
    from curate.io import sample_key, write_tar
    from curate.records import Sample, stable

    raw_dir, emb_dir, shard, start, count, dim = args
    rng = np.random.default_rng(shard)
    path = os.path.join(raw_dir, f"{shard:05d}.tar")
    members, samples = [], []
    img = rng.standard_normal((count, dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    other = rng.standard_normal((count, dim)).astype(np.float32)
    other -= np.sum(other * img, axis=1, keepdims=True) * img  # orthogonal to the image embedding
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    cos = rng.uniform(0.3, 0.9, size=(count, 1)).astype(np.float32)
    txt = cos * img + np.sqrt(1 - cos**2) * other
    img16, txt16 = img.astype(np.float16).astype(np.float32), txt.astype(np.float16).astype(np.float32)
    for m in range(count):
        i = start + m
        key = sample_key(i)
        buf = io.BytesIO()
        image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        image.save(buf, "JPEG", quality=90)
        data, text = buf.getvalue(), caption(i)
        members.append((key, {"jpg": data, "txt": text, "json": {"key": key, "caption": text}}))
        samples.append(Sample(key=key, shard_index=shard, shard_path=path, member_index=m, image_ext="jpg",
                              caption=text, language="en", width=16, height=16,
                              sha256=hashlib.sha256(data).hexdigest(), phash=phash.phash(image),
                              clip_score=stable(np.dot(img16[m], txt16[m])), image_format="JPEG",
                              image_embedding=img16[m], text_embedding=txt16[m]))
    write_tar(path, members)
    embeddings.write_part(emb_dir, shard, samples)
    return count


def build_corpus(folder: str, n: int, shard_size: int, processes: int) -> tuple[str, str]:
    """(raw shards folder, stored-scores folder) of an n-sample corpus; built once."""
    raw_dir, scores_dir = os.path.join(folder, "raw"), os.path.join(folder, "scores")
    done = os.path.join(folder, "complete")
    if not os.path.exists(done):
        emb_dir = os.path.join(scores_dir, "embeddings")
        os.makedirs(raw_dir, exist_ok=True)
        os.makedirs(emb_dir, exist_ok=True)
        jobs = [(raw_dir, emb_dir, s, a, min(shard_size, n - a), demo_dim())
                for s, a in enumerate(range(0, n, shard_size))]
        with ProcessPoolExecutor(processes) as pool:
            assert sum(pool.map(write_shard, jobs)) == n
        open(done, "w").close()
    return os.path.abspath(raw_dir), os.path.abspath(scores_dir)


def _short(cmd: str) -> str:
    """A process's command line, short: Beam starts each worker through ``/bin/sh -c``."""
    return "sh -c (worker launcher)" if cmd.split()[0].endswith("sh") else cmd[:60]


def run_once(scores: str, out: str, mode: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--set", f"scores={scores}",
           "--output", out, "--overwrite", "--set", "filters.min_image_size=16", *MODES[mode],
           "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    res, mon, wall = run_monitored(cmd, cwd=ROOT)
    if res.returncode:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{res.stdout[-3000:]}")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    root = min(mon.procs) if mon.procs else None
    procs = sorted(mon.procs.values(), key=lambda p: p["pid"])
    return {"wall_s": wall, "input": report["counts"]["input"], "kept": report["counts"]["kept"],
            "launcher_gb": mon.procs[root]["peak_rss"] / 2**30 if root else float("nan"),
            "workers_gb": [p["peak_rss"] / 2**30 for p in procs if is_beam_worker(p["cmd"])],
            "others": [(_short(p["cmd"]), p["peak_rss"] / 2**30) for p in procs
                       if p["pid"] != root and not is_beam_worker(p["cmd"])],
            "tree_gb": mon.peak_tree_rss / 2**30}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20000,100000,300000", help="comma-separated corpus sizes")
    ap.add_argument("--modes", default="threshold,fraction", help=f"comma-separated, of {sorted(MODES)}")
    ap.add_argument("--workers", type=int, default=2, help="Beam worker processes")
    ap.add_argument("--shard-size", type=int, default=2000, help="samples per raw shard")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="processes building the corpora")
    ap.add_argument("--work", default="work-tmp/bench-scale-memory")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    modes = args.modes.split(",")
    print(f"machine: {os.cpu_count()} cores; load before: {os.getloadavg()[0]:.2f} (1-min average)", flush=True)
    rows = []
    for n in sizes:
        _raw, scores = build_corpus(os.path.join(args.work, f"corpus-{n}"), n, args.shard_size, args.processes)
        for mode in modes:
            r = run_once(scores, os.path.abspath(os.path.join(args.work, f"out-{n}-{mode}")), mode, args.workers)
            rows.append({"n": n, "mode": mode, **r})
            print(json.dumps(rows[-1]), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print()
    print(f"laion_filter on stored scores, {args.workers} worker processes, {args.shard_size} samples per raw shard")
    print("| samples | select.mode | kept | wall s | CLI process (runner) peak RSS | worker peak RSS, each | "
          "other processes | whole tree, peak sum |")
    print("|---:|---|---:|---:|---:|---|---|---:|")
    for r in rows:
        workers = ", ".join(f"{g:.2f}" for g in r["workers_gb"]) or "-"
        others = "; ".join(f"{c} {g:.2f}" for c, g in r["others"]) or "-"
        print(f"| {r['n']:,} | {r['mode']} | {r['kept']:,} | {r['wall_s']:.1f} | {r['launcher_gb']:.2f} GB | "
              f"{workers} GB | {others} | {r['tree_gb']:.2f} GB |")
    print()
    for mode in modes:
        small = next(r for r in rows if r["mode"] == mode and r["n"] == sizes[0])
        big = next(r for r in rows if r["mode"] == mode and r["n"] == sizes[-1])
        if not small["workers_gb"] or not big["workers_gb"]:
            print(f"{mode}: no worker process seen (the runner ran in one process?)")
            continue
        ratio = max(big["workers_gb"]) / max(small["workers_gb"])
        verdict = (f"target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}"
                   if (sizes[0], sizes[-1]) == TARGET_SIZES else
                   f"the target <= {TARGET} is for {TARGET_SIZES[0]:,} -> {TARGET_SIZES[1]:,}")
        print(f"{mode}: largest worker peak RSS {max(big['workers_gb']):.2f} GB at {sizes[-1]:,} / "
              f"{max(small['workers_gb']):.2f} GB at {sizes[0]:,} = {ratio:.2f}x "
              f"({verdict}); CLI process {big['launcher_gb'] / small['launcher_gb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
