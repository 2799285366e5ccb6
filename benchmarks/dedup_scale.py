"""Near-duplicate search at scale: wall time, peak RSS, precision and recall of the found pairs.

    python benchmarks/dedup_scale.py                       # 100k and 1M (default)
    python benchmarks/dedup_scale.py --sizes 100000 300000 1000000 --estimate 10000000

Data: L2-normalised 512-d float16 embeddings with cluster structure, as CLIP embeddings have (a
uniform random cloud has none, which flatters k-means): rows are drawn around 1,000 topic centres
with Zipf-like topic sizes (within-topic cosine about 0.5), and 1% of rows get a planted near copy
whose cosine to its original is spread over [0.95, 0.999] (some below the 0.96 threshold, so the
search must also leave pairs out).

Truth: exact brute force over all n^2 pairs is about 1 PFLOP at 1M, too slow here. So recall is
measured on (a) every planted pair whose fp16 cosine reaches the threshold and (b) every pair above
the threshold of 1,000 random query rows against all n rows (exact, float32 blocks), which also
catches accidental duplicates; precision recomputes the cosine of every pair found. Each size runs
in a fresh process that loads the embeddings from disk and runs ``filters.dedup.near_pairs`` (the
steps of the Beam composite, in memory); its wall time and peak RSS cover load + search, not data
generation or truth. A larger size may be estimated from a power-law fit of the measured ones
(printed as such).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DIM, TOPICS, PLANTED, THRESHOLD, QUERIES = 512, 1000, 0.01, 0.96, 1000


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def generate(path: str, n: int, seed: int = 0) -> str:
    """Write n clustered fp16 embeddings (.npy) and the planted pairs (.pairs.npy)."""
    rng = np.random.default_rng(seed)
    centres = _normalise(rng.standard_normal((TOPICS, DIM)).astype(np.float32))
    weights = 1.0 / np.arange(1, TOPICS + 1) ** 0.8
    n_orig = n - int(n * PLANTED)
    topic = rng.choice(TOPICS, size=n_orig, p=weights / weights.sum())
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    for a in range(0, n_orig, 100_000):
        t = topic[a:a + 100_000]
        noise = rng.standard_normal((len(t), DIM)).astype(np.float32) / np.sqrt(DIM)
        out[a:a + len(t)] = _normalise(centres[t] + noise)
    src = np.sort(rng.choice(n_orig, size=n - n_orig, replace=False))
    cos = rng.uniform(0.95, 0.999, size=len(src))
    tau = np.sqrt(1 / cos**2 - 1)
    noise = _normalise(rng.standard_normal((len(src), DIM)).astype(np.float32))
    out[n_orig:] = _normalise(out[src].astype(np.float32) + tau[:, None] * noise)
    out.flush()
    np.save(path + ".pairs.npy", np.stack([src, np.arange(n_orig, n)], axis=1))
    return path


def cpu_s() -> float:
    """CPU seconds (user + system) of this process: a figure that other load on the machine
    inflates less than wall time."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_gb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent
    across fork + exec, so a child would report the generator's peak."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 2**20


def run_search(path: str) -> dict:
    """Child process: load, search, report wall time, peak RSS and the pairs found."""
    from curate.filters import dedup

    start = time.perf_counter()
    x = np.load(path)
    ranks = np.array([dedup.training_rank(str(i), (0, i)) for i in range(len(x))], dtype=np.uint64)
    i, j, _s = dedup.near_pairs(x, THRESHOLD, ranks)
    wall = time.perf_counter() - start
    np.save(path + ".found.npy", np.stack([i, j], axis=1))
    return {"wall_s": wall, "cpu_s": cpu_s(), "peak_rss_gb": peak_rss_gb(),
            "clusters": dedup.cluster_count(len(x), 50_000), "found": len(i)}


def _block_samples(start: int, path: str, block: int):
    from curate.records import Sample

    x = np.load(path, mmap_mode="r")
    for i in range(start, min(start + block, len(x))):
        yield Sample(key=f"{i:08d}", shard_index=i // block, shard_path=f"{i // block:05d}.tar",
                     member_index=i % block, clip_score=0.5, sha256=str(i),
                     image_embedding=np.asarray(x[i], dtype=np.float32))


