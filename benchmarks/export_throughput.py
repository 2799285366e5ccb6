"""Export throughput per format on synthetic curated-style shards (one process, the real CLI).

    python benchmarks/export_throughput.py [--samples 2000] [--codebook-samples 64] [--work DIR]

Shards come from curate.synth with no noise (the layout of curated shards: KEY.jpg, KEY.txt,
KEY.json); FLAVA's unimodal streams are off because they need a laion_filter run. "flava+codebook"
uses a random-weight FlavaImageCodebook of FLAVA's real size (hidden 256, 4 groups x 2 blocks,
8192 codes) at 112 px, on its own smaller shard set (it costs seconds per image on CPU). Wall time includes the CLI's start-up. Per stage it prints both
clocks of report.json (curate/timing.py), summed over workers: wall time inside the stage
(``stage_wall_seconds``) and CPU time (``stage_cpu_seconds``). Prints a table; no pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from curate import synth  # noqa: E402

CASES = [("contrastive", []), ("blip2", []), ("llava", []), ("flava", []),
         ("contrastive,flava,llava,blip2", []),
         ("flava+codebook", ["--set", "flava.codebook={codebook}"])]


def save_codebook(folder: str) -> str:
    import torch
    from transformers import FlavaImageCodebook, FlavaImageCodebookConfig

    torch.manual_seed(0)
    FlavaImageCodebook(FlavaImageCodebookConfig()).save_pretrained(folder)  # FLAVA's defaults
    return folder


def stage_text(seconds: dict, order: list[str]) -> str:
    """Per-stage seconds as "stage 1.2, ...", stages in ``order`` (the same order for both clocks)."""
    return ", ".join(f"{k} {seconds[k]:.1f}" for k in order if k in seconds) or "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--codebook-samples", type=int, default=64)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="curate-export-bench-")
    shards = os.path.join(work, f"shards-{args.samples}")
    small = os.path.join(work, f"shards-{args.codebook_samples}")
    for folder, n in ((shards, args.samples), (small, args.codebook_samples)):
        if not os.path.isdir(folder):
            synth.generate(folder, n, seed=0, noise=0.0, shard_size=500)
    codebook = save_codebook(os.path.join(work, "codebook"))
    print(f"shards in {work}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print("| formats | samples | wall s | samples/s | stage wall s (wall clock inside each stage) "
          "| stage CPU s (CPU time inside each stage) |\n|---|---:|---:|---:|---|---|", flush=True)
    for name, extra in CASES:
        out = os.path.join(work, "out-" + name.replace(",", "-").replace("+", "-"))
        formats = name.replace("+codebook", "")
        source, n = (small, args.codebook_samples) if "codebook" in name else (shards, args.samples)
        cmd = [sys.executable, "-m", "curate.run", "--pipeline", "export", "--input", source, "--output", out,
               "--overwrite", "--set", f"formats=[{formats}]", "--set", "flava.unimodal=false",
               *[x.format(codebook=codebook) for x in extra]]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if p.returncode:
            print(f"| {name} | {n} | failed: {p.stderr.strip().splitlines()[-1]} | | | |", flush=True)
            continue
        report = json.load(open(os.path.join(out, "report.json")))
        cpu, stage_wall = report["time"]["stage_cpu_seconds"], report["time"]["stage_wall_seconds"]
        order = sorted(set(cpu) | set(stage_wall), key=lambda k: (-cpu.get(k, 0.0), k))
        print(f"| {name} | {n} | {wall:.1f} | {n / wall:.1f} | {stage_text(stage_wall, order)} "
              f"| {stage_text(cpu, order)} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
