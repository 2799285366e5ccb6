"""The memory floor of Beam's local multi-process runner itself: a pipeline with no curate code in it.

    python benchmarks/runner_memory.py [--sizes 20000,100000,300000] [--bytes 1200] [--workers 2]

What it runs: the shape of laion_filter on stored scores without any of its work. One element per
"input shard" of 2,000 samples is spread over the workers, each shard becomes 2,000 elements of
``--bytes`` random bytes (about what one stored-scores Sample with 64-d embeddings pickles to:
benchmarks/element_sizes.py), they are grouped by a key of 1,000 values and counted. Each size runs
twice: on Beam as it is, and with what ``python -m curate.run`` adds (curate.local_runner.prepared:
input handed to workers in messages of 4-8 MB, workers that release finished bundles' output
buffers (curate.local_worker), and malloc settings for the worker processes).
It prints the peak RSS of every process (the runner and its workers), as
benchmarks/scale_memory.py does for laion_filter: growth on Beam as it is is the runner's own
(FnApiRunner sends a worker its whole share of a stage's input as one gRPC message), not curate's.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from proctree import is_beam_worker, run_monitored  # noqa: E402

SHARD = 2000


def pipeline(n: int, size: int, workers: int, chunked: bool) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    curate_runner = contextlib.nullcontext()
    if chunked:  # what python -m curate.run does around its runs
        sys.path.insert(0, os.path.dirname(HERE))
        from curate import local_runner

        curate_runner = local_runner.prepared()

    def shard(index):
        for i in range(SHARD):
            yield index * SHARD + i, os.urandom(size)

    options = PipelineOptions(["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"])
    with curate_runner, beam.Pipeline(runner="FnApiRunner", options=options) as p:
        (p | "Shards" >> beam.Create(list(range(n // SHARD)))
           | "Spread" >> beam.Reshuffle()
           | "Samples" >> beam.FlatMap(shard)
           | "Key" >> beam.Map(lambda kv: (kv[0] % 1000, kv[1]))
           | "Group" >> beam.GroupByKey()
           | "Count" >> beam.MapTuple(lambda _k, values: sum(1 for _ in values)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20000,100000,300000")
    ap.add_argument("--bytes", type=int, default=1200, help="bytes per element")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)  # one run, in the monitored child
    ap.add_argument("--chunked", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        pipeline(args.run, args.bytes, args.workers, args.chunked)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {os.cpu_count()} cores; load before: {os.getloadavg()[0]:.2f}")
    print(f"Beam FnApiRunner, multi_processing, {args.workers} workers, {args.bytes}-byte elements, "
          f"{SHARD} per shard, no curate code")
    variants = {"Beam as it is": [], "curate.local_runner": ["--chunked"]}
    print("| elements | runner | wall s | runner peak RSS | worker peak RSS, each |")
    print("|---:|---|---:|---:|---|")
    peaks = {v: {} for v in variants}
    for n in sizes:
        for variant, flags in variants.items():
            cmd = [sys.executable, os.path.abspath(__file__), "--run", str(n), "--bytes", str(args.bytes),
                   "--workers", str(args.workers), *flags]
            res, mon, wall = run_monitored(cmd, cwd=HERE)
            if res.returncode:
                raise SystemExit(f"run failed: {res.stdout[-2000:]}")
            procs = sorted(mon.procs.values(), key=lambda p: p["pid"])
            workers = [p["peak_rss"] / 2**30 for p in procs if is_beam_worker(p["cmd"])]
            peaks[variant][n] = max(workers)
            print(f"| {n:,} | {variant} | {wall:.1f} | {mon.procs[min(mon.procs)]['peak_rss'] / 2**30:.2f} GB | "
                  f"{', '.join(f'{w:.2f}' for w in workers)} GB |", flush=True)
    for variant, peak in peaks.items():
        print(f"{variant}: largest worker peak RSS {peak[sizes[-1]]:.2f} GB at {sizes[-1]:,} / "
              f"{peak[sizes[0]]:.2f} GB at {sizes[0]:,} = {peak[sizes[-1]] / peak[sizes[0]]:.2f}x")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
