"""GPU scoring throughput: the `score` pipeline end to end with ViT-B-32 in fp16 on one CUDA device.

    python benchmarks/gpu_score.py [--samples 20000] [--workers 12] [--batch 512]
    python benchmarks/gpu_score.py --device cpu --model curate-demo-64 --pretrained demo \
        --samples 600 --workers 2 --batch 64          # the script's own logic, on a machine without GPU

Random weights (throughput does not depend on them; no download needed). Local Beam worker
processes decode and preprocess on CPU and each feeds the device with its own model copy. Prints:

- end to end: images scored / the run's wall time (start-up of every worker included);
- steady state, all workers together: every worker appends (time.time(), batch size) to its own
  file in one folder after each model call, so all timestamps are on one clock; the rate is the
  images of every batch that ended after the first batch end (over all workers), divided by the
  span from that first batch end to the last batch end. Also each worker's span and when all
  workers were scoring at once (the latest first batch end to the earliest last batch end);
- GPU utilisation and memory, sampled every 500 ms during the run by ``nvidia-smi -lms 500``
  (mean and max; not sampled without nvidia-smi);
- the raw forward rate (image + text) on the same device, for reference.

The timestamps come from a subclass of curate.scoring.OpenClipModelHandler defined here and put in
its place for the run; Beam pickles it by value (it lives in __main__), so worker processes run it.
Target (issue 4): >= 4,000 images/s on one H100 (LAION reported about 1,800/s per A100).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from curate import run, scoring, synth  # noqa: E402
from curate.models import clip  # noqa: E402


class TimestampedHandler(scoring.OpenClipModelHandler):
    """curate's handler, plus one line (time.time(), images) per model call into a per-process file."""

    def __init__(self, *args, batch_dir: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._batch_dir = batch_dir

    def run_inference(self, batch, model, inference_args=None):
        results = super().run_inference(batch, model, inference_args)
        n = sum(len(b.samples) for b in batch)
        with open(os.path.join(self._batch_dir, f"worker-{os.getpid()}.txt"), "a") as f:
            f.write(f"{time.time():.6f} {n}\n")
        return results


def timestamped(batch_dir: str):
    """A handler factory with OpenClipModelHandler's signature that writes into ``batch_dir``."""
    def make(*args, **kwargs):
        return TimestampedHandler(*args, batch_dir=batch_dir, **kwargs)
    return make


def read_batches(batch_dir: str) -> dict[str, list[tuple[float, int]]]:
    """{worker file: [(end time, images), ...]} as the workers wrote them."""
    out = {}
    for path in sorted(glob.glob(os.path.join(batch_dir, "worker-*.txt"))):
        with open(path) as f:
            out[os.path.basename(path)] = [(float(t), int(n)) for t, n in (line.split() for line in f if line.strip())]
    return out


def steady_rate(batches: dict[str, list[tuple[float, int]]]) -> dict:
    """Aggregate rate over all workers on one clock: images of the batches that ended after the
    first batch end, over the span from the first batch end to the last one (issue 14 item 1)."""
    ends = sorted((t, n) for rows in batches.values() for t, n in rows)
    if len(ends) < 2:
        return {}
    first, last = ends[0][0], ends[-1][0]
    images = sum(n for t, n in ends if t > first)
    firsts = [rows[0][0] for rows in batches.values() if rows]
    lasts = [rows[-1][0] for rows in batches.values() if rows]
    return {"rate": images / (last - first) if last > first else float("nan"), "images": images,
            "first": first, "last": last, "batches": len(ends),
            "all_running": (max(firsts), min(lasts)),  # every worker had finished a batch, none its last
            "per_worker": {w: (rows[0][0], rows[-1][0], sum(n for _, n in rows[1:])) for w, rows in batches.items()}}


class GpuSampler:
    """nvidia-smi sampling utilisation (%) and memory used (MiB) every 500 ms, in a subprocess."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500", "-i", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self):
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((util, mem))

    def stop(self) -> str:
        if self._proc is None:
            return "not sampled (no nvidia-smi)"
        self._proc.terminate()
        self._proc.wait()
        self._reader.join(timeout=2)
        if not self.samples:
            return "no samples from nvidia-smi"
        util = [u for u, _ in self.samples]
        mem = [m for _, m in self.samples]
        return (f"mean {sum(util) / len(util):.0f}%, max {max(util):.0f}% over {len(util)} samples "
                f"(every 500 ms); memory used max {max(mem) / 1024:.1f} GiB")


def raw_rate(spec: clip.ScorerSpec, batch: int, steps: int = 20) -> float:
    model = clip.load_model(spec)
    device = spec.resolved_device()
    size = clip.preprocess_cfg(spec).size
    size = size if isinstance(size, int) else size[0]
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    tokens = clip.tokenizer(spec.model)(["a photo of a red circle on the left"] * batch)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    clip.encode(model, spec, images, tokens)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        clip.encode(model, spec, images, tokens)
    sync()
    return batch * steps / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (checks the script without a GPU)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--precision", default="fp16", help="fp16, bf16 or fp32 on CUDA; CPU always runs fp32")
    ap.add_argument("--raw-steps", type=int, default=20, help="model calls timed for the raw forward rate")
    ap.add_argument("--work", default="work-tmp/bench-gpu")
    ap.add_argument("--decode", default="cpu", help="scorer.decode: cpu (exact) or cpu_fast (reduced-size JPEG decoding)")
    ap.add_argument("--web", action="store_true", help="web-sized 1024x768 photo JPEGs (benchmarks/web_images.py) "
                    "instead of the built-in 256-px corpus")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (or --device cpu to check the script)")
        return 1
    precision = args.precision if args.device.startswith("cuda") else "fp32"
    spec = clip.ScorerSpec(model=args.model, pretrained=args.pretrained, device=args.device, precision=precision)
    corpus = os.path.join(args.work, f"corpus-{'web-' if args.web else ''}{args.samples}")
    if args.web and not os.path.exists(os.path.join(corpus, "00000.tar")):
        from web_images import web_corpus
        web_corpus(corpus, args.samples)
    elif not args.web and not os.path.exists(os.path.join(corpus, "ground_truth.parquet")):
        synth.generate(corpus, args.samples, seed=3, noise=0.0, shard_size=500, processes=os.cpu_count() or 1)
    batch_dir = os.path.join(args.work, "batches")
    shutil.rmtree(batch_dir, ignore_errors=True)
    os.makedirs(batch_dir)

    scoring.OpenClipModelHandler = timestamped(os.path.abspath(batch_dir))  # ScoreShards looks it up by this name
    sampler = GpuSampler() if args.device.startswith("cuda") else None
    started = time.time()
    report = run.run(["--pipeline", "score", "--input", corpus, "--output", os.path.join(args.work, "out"),
                      "--overwrite", "--set", f"scorer.model={spec.model}", "--set", f"scorer.pretrained={spec.pretrained}",
                      "--set", f"scorer.device={spec.device}", "--set", f"scorer.precision={spec.precision}",
                      "--set", f"scorer.batch_size={args.batch}", "--set", f"scorer.decode={args.decode}",
                      "--direct_running_mode=multi_processing",
                      f"--direct_num_workers={args.workers}"])
    gpu = sampler.stop() if sampler else "not sampled (--device cpu)"

    scored, wall = report["counts"]["kept"], report["time"]["wall_seconds"]
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"device: {name}; {os.cpu_count()} CPU cores; {args.workers} workers; batch {args.batch}; "
          f"{spec.model} {spec.precision}; decode {args.decode}; corpus {'web 1024x768' if args.web else 'built-in 256 px'}")
    print(f"end to end: {scored} images in {wall:.1f}s = {scored / wall:.0f} images/s (start-up included)")
    steady = steady_rate(read_batches(batch_dir))
    if steady:
        lo, hi = steady["all_running"]
        print(f"steady state, all workers on one clock: {steady['images']} images from the first batch end "
              f"(+{steady['first'] - started:.1f}s) to the last (+{steady['last'] - started:.1f}s) = "
              f"{steady['rate']:.0f} images/s ({steady['batches']} batches, {len(steady['per_worker'])} workers)")
        print(f"  all workers scoring at once: +{lo - started:.1f}s to +{hi - started:.1f}s"
              + ("" if hi > lo else " (never: some worker ended before another began)"))
        for w, (a, b, n) in sorted(steady["per_worker"].items()):
            print(f"  {w}: +{a - started:.1f}s to +{b - started:.1f}s, {n / (b - a) if b > a else float('nan'):.0f} images/s")
    else:
        print("steady state: fewer than two batches recorded")
    print(f"GPU utilisation: {gpu}")
    print(f"stage times: {report['time']}")
    print(f"raw forward (image + text), batch {args.batch}: {raw_rate(spec, args.batch, args.raw_steps):.0f} pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
