"""A capacity plan on paper: what laion_filter's default graph costs at 100M and 5B pairs.

    python benchmarks/capacity_plan.py RUN [--baseline SMALLER_RUN] [--pairs 1e8 5e9] [options]

RUN is a laion_filter output folder (or its report.json), e.g. one that
``benchmarks/laion_filter_e2e.py`` keeps (work-tmp/bench-e2e/out-6000-1). From it: the CPU seconds
per stage (report.json ``time.stage_cpu_seconds``, real CPU time, curate/timing.py) and the run's
CPU seconds (``time.cpu_seconds``), the keep and duplicate rates (``counts``), the mean image size
and the near-duplicate groups (OUT/decisions). From ``benchmarks/element_sizes.py``: the bytes of
one element of every GroupByKey, measured when this script runs. From the README's GPU figures
(``benchmarks/gpu_score.py`` on an NVIDIA H200, passed as arguments): the scoring rates. It prints
three markdown tables (CPU by stage, GPU hours, bytes shuffled by GroupByKey) and every assumption.

Nothing here ran on a cloud: no cloud is reachable from the build machines, so this is a model on
paper, to be checked against a real Dataflow job. Prices are printed only when given
(``--usd-per-vcpu-hour``, ``--usd-per-gpu-hour``).

With ``--baseline`` (a smaller run of the same command and worker count), the untimed CPU (the
run's CPU seconds minus the timed stages: Beam, shuffles, filters, dedup bookkeeping, decisions,
start-up and model loading) is taken per extra sample between the two runs, which removes the
fixed start-up cost; without it, the untimed CPU is averaged over the run's samples, start-up
included (an overestimate for small runs).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import element_sizes  # noqa: E402  (benchmarks/element_sizes.py)
import pyarrow.parquet as pq  # noqa: E402

from curate import records  # noqa: E402

# Measured 2026-11-27 on one NVIDIA H200 (16 CPU cores) by `python benchmarks/gpu_score.py --samples
# 100000 --workers 15 --batch 512`, ViT-B-32 fp16, README "Scoring throughput": raw fp16 forward of
# image + text at batch 512 (tensors prepared beforehand: the GPU's ceiling) ...
GPU_RAW_PAIRS_PER_S = 12_550.0
# ... and the `score` pipeline end to end in the same run (15 Beam workers decoding on 16 CPU
# cores, start-up of the workers included: a floor).
GPU_END_TO_END_PER_S = 1_285.0

# What each shuffle unit is counted from (element_sizes.PER names them).
READ_STAGES = ("read", "decode")                       # every input sample
SCORE_STAGES = ("clip_preprocess", "clip_encode")      # every decodable sample
GPU_STAGES = ("clip_encode",)                          # on Dataflow: the GPU, not the CPU workers
PIXEL_STAGES = ("read", "decode", "clip_preprocess", "write")  # their cost scales with image pixels
PRE_DEDUP_STAGES = records.STAGES[:records.STAGES.index(records.UNIQUE_KEYS)]  # rows dropped before dedup


@dataclass(frozen=True)
class Run:
    """What one laion_filter run measured, per input sample."""
    path: str
    samples: int
    stage_cpu: dict
    stage_wall: dict
    cpu_seconds: float
    rates: dict            # share of input samples per unit (element_sizes.PER), before scaling
    near_drops: int
    near_groups: int
    mean_pixels: float
    samples_per_output_shard: int
    samples_per_input_shard: float


def load_run(path: str) -> Run:
    """A run's report.json and decisions -> its measured costs and rates."""
    report_path = path if path.endswith(".json") else os.path.join(path, "report.json")
    with open(report_path) as f:
        report = json.load(f)
    out = os.path.dirname(report_path)
    counts, times, cfg = report["counts"], report["time"], report.get("config", {})
    n = counts["input"]
    by_stage, by_reason = counts.get("dropped_by_stage", {}), counts.get("dropped_by_reason", {})
    pre = sum(by_stage.get(s, 0) for s in PRE_DEDUP_STAGES)
    decode_drops = by_stage.get("read", 0) + by_stage.get("decode", 0)
    pixels, drops, groups = [], 0, set()
    for file in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
        table = pq.read_table(file, columns=["width", "height", "reason", "dup_group"]).to_pylist()
        pixels += [r["width"] * r["height"] for r in table if r["width"] and r["height"]]
        near = [r for r in table if r["reason"] == "near_duplicate"]
        drops += len(near)
        groups |= {r["dup_group"] for r in near}
    shards = counts.get("conservation", {}).get("files_checked") or 1
    rates = {
        "decodable": (n - decode_drops) / n,
        "selected": (n - pre) / n,
        "duplicate_key": by_reason.get("duplicate_key", 0) / n,
        "exact_duplicate": by_reason.get("exact_duplicate", 0) / n,
        "url_caption_duplicate": by_reason.get("duplicate_url_caption", 0) / n,
        "near_duplicate": by_reason.get("near_duplicate", 0) / n,
        "kept": counts["kept"] / n,
    }
    return Run(path, n, times.get("stage_cpu_seconds", {}), times.get("stage_wall_seconds", {}),
               times.get("cpu_seconds", float("nan")), rates, drops, len(groups),
               sum(pixels) / max(len(pixels), 1), cfg.get("shards.samples_per_shard", 1000), n / shards)


