"""End-to-end laion_filter throughput and memory on a synthetic corpus, with 1 and 2 workers.

    python benchmarks/laion_filter_e2e.py [--samples 10000 2000] [--workers 1 2] [--work DIR]

Each configuration runs the real CLI in a subprocess; peak RSS is the largest sum over that
process tree (Beam's worker processes included), sampled every 0.2 s from /proc.
Prints a table; nothing here is a pass/fail test. Per run it prints both clocks of report.json
(curate/timing.py): the wall time inside each stage (``stage_wall_seconds``) and its CPU time
(``stage_cpu_seconds``: thread CPU, or process CPU for PROCESS_CLOCK_STAGES), both summed over
workers, the run's CPU seconds (``cpu_seconds``: getrusage of the CLI and its waited-for children),
and the output folder it keeps (DIR/out-SAMPLES-WORKERS), whose report.json
benchmarks/capacity_plan.py reads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from curate import synth  # noqa: E402


def _tree_rss(root: int) -> int:
    """Sum of VmRSS (bytes) over ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            children.setdefault(int(fields["PPid"]), []).append(int(pid))
            rss[int(pid)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_once(corpus: str, out: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "curate.run", "--pipeline", "laion_filter", "--input", corpus,
           "--output", out, "--overwrite"]
    if workers > 1:
        cmd += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.2)

    poller = threading.Thread(target=sample, daemon=True)
    poller.start()
    log = proc.communicate()[0]
    done.set()
    poller.join()
    if proc.returncode:
        raise SystemExit(f"run failed:\n{log[-3000:]}")
    report = json.load(open(os.path.join(out, "report.json")))
    return {"wall": time.time() - t0, "report": report, "peak_rss": peak}


def stage_lines(times: dict) -> list[tuple[str, str]]:
    """report.json's per-stage seconds as two labelled lines, stages in the same order (largest CPU
    first): wall clock inside each stage, and CPU time, both summed over workers."""
    wall, cpu = times.get("stage_wall_seconds", {}), times.get("stage_cpu_seconds", {})
    order = sorted(set(wall) | set(cpu), key=lambda k: (-cpu.get(k, 0.0), -wall.get(k, 0.0), k))

    def text(values):
        return ", ".join(f"{k} {values[k]:.1f}" for k in order if k in values) or "n/a"

    return [("stage wall s (wall clock inside each stage, summed over workers)", text(wall)),
            ("stage CPU s  (CPU time inside each stage, summed over workers)   ", text(cpu))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[10000, 2000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", default="work-tmp/bench")
    args = ap.parse_args()
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for n in args.samples:
        corpus = os.path.join(args.work, f"corpus-{n}")
        if not os.path.exists(os.path.join(corpus, "ground_truth.parquet")):
            synth.generate(corpus, n, seed=0, noise=0.3, processes=os.cpu_count() or 1)
        for w in args.workers:
            r = run_once(corpus, os.path.join(args.work, f"out-{n}-{w}"), w)
            rep = r["report"]
            rows.append((n, w, r["wall"], rep["time"], rep["counts"]["kept"], r["peak_rss"],
                         os.path.join(args.work, f"out-{n}-{w}")))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"machine: {os.cpu_count()} cores, {sys.platform}; scorer: demo (curate-demo-64), CPU")
    print(f"{'samples':>8} {'workers':>7} {'process s':>9} {'pipeline s':>10} {'samples/s':>9} "
          f"{'kept':>6} {'peak RSS':>9} {'CPU s':>7}  (CPU s: report.json cpu_seconds)")
    for n, w, wall, times, kept, rss, out in rows:
        pipe = times["wall_seconds"]
        print(f"{n:>8} {w:>7} {wall:>9.1f} {pipe:>10.1f} {n / pipe:>9.0f} {kept:>6} "
              f"{rss / 2**30:>7.2f}GB {times.get('cpu_seconds', float('nan')):>7.1f}")
        for label, stages in stage_lines(times):
            print(f"{'':>10}{label}: {stages}")
        print(f"{'':>10}output: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
