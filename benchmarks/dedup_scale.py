"""Near-duplicate removal at scale through the Beam composite the pipeline runs: wall time, CPU time,
peak RSS, and how many near-duplicate pairs are left in the output.

    python benchmarks/dedup_scale.py --sizes 20000 100000            # one process (FnApiRunner)
    python benchmarks/dedup_scale.py --sizes 100000 --workers 2      # 2 local worker processes

What runs: ``curate.pipelines.dedup.Deduplicate(DedupParams(...))``, the composite laion_filter
applies after selection, with near dedup only (``exact=False``) and ``near_method='clip'`` (the
synthetic rows have embeddings, no images, so no perceptual hashes), threshold 0.96,
``near_flat_max`` 50,000 as in the config (``--flat-max`` forces the clustered search on small
sizes). Each size runs in a fresh process: a Beam pipeline that reads the embeddings from disk in
blocks of 10,000 rows into Samples and applies Deduplicate; its decision rows (one per dropped
sample: key, kept_instead) are saved. Wall and CPU time cover that pipeline (CPU summed over the
process and its Beam workers), not data generation or the truth below.

Data: L2-normalised 512-d float16 embeddings with cluster structure, as CLIP embeddings have (a
uniform random cloud has none, which flatters k-means): rows are drawn around 1,000 topic centres
with Zipf-like topic sizes (within-topic cosine about 0.5), and 1% of rows get a planted near copy
whose cosine to its original is spread over [0.95, 0.999] (some below the threshold).

Columns, each with one meaning:
  near_duplicate rows   decision rows the composite wrote (samples it dropped)
  drops within rule     share of those rows whose cosine to the sample named in kept_instead,
                        recomputed here, is >= the threshold
  planted pairs left    planted pairs at or above the threshold whose two members were both kept
                        (the greedy keep rule never keeps both members of a pair the search found,
                        so these are pairs the search missed), of all such planted pairs
  query pairs left      the same for every pair at or above the threshold between 1,000 random rows
                        and all rows (exact brute force), which also catches accidental duplicates
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from proctree import run_monitored  # noqa: E402

DIM, TOPICS, PLANTED, THRESHOLD, QUERIES, BLOCK = 512, 1000, 0.01, 0.96, 1000, 10_000


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


def _block_samples(start: int, path: str):
    """Rows [start, start + BLOCK) as Samples: key = row number, one input shard per block."""
    from curate.records import Sample

    x = np.load(path, mmap_mode="r")
    for i in range(start, min(start + BLOCK, len(x))):
        yield Sample(key=f"{i:09d}", shard_index=i // BLOCK, shard_path=f"{i // BLOCK:05d}.tar",
                     member_index=i % BLOCK, clip_score=0.5, sha256=str(i),
                     image_embedding=np.asarray(x[i], dtype=np.float32))


def _save_rows(rows, path: str) -> None:
    np.save(path, np.array([(int(r["key"]), int(r["kept_instead"])) for r in rows], dtype=np.int64).reshape(-1, 2))


def run_beam(path: str, workers: int, flat_max: int) -> dict:
    """Child process: embeddings -> Samples -> Deduplicate, on Beam's local runner."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from curate.pipelines.dedup import Deduplicate, DedupParams

    n = len(np.load(path, mmap_mode="r"))
    params = DedupParams(exact=False, url_caption=False, near=True, near_method="clip",
                         near_threshold=THRESHOLD, near_flat_max=flat_max)
    flags = ["--runner=FnApiRunner"]
    if workers > 1:
        flags += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    with beam.Pipeline(options=PipelineOptions(flags)) as p:
        out = (p | beam.Create(list(range(0, n, BLOCK))) | beam.Reshuffle()
               | beam.FlatMap(_block_samples, path)
               | Deduplicate(params))
        # dropped rows are about 1% of the input: small enough to save from one list
        _ = out["decisions"] | beam.combiners.ToList() | beam.Map(_save_rows, path + ".dropped.npy")
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"self_cpu_s": r.ru_utime + r.ru_stime}