def units_per_sample(rates: dict, n_total: float, a: argparse.Namespace, nodes_per_drop: float) -> dict:
    """element_sizes.PER unit -> how many per input sample, for a corpus of ``n_total`` samples."""
    exact = rates["selected"] - rates["duplicate_key"]
    url_caption = exact - rates["exact_duplicate"]
    near = url_caption - rates["url_caption_duplicate"]
    n_near = near * n_total
    clustered = n_near > a.near_flat_max
    k = math.ceil(2 * math.sqrt(n_near)) if clustered else 1
    edges = rates["near_duplicate"] * a.edges_per_near_drop
    duplicates = rates["exact_duplicate"] + rates["url_caption_duplicate"] + rates["near_duplicate"]
    return {
        "input shard": 1 / a.samples_per_input_shard,
        "selected": rates["selected"], "exact": exact, "url_caption": url_caption, "near": near,
        "exact follower": rates["exact_duplicate"],
        "follower": rates["exact_duplicate"] + rates["url_caption_duplicate"],
        "assignment": near * (a.hash_assignments if clustered else 1),
        "training row": (1.5 * 20 * k / n_total) if clustered else 0.0,
        "pair copy": edges * (a.pair_copies if clustered else 1),
        "edge": edges, "node": rates["near_duplicate"] * nodes_per_drop,
        "kept": rates["kept"], "output shard": rates["kept"] / a.samples_per_output_shard,
        "kept row": rates["kept"], "duplicate row": duplicates,
        "other row": 1 - rates["kept"] - duplicates,
    }


def near_dot_products(n_near: float, a: argparse.Namespace) -> float:
    """Vector products per sample reaching near dedup: a flat search compares all pairs (n/2 per
    sample); the clustered one (k = ceil(2 sqrt(n)) clusters, m assignments, filters/dedup.py
    cluster_count) routes each sample against k centroids and compares it within m clusters of
    about m n / k members each, so about k + m^2 n / (2k) per sample."""
    if n_near <= a.near_flat_max:
        return n_near / 2
    k = math.ceil(2 * math.sqrt(n_near))
    return k + a.hash_assignments ** 2 * n_near / (2 * k)


def human_bytes(b: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:,.1f} {unit}"
    return f"{b:,.0f} B"


def size_name(pairs: float) -> str:
    """1e8 -> '100M', 5e9 -> '5B'."""
    for suffix, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if pairs >= size:
            return f"{pairs / size:g}{suffix}"
    return f"{pairs:g}"


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 1 else f"{x:.2f}"


