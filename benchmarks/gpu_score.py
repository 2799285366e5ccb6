"""GPU scoring throughput: the `score` pipeline end to end with ViT-B-32 in fp16 on one CUDA device.

    python benchmarks/gpu_score.py [--samples 20000] [--workers 12] [--batch 512] [--decode cpu,gpu]
                                   [--share-model] [--web]
    python benchmarks/gpu_score.py --device cpu --model curate-demo-64 --pretrained demo \
        --samples 600 --workers 2 --batch 64          # the script's own logic, on a machine without GPU

Random weights (throughput does not depend on them; no download needed). Local Beam worker
processes read and decode; with ``--decode gpu`` each batch's JPEGs are decoded (nvJPEG) and resized
on the device; each worker feeds its own model copy, or with ``--share-model`` one model process
(scorer.share_model). ``--decode cpu,gpu`` runs the modes one after the other on the same corpus and
prints them side by side with the raw forward rate. Prints, per mode:

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


def score_run(args, spec: clip.ScorerSpec, corpus: str, decode: str) -> dict:
    """One ``score`` run with ``scorer.decode`` = ``decode``: its report, batch timestamps and GPU samples."""
    batch_dir = os.path.join(args.work, f"batches-{decode}")
    shutil.rmtree(batch_dir, ignore_errors=True)
    os.makedirs(batch_dir)
    scoring.OpenClipModelHandler = timestamped(os.path.abspath(batch_dir))  # ScoreShards looks it up by this name
    sampler = GpuSampler() if args.device.startswith("cuda") else None
    started = time.time()
    report = run.run(["--pipeline", "score", "--input", corpus, "--output", os.path.join(args.work, f"out-{decode}"),
                      "--overwrite", "--set", f"scorer.model={spec.model}", "--set", f"scorer.pretrained={spec.pretrained}",
                      "--set", f"scorer.device={spec.device}", "--set", f"scorer.precision={spec.precision}",
                      "--set", f"scorer.batch_size={args.batch}", "--set", f"scorer.decode={decode}",
                      "--set", f"scorer.share_model={str(args.share_model).lower()}",
                      "--direct_running_mode=multi_processing",
                      f"--direct_num_workers={args.workers}"])
    gpu = sampler.stop() if sampler else "not sampled (--device cpu)"
    return {"report": report, "started": started, "steady": steady_rate(read_batches(batch_dir)), "gpu": gpu}


def print_run(decode: str, r: dict) -> None:
    scored, wall, started, steady = (r["report"]["counts"]["kept"], r["report"]["time"]["wall_seconds"], r["started"],
                                     r["steady"])
    print(f"decode {decode}:")
    print(f"  end to end: {scored} images in {wall:.1f}s = {scored / wall:.0f} images/s (start-up included)")
    if steady:
        lo, hi = steady["all_running"]
        print(f"  steady state, all workers on one clock: {steady['images']} images from the first batch end "
              f"(+{steady['first'] - started:.1f}s) to the last (+{steady['last'] - started:.1f}s) = "
              f"{steady['rate']:.0f} images/s ({steady['batches']} batches, {len(steady['per_worker'])} workers)")
        print(f"    all workers scoring at once: +{lo - started:.1f}s to +{hi - started:.1f}s"
              + ("" if hi > lo else " (never: some worker ended before another began)"))
        for w, (a, b, n) in sorted(steady["per_worker"].items()):
            print(f"    {w}: +{a - started:.1f}s to +{b - started:.1f}s, {n / (b - a) if b > a else float('nan'):.0f} images/s")
    else:
        print("  steady state: fewer than two batches recorded")
    print(f"  GPU utilisation: {r['gpu']}")
    print(f"  stage times: {r['report']['time']}")


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
    ap.add_argument("--decode", default="cpu", help="scorer.decode, one or several comma-separated, run one after "
                    "the other on the same corpus and printed side by side: cpu, cpu_fast, gpu (e.g. cpu,gpu)")
    ap.add_argument("--share-model", action="store_true", help="scorer.share_model: one model process that every "
                    "worker sends its batches to, instead of one model copy per worker")
    ap.add_argument("--web", action="store_true", help="web-sized 1024x768 photo JPEGs (benchmarks/web_images.py) "
                    "instead of the built-in 256-px corpus")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (or --device cpu to check the script)")
        return 1
    modes = [m.strip() for m in args.decode.split(",") if m.strip()]
    unknown = [m for m in modes if m not in scoring.DECODE_MODES]
    if unknown or not modes:
        print(f"--decode: {', '.join(unknown) or 'nothing'} not in {', '.join(scoring.DECODE_MODES)}")
        return 2
    precision = args.precision if args.device.startswith("cuda") else "fp32"
    spec = clip.ScorerSpec(model=args.model, pretrained=args.pretrained, device=args.device, precision=precision)
    corpus = os.path.join(args.work, f"corpus-{'web-' if args.web else ''}{args.samples}")
    if args.web and not os.path.exists(os.path.join(corpus, "00000.tar")):
        from web_images import web_corpus
        web_corpus(corpus, args.samples)
    elif not args.web and not os.path.exists(os.path.join(corpus, "ground_truth.parquet")):
        synth.generate(corpus, args.samples, seed=3, noise=0.0, shard_size=500, processes=os.cpu_count() or 1)

    runs = {decode: score_run(args, spec, corpus, decode) for decode in modes}
    raw = raw_rate(spec, args.batch, args.raw_steps)  # after the runs: no worker competes for the device
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"device: {name}; {os.cpu_count()} CPU cores; {args.workers} workers; batch {args.batch}; "
          f"{spec.model} {spec.precision}; share_model {args.share_model}; "
          f"corpus {'web 1024x768' if args.web else 'built-in 256 px'}, {args.samples} samples; {time.strftime('%Y-%m-%d')}")
    for decode, r in runs.items():
        print_run(decode, r)
    print(f"raw forward (image + text), batch {args.batch}: {raw:.0f} pairs/s")
    print("side by side (targets, issue 19: steady >= 10,000/s and >= 0.8x raw; end to end >= 0.7x steady):")
    print(f"  {'decode':<9} {'end to end/s':>13} {'steady/s':>10} {'steady/raw':>11} {'e2e/steady':>11}  GPU utilisation")
    for decode, r in runs.items():
        e2e = r["report"]["counts"]["kept"] / r["report"]["time"]["wall_seconds"]
        steady = r["steady"].get("rate", float("nan")) if r["steady"] else float("nan")
        print(f"  {decode:<9} {e2e:>13.0f} {steady:>10.0f} {steady / raw:>11.2f} {e2e / steady:>11.2f}  {r['gpu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
