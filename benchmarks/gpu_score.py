"""GPU scoring throughput: the `score` pipeline end to end with ViT-B-32 in fp16 on one CUDA device.

    python benchmarks/gpu_score.py [--samples 20000] [--workers 12] [--batch 512]

Random weights (throughput does not depend on them; no download needed). Local Beam worker
processes decode and preprocess on CPU and each feeds the GPU with its own model copy. Prints
images/s end to end and the raw fp16 forward rate on the same device for reference.
Target (issue 4): >= 4,000 images/s on one H100 (LAION reported about 1,800/s per A100).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from curate import run, synth  # noqa: E402
from curate.models import clip  # noqa: E402


def raw_rate(batch: int, steps: int = 20) -> float:
    spec = clip.ScorerSpec(model="ViT-B-32", pretrained="random", device="cuda", precision="fp16")
    model = clip.load_model(spec)
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    tokens = clip.tokenizer("ViT-B-32")(["a photo of a red circle on the left"] * batch).cuda()
    clip.encode(model, spec, images, tokens)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        clip.encode(model, spec, images, tokens)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--work", default="work-tmp/bench-gpu")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 1
    corpus = os.path.join(args.work, "corpus")
    if not os.path.exists(os.path.join(corpus, "ground_truth.parquet")):
        synth.generate(corpus, args.samples, seed=3, noise=0.0, shard_size=500, processes=os.cpu_count() or 1)
    report = run.run(["--pipeline", "score", "--input", corpus, "--output", os.path.join(args.work, "out"),
                      "--overwrite", "--set", "scorer.model=ViT-B-32", "--set", "scorer.pretrained=random",
                      "--set", "scorer.device=cuda", "--set", "scorer.precision=fp16",
                      "--set", f"scorer.batch_size={args.batch}", "--direct_running_mode=multi_processing",
                      f"--direct_num_workers={args.workers}"])
    scored, wall = report["counts"]["kept"], report["time"]["wall_seconds"]
    print(f"device: {torch.cuda.get_device_name(0)}; {os.cpu_count()} CPU cores; {args.workers} workers; "
          f"batch {args.batch}; ViT-B-32 fp16")
    print(f"pipeline end to end: {scored} images in {wall:.1f}s = {scored / wall:.0f} images/s "
          f"(stage CPU seconds: {report['time']['stage_cpu_seconds']})")
    print(f"raw fp16 forward (image + text), batch {args.batch}: {raw_rate(args.batch):.0f} pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
