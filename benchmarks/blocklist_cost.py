"""Cost of block and opt-out lists (filters/blocklist.py): load time, cost per sample, peak memory.

    python benchmarks/blocklist_cost.py [--entries 1000000] [--samples 100000] [--phash-samples 10000] [--kinds sha256,md5,phash,url]

For each kind, writes a list of ``--entries`` random entries (hex digests one per line; phashes as
16 hex digits; URLs of 100k random hosts) in a temporary folder, then runs two fresh processes that
load it through ``Blocklists``: the first parses the file and writes the .npy cache (in the same
temporary folder), the second finds the cache and memory-maps it, which is what every worker after
the first does. Each process then checks ``--samples`` samples (10% of them listed) with the check
a pipeline would call (``check_digests``, ``check_phash``, ``check_url``), and reports its load
time, the time per sample and its peak RSS (VmHWM) before loading (imports and the queries)
and at the end: the difference is what the list and its checks added. Everything is removed afterwards.
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

LISTED_FRACTION = 0.1
HASH_BYTES = {"md5": 16, "sha1": 20, "sha256": 32, "phash": 8}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss, which on Linux carries the
    parent's peak across fork and exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def entries_for(kind: str, n: int, rng: np.random.Generator) -> list[str]:
    if kind in HASH_BYTES:
        raw = rng.bytes(HASH_BYTES[kind] * n)
        width = HASH_BYTES[kind]
        hexed = raw.hex()
        return [hexed[i * 2 * width:(i + 1) * 2 * width] for i in range(n)]
    hosts = [f"img{i}.site{i % 1000}.example" for i in range(100_000)]
    picks = rng.integers(0, len(hosts), n)
    tokens = rng.integers(0, 2**62, n)
    return [f"https://{hosts[h]}/photos/{t:x}.jpg" for h, t in zip(picks, tokens)]


def queries_for(kind: str, listed: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` samples, 10% of them listed (a phash one bit away; a URL with an upper-case host)."""
    hits = [listed[i] for i in rng.integers(0, len(listed), int(n * LISTED_FRACTION))]
    if kind == "phash":
        hits = [f"{int(h, 16) ^ 1:016x}" for h in hits]
    elif kind == "url":
        hits = [h.replace("https://img", "https://IMG") for h in hits]
    return hits + entries_for(kind, n - len(hits), rng)


def child(kind: str, path: str, queries_path: str, cache: str) -> None:
    """Load one list in this fresh process, check the queries, print a JSON line."""
    from curate.filters import blocklist

    with open(queries_path) as f:
        queries = f.read().split("\n")
    before = peak_rss_mb()  # peak so far: imports and queries
    t0 = time.perf_counter()
    lists = blocklist.Blocklists([blocklist.ListSpec(path, kind)], cache=cache)
    loaded = lists.lists[0]
    load_s = time.perf_counter() - t0
    if kind in blocklist.HASH_KINDS:
        check = lambda q: lists.check_digests({kind: q})  # noqa: E731
    elif kind == "phash":
        check = lists.check_phash
    else:
        check = lists.check_url
    t0 = time.perf_counter()
    matched = sum(check(q) is not None for q in queries)
    per_sample = (time.perf_counter() - t0) / len(queries)
    print(json.dumps({"load_s": load_s, "per_sample_us": per_sample * 1e6, "matched": matched,
                      "samples": len(queries), "entries": loaded.entries, "rss_before_mb": before,
                      "peak_rss_mb": peak_rss_mb(),
                      "memmap": isinstance(getattr(loaded, "digests", getattr(loaded, "hashes", None)), np.memmap)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--phash-samples", type=int, default=10_000,
                    help="samples checked against the phash list (an exhaustive search: about 1 ms each at 1M)")
    ap.add_argument("--kinds", default="sha256,md5,phash,url")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=4, metavar=("KIND", "LIST", "QUERIES", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="blocklist_cost_") as tmp:
        for kind in args.kinds.split(","):
            listed = entries_for(kind, args.entries, rng)
            path = os.path.join(tmp, f"{kind}.txt")
            t0 = time.perf_counter()
            with open(path, "w") as f:
                f.write(f"# {args.entries} random {kind} entries\n" + "\n".join(listed) + "\n")
            write_s = time.perf_counter() - t0
            queries = os.path.join(tmp, f"{kind}.queries")
            with open(queries, "w") as f:
                f.write("\n".join(queries_for(kind, listed, args.phash_samples if kind == "phash" else args.samples, rng)))
            del listed
            for load in ("first (builds cache)", "cached (mmap)"):
                out = subprocess.run([sys.executable, __file__, "--child", kind, path, queries, os.path.join(tmp, "cache")],
                                     check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                rows.append({"kind": kind, "load": load, "file_mb": os.path.getsize(path) / 2**20,
                             "write_s": write_s, **result})
    print(f"{args.entries:,} entries per list, {args.samples:,} samples checked per load ({args.phash_samples:,} "
          f"for phash), {LISTED_FRACTION:.0%} of them listed; load average {os.getloadavg()[0]:.1f}")
    print("| list | entries | file MB | load | load s | per sample µs | matched | peak RSS before load MB | peak RSS MB | mmap |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['entries']:,} | {r['file_mb']:.0f} | {r['load']} | {r['load_s']:.2f} | "
              f"{r['per_sample_us']:.1f} | {r['matched']:,} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{'yes' if r['memmap'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