def run_beam(path: str) -> dict:
    """Child process: the Beam composite itself (near dedup only) on Beam's local FnApiRunner."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from curate.pipelines.dedup import Deduplicate, DedupParams

    n, block = len(np.load(path, mmap_mode="r")), 10_000
    start = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = (p | beam.Create(list(range(0, n, block))) | beam.Reshuffle()
               | beam.FlatMap(_block_samples, path, block)
               | Deduplicate(DedupParams(exact=False, url_caption=False)))
        (out["decisions"] | beam.Map(lambda r: (int(r["key"]), int(r["kept_instead"])))
         | beam.combiners.ToList() | beam.Map(lambda rows: np.save(path + ".found.npy", np.array(rows).reshape(-1, 2))))
    wall = time.perf_counter() - start
    from curate.filters import dedup

    return {"wall_s": wall, "cpu_s": cpu_s(), "peak_rss_gb": peak_rss_gb(), "clusters": dedup.cluster_count(n, 50_000), "found": 0}


def truth_and_scores(path: str, seed: int = 1) -> dict:
    x = np.load(path, mmap_mode="r")
    n = len(x)
    found = np.load(path + ".found.npy")
    found_set = set(map(int, found.min(axis=1) * n + found.max(axis=1)))
    # precision: every found pair re-checked exactly
    sims = np.einsum("ij,ij->i", x[found[:, 0]].astype(np.float32), x[found[:, 1]].astype(np.float32))
    precision = float(np.mean(np.round(sims, 4) >= THRESHOLD)) if len(found) else 1.0
    # recall (a): planted pairs above the threshold
    planted = np.load(path + ".pairs.npy")
    psim = np.einsum("ij,ij->i", x[planted[:, 0]].astype(np.float32), x[planted[:, 1]].astype(np.float32))
    planted = planted[np.round(psim, 4) >= THRESHOLD]
    lo, hi = np.minimum(planted[:, 0], planted[:, 1]), np.maximum(planted[:, 0], planted[:, 1])
    recall_planted = float(np.mean([int(a) * n + int(b) in found_set for a, b in zip(lo, hi, strict=True)]))
    # recall (b): exact brute force of random queries against all rows
    queries = np.random.default_rng(seed).choice(n, size=min(QUERIES, n), replace=False)
    q = x[queries].astype(np.float32)
    truth = []
    for a in range(0, n, 50_000):
        s = q @ x[a:a + 50_000].astype(np.float32).T
        qi, rj = np.nonzero(np.round(s, 4) >= THRESHOLD)
        rj = rj + a
        keep = queries[qi] != rj
        truth += [(min(int(u), int(v)), max(int(u), int(v))) for u, v in zip(queries[qi][keep], rj[keep], strict=True)]
    truth = set(truth)
    recall_queries = float(np.mean([a * n + b in found_set for a, b in truth])) if truth else 1.0
    return {"precision": precision, "recall_planted": recall_planted, "planted_pairs": len(planted),
            "recall_queries": recall_queries, "query_pairs": len(truth)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--estimate", type=int, nargs="*", default=[10_000_000],
                    help="sizes to estimate from a power-law fit of the measured ones")
    ap.add_argument("--work", default=None, help="folder for the generated embeddings (default: a temp dir)")
    ap.add_argument("--beam", action="store_true",
                    help="run the Beam composite (pipelines.dedup.Deduplicate, near dedup only) on Beam's local "
                         "FnApiRunner instead of its in-memory form; pairs are (dropped, kept) rows")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--run-beam", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        print(json.dumps(run_search(args.run)))
        return 0
    if args.run_beam:
        print(json.dumps(run_beam(args.run_beam)))
        return 0
    if args.work:
        return measure(args, args.work)
    with tempfile.TemporaryDirectory(prefix="dedup_scale_") as work:
        return measure(args, work)


def measure(args, work: str) -> int:
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average; other processes share the CPUs)")
    rows = []
    for n in args.sizes:
        path = generate(os.path.join(work, f"emb_{n}.npy"), n)
        mode = "--run-beam" if args.beam else "--run"
        res = subprocess.run([sys.executable, __file__, mode, path], check=True, capture_output=True, text=True)
        row = {"n": n, **json.loads(res.stdout.strip().splitlines()[-1]), **truth_and_scores(path)}
        if args.beam:
            row["found"] = len(np.load(path + ".found.npy"))
        rows.append(row)
        for suffix in ("", ".pairs.npy", ".found.npy"):
            os.remove(path + suffix)
        print(json.dumps(row), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print()
    print("| rows | clusters | wall s | CPU s | peak RSS GB | pairs found | precision | recall planted (pairs) | recall random queries (pairs) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['clusters']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['found']:,} | "
              f"{r['precision']:.4f} | {r['recall_planted']:.4f} ({r['planted_pairs']:,}) | "
              f"{r['recall_queries']:.4f} ({r['query_pairs']:,}) |")
    if len(rows) >= 2 and args.estimate:
        b, a = np.polyfit(np.log([r["n"] for r in rows]), np.log([r["wall_s"] for r in rows]), 1)
        for n in args.estimate:
            print(f"| {n:,} (estimated: wall ~ n^{b:.2f} fit of the rows above) | {2 * int(np.sqrt(n)):,} | "
                  f"{np.exp(a) * n ** b:.0f} | - | - | - | - | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
