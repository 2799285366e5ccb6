"""Ingest throughput: curate's ingest pipeline against the img2dataset CLI, same URLs, same machine.

    python benchmarks/ingest_throughput.py [--urls 4000] [--processes 2] [--threads 16] [--repeats 2]
                                           [--size 640x480]

Serves 640x480 synthetic JPEGs (``--size 1024x768``: web-sized ones) from a loopback server
(tests/ingest_server.py, its own process), writes one URL parquet, then runs, alternately and
``--repeats`` times each, the img2dataset CLI (``--processes_count P --thread_count T``) and
``curate.run --pipeline ingest`` with P Beam worker processes of T download threads, both resizing
to 256 (keep_ratio, jpg q95, sha256, EXIF: the CLI's defaults). Prints images/s two ways: over the
whole command's wall time (start-up included), and over the span its shards were being downloaded
(first shard start to last shard end, from the NNNNN_stats.json both tools write), plus per core.
Target: curate >= 0.9x img2dataset.

curate runs twice per repeat: ``curate (politeness off)`` with what ingest did before per-host
politeness existed (no per-host limits, robots.txt and TDM opt-outs not fetched, no retries, no DNS
cache: today's behaviour), and ``curate (limits not hit)`` with the politeness on (robots.txt and
tdmrep.json fetched, retries and DNS cache as the defaults) and per-host limits above what the run
reaches (connections = threads, 100,000 requests/s). The last line prints their ratio on the
shard span (target: >= 0.95x).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def shard_span(folder: str) -> tuple[float, int, str]:
    stats = []
    for path in glob.glob(os.path.join(folder, "*_stats.json")):
        with open(path) as f:
            stats.append(json.load(f))
    t0 = min(s["start_time"] for s in stats)
    span = max(s["end_time"] for s in stats) - t0
    shards = " ".join(f"{s['start_time'] - t0:.1f}-{s['end_time'] - t0:.1f}" for s in sorted(stats, key=lambda s: s["start_time"]))
    return span, sum(s["successes"] for s in stats), shards


def output_sizes(folder: str) -> str:
    """The written images' sizes (width x height, from the parquet files both tools write), most common first."""
    from collections import Counter

    sizes = Counter()
    for path in glob.glob(os.path.join(folder, "*.parquet")):
        t = pq.read_table(path, columns=["width", "height"]).to_pylist()
        sizes.update(f"{r['width']}x{r['height']}" for r in t if r["width"])
    return ", ".join(f"{k} ({n})" for k, n in sizes.most_common(3))


def run_img2dataset(urls: str, out: str, args) -> list[str]:
    return [os.path.join(BIN, "img2dataset"), "--url_list", urls, "--input_format", "parquet",
            "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
            "--output_folder", out, "--processes_count", str(args.processes), "--thread_count", str(args.threads),
            "--image_size", "256", "--resize_mode", "keep_ratio", "--number_sample_per_shard", str(args.shard),
            "--timeout", "10"]


# Politeness settings of the two curate runs (see the module doc).
POLITENESS_OFF = {"per_host_connections": 0, "per_host_rate": 0, "respect_robots_txt": "false",
                  "respect_tdmrep": "false", "retries": 0, "dns_ttl": 0}
LIMITS_NOT_HIT = {"per_host_connections": None, "per_host_rate": 100000}  # None: the thread count


def run_curate(urls: str, out: str, args, politeness: dict) -> list[str]:
    workers = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.processes}"] \
        if args.processes > 1 else []
    polite = []
    for key, value in politeness.items():
        polite += ["--set", f"ingest.{key}={args.threads if value is None else value}"]
    return [sys.executable, "-m", "curate.run", "--pipeline", "ingest", "--input", urls, "--output", out,
            "--set", "ingest.image_size=256", "--set", "ingest.resize_mode=keep_ratio",
            "--set", "ingest.resize_only_if_bigger=false", "--set", f"ingest.samples_per_shard={args.shard}",
            "--set", f"ingest.thread_count={args.threads}", "--set", "ingest.allow_networks=127.0.0.0/8",
            *polite, *workers]


TOOLS = {
    "img2dataset": run_img2dataset,
    "curate (politeness off)": lambda urls, out, args: run_curate(urls, out, args, POLITENESS_OFF),
    "curate (limits not hit)": lambda urls, out, args: run_curate(urls, out, args, LIMITS_NOT_HIT),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--urls", type=int, default=4000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--shard", type=int, default=1000, help="URLs per shard")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the served JPEGs (web-sized: 1024x768)")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = tempfile.mkdtemp(prefix="ingest-bench-")
    port = free_port()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": ROOT}
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "ingest_server.py"), "--port", str(port),
                               "--width", str(width), "--height", str(height)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        server.stdout.readline()  # "serving on ..." once the images are rendered
        urls = os.path.join(work, "urls.parquet")
        pq.write_table(pa.table({"url": [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(args.urls)],
                                 "caption": [f"synthetic scene number {i}" for i in range(args.urls)]}), urls)
        results = {tool: [] for tool in TOOLS}
        for rep in range(args.repeats):
            for n, (tool, command) in enumerate(TOOLS.items()):
                out = os.path.join(work, f"tool{n}-{rep}")
                before = load()
                t0 = time.time()
                p = subprocess.run(command(urls, out, args), capture_output=True, text=True, env=env, cwd=ROOT, check=False)
                wall = time.time() - t0
                if p.returncode:
                    print(p.stderr[-3000:], file=sys.stderr)
                    return 1
                folder = os.path.join(out, "raw") if tool.startswith("curate") else out
                span, ok, shards = shard_span(folder)
                results[tool].append((wall, span, ok, before, load()))
                print(f"  {tool:<24} run {rep + 1}: {ok} images, wall {wall:.1f}s, shards {span:.1f}s, "
                      f"load {before} -> {load()}; output sizes {output_sizes(folder)}; "
                      f"shards (s from first start): {shards}", flush=True)
                shutil.rmtree(out)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    cores = min(args.processes, os.cpu_count() or 1)
    print(f"\n{args.urls} URLs of {width}x{height} JPEGs from 127.0.0.1, resized to 256 (keep_ratio), "
          f"{args.processes} processes x {args.threads} threads, {os.cpu_count()} cores; median of {args.repeats}")
    print("| tool | images | wall s | images/s (wall) | shard s | images/s (shards) | per core (shards) | vs img2dataset |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base, rates = None, {}
    for tool in TOOLS:
        wall = statistics.median(r[0] for r in results[tool])
        span = statistics.median(r[1] for r in results[tool])
        ok = results[tool][0][2]
        rate = ok / span
        base, rates[tool] = base or rate, rate
        print(f"| {tool} | {ok} | {wall:.1f} | {ok / wall:.1f} | {span:.1f} | {rate:.1f} | {rate / cores:.1f} | "
              f"{rate / base:.2f}x |")
    ratio = rates["curate (limits not hit)"] / rates["curate (politeness off)"]
    print(f"\nlimits not hit vs politeness off (today's behaviour), images/s over the shard span: {ratio:.2f}x "
          f"(target >= 0.95x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