def stage_model(run: Run, a: argparse.Namespace, stage: str, pairs: float) -> tuple[str, float, float, float]:
    """(unit, measured CPU s per unit, scale, modelled CPU s per input sample) of ``stage`` for a
    corpus of ``pairs`` samples: read/decode per input sample, scoring per decodable sample, write
    per kept sample, all of them times the pixel scale; near_dedup per sample reaching it, times
    the growth of vector products per sample (``near_dot_products``)."""
    cpu, r = run.stage_cpu[stage], run.rates
    if stage == "near_dedup":
        near = units_per_sample(r, run.samples, a, 1.0)["near"]
        scale = near_dot_products(near * pairs, a) / near_dot_products(near * run.samples, a)
        return "sample reaching near dedup", cpu / (run.samples * near), scale, cpu / run.samples * scale
    unit, share = (("decodable sample", r["decodable"]) if stage in SCORE_STAGES else
                   ("kept sample", r["kept"]) if stage == "write" else ("input sample", 1.0))
    scale = a.image_pixels / run.mean_pixels if stage in PIXEL_STAGES else 1.0
    return unit, cpu / (run.samples * share), scale, cpu / run.samples * scale


def untimed_cpu(run: Run, base: Run | None) -> tuple[float, str]:
    """CPU seconds per input sample outside the timed stages, and how it was obtained."""
    untimed = run.cpu_seconds - sum(run.stage_cpu.values())
    if base is None:
        return untimed / run.samples, "run CPU minus timed stages, averaged over the run (start-up included)"
    base_untimed = base.cpu_seconds - sum(base.stage_cpu.values())
    return ((untimed - base_untimed) / (run.samples - base.samples),
            f"run CPU minus timed stages, per extra sample from {base.samples:,} to {run.samples:,} samples")


def cpu_table(run: Run, base: Run | None, a: argparse.Namespace) -> tuple[list[str], dict]:
    """Markdown rows of CPU per stage and the vCPU-hours totals per corpus size (CPU workers only)."""
    rows = ["| stage | measured CPU ms | per | scale | " + " | ".join(
        f"vCPU-h {size_name(p)} | {a.machine_type} worker-h {size_name(p)}" for p in a.pairs) + " |",
        "|---|---:|---|---|" + "---:|---:|" * len(a.pairs)]
    totals = {p: 0.0 for p in a.pairs}
    for stage in sorted(run.stage_cpu, key=lambda s: -run.stage_cpu[s]):
        on_gpu = stage in GPU_STAGES
        models = [stage_model(run, a, stage, p) for p in a.pairs]
        unit, measured = models[0][0], models[0][1]
        scales = sorted({f"x{m[2]:,.2f}" for m in models}, key=lambda t: float(t[1:].replace(",", "")))
        cells = [stage + (" (on Dataflow: the GPU, see below)" if on_gpu else ""), f"{measured * 1e3:.3f}",
                 unit, " to ".join(scales)]
        for p, (_, _, _, per_input) in zip(a.pairs, models, strict=True):
            vcpu_h = per_input * p / 3600
            if on_gpu:
                cells += ["not counted", "not counted"]
            else:
                totals[p] += vcpu_h
                cells += [fmt(vcpu_h), fmt(vcpu_h / a.vcpus_per_worker)]
        rows.append("| " + " | ".join(cells) + " |")
    per_input, how = untimed_cpu(run, base)
    cells = ["untimed (Beam, shuffles, filters, dedup bookkeeping, decisions)", f"{per_input * 1e3:.3f}",
             "input sample", "x1.00"]
    for p in a.pairs:
        totals[p] += per_input * p / 3600
        cells += [fmt(per_input * p / 3600), fmt(per_input * p / 3600 / a.vcpus_per_worker)]
    rows.append("| " + " | ".join(cells) + " |")
    rows.append("| " + " | ".join(["**total on CPU workers**", "", "", ""] + [
        c for p in a.pairs for c in (f"**{fmt(totals[p])}**", f"**{fmt(totals[p] / a.vcpus_per_worker)}**")]) + " |")
    rows += ["", f"measured CPU ms: per unit in the run; untimed CPU: {how}."]
    return rows, totals


def gpu_table(run: Run, a: argparse.Namespace) -> list[str]:
    rows = ["| GPU rate (NVIDIA H200, ViT-B-32 fp16) | pairs/s | "
            + " | ".join(f"GPU-h {size_name(p)}" for p in a.pairs) + " |",
            "|---|---:|" + "---:|" * len(a.pairs)]
    for label, rate in (("raw forward, batch 512 (ceiling)", a.gpu_raw_rate),
                        ("`score` end to end, 15 workers on 16 cores (floor)", a.gpu_end_to_end_rate)):
        rows.append(f"| {label} | {rate:,.0f} | "
                    + " | ".join(fmt(p * run.rates["decodable"] / rate / 3600) for p in a.pairs) + " |")
    return rows