def left_pairs(path: str, seed: int = 1) -> dict:
    """Score the saved decisions against the truth (see the module docstring)."""
    x = np.load(path, mmap_mode="r")
    n = len(x)
    dropped = np.load(path + ".dropped.npy")
    is_dropped = np.zeros(n, bool)
    is_dropped[dropped[:, 0]] = True

    def cos(a, b):
        return np.round(np.einsum("ij,ij->i", x[a].astype(np.float32), x[b].astype(np.float32)), 4)

    within = float(np.mean(cos(dropped[:, 0], dropped[:, 1]) >= THRESHOLD)) if len(dropped) else float("nan")
    planted = np.load(path + ".pairs.npy")
    planted = planted[cos(planted[:, 0], planted[:, 1]) >= THRESHOLD]
    planted_left = int(np.sum(~is_dropped[planted[:, 0]] & ~is_dropped[planted[:, 1]]))
    queries = np.random.default_rng(seed).choice(n, size=min(QUERIES, n), replace=False)
    q = x[queries].astype(np.float32)
    truth = set()
    for a in range(0, n, 50_000):
        s = np.round(q @ x[a:a + 50_000].astype(np.float32).T, 4)
        qi, rj = np.nonzero(s >= THRESHOLD)
        for u, v in zip(queries[qi], rj + a, strict=True):
            if u != v:
                truth.add((min(int(u), int(v)), max(int(u), int(v))))
    query_left = sum(1 for u, v in truth if not is_dropped[u] and not is_dropped[v])
    return {"dropped_rows": len(dropped), "within_rule": within, "planted_pairs": len(planted),
            "planted_left": planted_left, "query_pairs": len(truth), "query_left": query_left}


def measure(args, work: str) -> int:
    from curate.filters.dedup import cluster_count

    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average; other processes share the CPUs)", flush=True)
    rows = []
    for n in args.sizes:
        path = generate(os.path.join(work, f"emb_{n}.npy"), n)
        res, mon, wall = run_monitored([sys.executable, __file__, "--run", path, "--workers", str(args.workers),
                                        "--flat-max", str(args.flat_max)])
        if res.returncode:
            raise SystemExit(f"size {n} failed:\n{res.stdout[-3000:]}")
        child = json.loads(res.stdout.strip().splitlines()[-1])
        root = mon.procs.get(min(mon.procs)) if mon.procs else None
        # the root's own CPU is read from inside at its end; the workers' from /proc while they ran
        cpu = child["self_cpu_s"] + sum(p["cpu_s"] for pid, p in mon.procs.items() if root is None or pid != root["pid"])
        row = {"n": n, "workers": args.workers, "clusters": cluster_count(n, args.flat_max), "wall_s": wall,
               "cpu_s": cpu, "peak_rss_gb": mon.peak_tree_rss / 2**30, **left_pairs(path)}
        rows.append(row)
        for suffix in ("", ".pairs.npy", ".dropped.npy"):
            os.remove(path + suffix)
        print(json.dumps(row), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print()
    print("| rows | worker processes | clusters | wall s | CPU s | peak RSS (all processes) | near_duplicate rows | "
          "drops within rule | planted pairs left | query pairs left |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['workers']} | {r['clusters']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} GB | {r['dropped_rows']:,} | {r['within_rule']:.4f} | "
              f"{r['planted_left']} of {r['planted_pairs']:,} | {r['query_left']} of {r['query_pairs']:,} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--workers", type=int, default=1, help="Beam worker processes (1: FnApiRunner in one process)")
    ap.add_argument("--flat-max", type=int, default=50_000,
                    help="DedupParams.near_flat_max: up to this many rows, one exact search (config default 50,000)")
    ap.add_argument("--work", default=None, help="folder for the generated embeddings (default: a temp dir)")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        print(json.dumps(run_beam(args.run, args.workers, args.flat_max)))
        return 0
    if args.work:
        os.makedirs(args.work, exist_ok=True)
        return measure(args, args.work)
    with tempfile.TemporaryDirectory(prefix="dedup_scale_") as work:
        return measure(args, work)


if __name__ == "__main__":
    sys.exit(main())
