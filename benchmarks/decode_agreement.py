"""Agreement of ``scorer.decode: gpu`` with ``cpu``: the same samples scored both ways on one device.

    python benchmarks/decode_agreement.py [--builtin 400] [--web 200] [--device auto] [--work DIR]

Runs the ``score`` pipeline (in process, demo scorer unless ``--model/--pretrained``) twice per
corpus on ``--device`` (auto: CUDA when there is one), once with ``scorer.decode: cpu`` and once with
``gpu``, so the two runs differ only in where and how images are decoded and resized: on CPU the gpu
path is torchvision's libjpeg-turbo decode plus the device-side resize (curate/gpu_decode.py); on
CUDA, nvJPEG plus the same resize on the GPU. Corpora: the built-in sample corpus (``curate.synth``,
256-px scenes, seed 5) and web-sized photos (benchmarks/web_images.py: 1024x768 JPEGs cut from the
photographs in scikit-image's and scikit-learn's wheels). Prints per corpus: samples scored by both,
|score difference| percentiles and identical scores, how many scores lie on the other side of the
default ``select.clip_threshold`` (read from pipelines/specs.py), the decisions (kept / drop reason)
that differ, perceptual-hash bits that differ and recorded sizes (benchmarks/agreement.py). Small sizes by default: a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from agreement import agreement, decisions  # noqa: E402
from curate.pipelines.specs import PIPELINES  # noqa: E402

from curate import run, synth  # noqa: E402


def score(corpus: str, out: str, decode: str, args) -> dict[str, dict]:
    run.run(["--pipeline", "score", "--input", corpus, "--output", out, "--overwrite",
             "--set", f"scorer.decode={decode}", "--set", f"scorer.device={args.device}",
             "--set", f"scorer.model={args.model}", "--set", f"scorer.pretrained={args.pretrained}",
             "--set", f"scorer.batch_size={args.batch}"])
    return decisions(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builtin", type=int, default=400, help="samples of the built-in corpus (0: skip)")
    ap.add_argument("--web", type=int, default=200, help="web-sized photos (0: skip)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    ap.add_argument("--model", default="curate-demo-64")
    ap.add_argument("--pretrained", default="demo")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--work", default="work-tmp/decode-agreement")
    args = ap.parse_args(argv)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    threshold = PIPELINES["laion_filter"].schema["select.clip_threshold"].default
    what = torch.cuda.get_device_name(0) + " (nvJPEG)" if device.startswith("cuda") else \
        "CPU (torchvision's libjpeg-turbo decode)"
    print(f"device {device}: {what}; {os.cpu_count()} CPU cores; {platform.python_version()}; "
          f"model {args.model} ({args.pretrained}); batch {args.batch}; {time.strftime('%Y-%m-%d')}")
    corpora = []
    if args.builtin:
        path = os.path.join(args.work, f"builtin-{args.builtin}")
        if not os.path.exists(os.path.join(path, "ground_truth.parquet")):
            synth.generate(path, args.builtin, seed=5)
        corpora.append((f"built-in corpus (curate.synth seed 5, 256 px), {args.builtin}", path))
    if args.web:
        from web_images import web_corpus

        path = os.path.join(args.work, f"web-{args.web}")
        if not os.path.exists(os.path.join(path, "00000.tar")):
            web_corpus(path, args.web)
        corpora.append((f"web-sized photos (1024x768 JPEGs), {args.web}", path))
    for name, path in corpora:
        t0 = time.perf_counter()
        cpu = score(path, os.path.join(args.work, "out-cpu"), "cpu", args)
        t1 = time.perf_counter()
        gpu = score(path, os.path.join(args.work, "out-gpu"), "gpu", args)
        t2 = time.perf_counter()
        print(f"{name} (score run: decode cpu {t1 - t0:.1f}s, gpu {t2 - t1:.1f}s):")
        print("\n".join(agreement(cpu, gpu, threshold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