def shuffle_table(run: Run, a: argparse.Namespace) -> tuple[list[str], dict]:
    samples = element_sizes.corpus_samples(a.size_samples)
    shuffles = [s for s in element_sizes.shuffles(samples, a.dim) if s.graph == "laion_filter"]
    nodes_per_drop = ((run.near_drops + run.near_groups) / run.near_drops) if run.near_drops else 2.0
    per_size = {p: units_per_sample(run.rates, p, a, nodes_per_drop) for p in a.pairs}
    rows = ["| transform | GroupByKey | element per | bytes each | " + " | ".join(
        f"elements per input sample {size_name(p)} | bytes {size_name(p)}" for p in a.pairs) + " |",
        "|---|---|---|---:|" + "---:|---:|" * len(a.pairs)]
    totals = {p: 0.0 for p in a.pairs}
    for s in shuffles:
        cells = [s.transform, s.step, s.per, f"{s.encoded:,.0f}"]
        for p in a.pairs:
            units = per_size[p][s.per] * s.n
            b = units * s.encoded * p
            totals[p] += b
            cells += [f"{units:.4g}", human_bytes(b)]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append("| " + " | ".join(["**total**", "", "", ""] + [c for p in a.pairs for c in ("", f"**{human_bytes(totals[p])}**")])
                + " |")
    lengths = (statistics.mean(len(s.caption) for s in samples), statistics.mean(len(s.url or "") for s in samples))
    return rows, {"nodes_per_drop": nodes_per_drop, "totals": totals, "lengths": lengths}


def one_worker_lines(run: Run, a: argparse.Namespace) -> list[str]:
    """The k-means step of near dedup, the one sample-sized step that meets on one worker: rows
    gathered (1.5 x 20 x k candidates, trimmed to 20 x k), centroids, and the training's vector
    products (filters/dedup.py train_centroids: FAISS, niter 10), per corpus size."""
    lines = []
    for p in a.pairs:
        n_near = units_per_sample(run.rates, p, a, 1.0)["near"] * p
        if n_near <= a.near_flat_max:
            lines.append(f"- {size_name(p)}: {n_near:,.0f} samples reach near dedup: one flat search, no k-means")
            continue
        k = math.ceil(2 * math.sqrt(n_near))
        lines.append(f"- {size_name(p)}: {n_near:,.0f} samples reach near dedup: k = {k:,} clusters; GatherSample "
                     f"brings {1.5 * 20 * k:,.0f} rows (64-d float16 hash vectors) to one worker, trimmed to "
                     f"{20 * k:,}; centroids {k * 64 * 4 / 1e6:,.1f} MB (float32, read by every worker); "
                     f"training: 10 iterations x {20 * k:,} rows x {k:,} centroids = {10 * 20 * k * k:.2e} "
                     "64-d vector products on that worker (not timed here)")
    return lines


def assumptions(run: Run, base: Run | None, a: argparse.Namespace, nodes_per_drop: float,
                lengths: tuple[float, float]) -> list[str]:
    r = run.rates
    return [
        "A model on paper: no cloud was reachable from the build machine; nothing here ran on Dataflow.",
        (f"CPU seconds were measured on a 2-core build machine on the synthetic corpus ({run.path}: "
        f"{run.samples:,} samples, mean image {run.mean_pixels:,.0f} pixels) with the demo scorer; a Dataflow "
        "vCPU is not a core of that machine, and real web images are not synthetic scenes. Stage CPU is "
        "thread CPU, or process CPU for multi-threaded native stages (curate/timing.py PROCESS_CLOCK_STAGES: an "
        "upper bound that also counts other threads busy at the time)."),
        (f"Image size: read, decode, clip_preprocess and write scale with pixels (decode cost is roughly linear in "
        f"pixels): x{a.image_pixels / run.mean_pixels:.2f} for {a.image_pixels:,} pixels per image (default: "
        "curate's ingest resizes to at most 512 x 512, ingest.image_size 512, keep_ratio_largest; raw shards "
        "from elsewhere may hold larger images)."),
        ("Scoring runs on the GPU: clip_encode's CPU time (the demo scorer on CPU) is not counted on the CPU "
        "workers; GPU hours use the H200 rates measured by gpu_score.py (ViT-B-32 fp16) for every decodable "
        f"sample ({r['decodable']:.1%} of the input here). The raw rate excludes decoding and preprocessing "
        "(a ceiling); the end-to-end rate includes the start-up of 15 workers and their decoding on the "
        "machine's 16 CPU cores (a floor; what limited it was not measured)."),
        (f"Keep and duplicate rates are the measured run's unless set: {r['selected']:.1%} of the input pass "
        f"decoding, the basic filter and selection; duplicates: sha256 {r['exact_duplicate']:.1%}, url + caption "
        f"{r['url_caption_duplicate']:.1%}, near {r['near_duplicate']:.1%}; kept {r['kept']:.1%}. Web corpora "
        "differ (set --selected, --exact-dup, --url-caption-dup, --near-dup, --kept)."),
        (f"Near dedup above dedup.near_flat_max ({a.near_flat_max:,}) samples: each hash joins "
        f"{a.hash_assignments} clusters (default: dedup.phash_assignments, the upper bound; the mean depends "
        f"on the data and was not measured), each near-duplicate pair is found {a.pair_copies} times (once per "
        f"shared cluster), {a.edges_per_near_drop} edge per near-duplicate drop (a group of g samples needs at "
        f"least g - 1), {nodes_per_drop:.2f} component nodes per near-duplicate drop (measured: drops + groups); "
        "every edge crosses all 8 component rounds (edges never grow; converged components shrink them); "
        "FinishUnconverged carries nothing (all components converged). The clustered search's CPU grows with "
        "vector products per sample (k + m^2 n / 2k), at the cost per product measured in the run's flat "
        "search (a small search, where fixed costs per call weigh more: likely an overestimate); "
        "k-means training (one worker, 1.5 x 20 x k rows) was not measured and is not counted."),
        (f"Bytes per element: benchmarks/element_sizes.py ({a.size_samples} decoded corpus samples, mean caption "
        f"{lengths[0]:.0f} characters, url {lengths[1]:.0f}; {a.dim}-d float32 image embedding until "
        "DropEmbeddings, text embedding until DropTextEmbeddings). "
        "Longer web captions and urls add "
        "their length to every sample-carrying element. Bytes are Beam's encoded elements, before any "
        "compression the shuffle service applies."),
        (f"Input shards of {a.samples_per_input_shard:,.0f} samples (ingest.samples_per_shard), curated shards of "
        f"{a.samples_per_output_shard:,} (shards.samples_per_shard)."),
        (f"Dataflow worker-hours = vCPU-hours / {a.vcpus_per_worker} vCPUs ({a.machine_type}), every vCPU busy "
        "all the time: a floor (no autoscaling lag, no idle workers, no stragglers, no retries)."),
        ("untimed CPU per sample from the difference between two runs (start-up removed)" if base else
         "untimed CPU averaged over one run, start-up included: an overestimate"),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a laion_filter output folder or its report.json")
    ap.add_argument("--baseline", help="a smaller run of the same command: untimed CPU per extra sample")
    ap.add_argument("--pairs", type=float, nargs="+", default=[100e6, 5e9])
    ap.add_argument("--machine-type", default="n1-standard-16")
    ap.add_argument("--vcpus-per-worker", type=int, default=16)  # n1-standard-16: 16 vCPUs
    ap.add_argument("--gpu-raw-rate", type=float, default=GPU_RAW_PAIRS_PER_S)
    ap.add_argument("--gpu-end-to-end-rate", type=float, default=GPU_END_TO_END_PER_S)
    # curate's ingest (configs/ingest.yaml: image_size 512, keep_ratio_largest) writes at most 512 x 512
    ap.add_argument("--image-pixels", type=float, default=512 * 512)
    ap.add_argument("--samples-per-input-shard", type=float, default=10_000)  # ingest.samples_per_shard
    ap.add_argument("--samples-per-output-shard", type=int, default=None,
                    help="default: the run's shards.samples_per_shard")
    ap.add_argument("--near-flat-max", type=int, default=50_000)  # dedup.near_flat_max
    ap.add_argument("--hash-assignments", type=float, default=8)  # dedup.phash_assignments (upper bound)
    ap.add_argument("--pair-copies", type=float, default=None, help="default: --hash-assignments")
    ap.add_argument("--edges-per-near-drop", type=float, default=1.0)
    for name in ("selected", "exact-dup", "url-caption-dup", "near-dup", "kept"):
        ap.add_argument(f"--{name}", type=float, default=None, help="share of input samples (default: the run's)")
    ap.add_argument("--size-samples", type=int, default=300, help="element_sizes.py samples")
    ap.add_argument("--dim", type=int, default=512, help="embedding dimensions (ViT-B-32: 512)")
    ap.add_argument("--usd-per-vcpu-hour", type=float, default=None)
    ap.add_argument("--usd-per-gpu-hour", type=float, default=None)
    a = ap.parse_args(argv)
    a.pair_copies = a.hash_assignments if a.pair_copies is None else a.pair_copies
    run = load_run(a.run)
    base = load_run(a.baseline) if a.baseline else None
    a.samples_per_output_shard = a.samples_per_output_shard or run.samples_per_output_shard
    for name, key in (("selected", "selected"), ("exact_dup", "exact_duplicate"),
                      ("url_caption_dup", "url_caption_duplicate"), ("near_dup", "near_duplicate"), ("kept", "kept")):
        if getattr(a, name) is not None:
            run.rates[key] = getattr(a, name)
    if a.kept is None and any(getattr(a, n) is not None for n in ("selected", "exact_dup", "url_caption_dup", "near_dup")):
        # what the default graph keeps: selected samples that no dedup step dropped
        r = run.rates
        r["kept"] = (r["selected"] - r["duplicate_key"] - r["exact_duplicate"] - r["url_caption_duplicate"]
                     - r["near_duplicate"])

    print(f"run: {run.path} ({run.samples:,} samples; CPU {run.cpu_seconds:.1f} s; stage CPU s "
          + ", ".join(f"{k} {v:.2f}" for k, v in run.stage_cpu.items()) + ")")
    if base:
        print(f"baseline: {base.path} ({base.samples:,} samples; CPU {base.cpu_seconds:.1f} s; stage CPU s "
              + ", ".join(f"{k} {v:.2f}" for k, v in base.stage_cpu.items()) + ")")
    print("rates (share of input): " + ", ".join(f"{k} {v:.4f}" for k, v in run.rates.items()))
    print(f"mean image pixels {run.mean_pixels:,.0f}; near-duplicate drops {run.near_drops}, groups {run.near_groups}")
    print("\nCPU by stage (vCPU-hours on the CPU workers)\n")
    rows, cpu_totals = cpu_table(run, base, a)
    print("\n".join(rows))
    print("\nGPU hours (every decodable sample scored once)\n")
    print("\n".join(gpu_table(run, a)))
    print("\nBytes shuffled by each GroupByKey of laion_filter's default graph\n")
    rows, info = shuffle_table(run, a)
    print("\n".join(rows))
    print("\nOn one worker: near dedup's k-means (dedup.near_method both: hash vectors)\n")
    print("\n".join(one_worker_lines(run, a)))
    if a.usd_per_vcpu_hour is not None or a.usd_per_gpu_hour is not None:
        print("\nCost at the prices given")
        for p in a.pairs:
            parts = []
            if a.usd_per_vcpu_hour is not None:
                parts.append(f"CPU ${cpu_totals[p] * a.usd_per_vcpu_hour:,.0f}")
            if a.usd_per_gpu_hour is not None:
                lo = p * run.rates["decodable"] / a.gpu_raw_rate / 3600 * a.usd_per_gpu_hour
                hi = p * run.rates["decodable"] / a.gpu_end_to_end_rate / 3600 * a.usd_per_gpu_hour
                parts.append(f"GPU ${lo:,.0f} to ${hi:,.0f}")
            print(f"  {p:,.0f} pairs: " + ", ".join(parts))
    print("\nAssumptions")
    for line in assumptions(run, base, a, info["nodes_per_drop"], info["lengths"]):
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
