"""Does curation help? DataComp in a box with curate.quality's defaults, and the issue's four targets.

    python benchmarks/quality.py                  # the full default comparison into ./quality-bench
    python benchmarks/quality.py --out DIR -- --seeds 1 --samples-seen 8000   # pass flags on

Runs ``python -m curate.quality`` (the raw pool of the built-in corpus, laion_filter's default
recipe and its ablations, 3 seeds each at equal samples seen), then prints its table and checks:

1. the default curated subset beats the raw pool on the mean of the concept tasks by more than
   twice the larger of the two seed spreads;
2. some curated subset with at most half the raw pool's unique samples matches or beats the raw
   pool (its mean at least the raw mean minus the raw pool's spread);
3. the ablations: what each step gives (default mean minus the mean without it);
4. the whole comparison finishes in under 30 minutes.
Nothing is asserted: the figures are printed as they are.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ABLATION_STEP = {"no_clip_select": "CLIP-score selection", "no_dedup": "deduplication",
                 "no_basic_filter": "basic filter"}


def run_quality(out: str, flags: list[str]) -> tuple[int, dict | None, float]:
    """``python -m curate.quality --out OUT FLAGS``: (exit status, its results.json or None, wall seconds)."""
    t0 = time.time()
    status = subprocess.run([sys.executable, "-m", "curate.quality", "--out", out, *flags], check=False).returncode
    wall = time.time() - t0
    if status != 0:
        print(f"curate.quality exited {status}")
        return status, None, wall
    with open(os.path.join(out, "results.json")) as f:
        return status, json.load(f), wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="quality-bench")
    ap.add_argument("rest", nargs="*", help="flags passed on to python -m curate.quality (after --)")
    args = ap.parse_args(argv)
    status, doc, wall = run_quality(args.out, args.rest)
    if status != 0:
        return status
    with open(os.path.join(args.out, "results.md")) as f:
        table = f.read()
    s = doc["summary"]
    print(f"\n# quality: {platform.node() or 'machine'}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}; command: {' '.join(['python benchmarks/quality.py', *sys.argv[1:]])}")
    print(f"settings: {json.dumps(doc['settings'], sort_keys=True)}")
    if doc.get("hygiene"):
        h = doc["hygiene"]
        print(f"hygiene: {h['pool_samples_near_an_eval_image']} pool images within cosine {h['threshold']} of one of "
              f"{h['eval_images']} evaluation images (removed from every subset)")
    print(table)
    raw, cur = s.get("raw"), s.get("curated")
    if raw and cur:
        margin = cur["scores"]["mean"] - raw["scores"]["mean"]
        spread = max(cur["spread"]["mean"], raw["spread"]["mean"])
        print(f"1. curated - raw, concept mean: {100 * margin:+.1f} points; twice the larger spread: "
              f"{200 * spread:.1f} -> {'met' if margin > 2 * spread else 'not met'}")
        half = [(n, v) for n, v in s.items() if n != "raw" and v["unique_samples"] <= raw["unique_samples"] / 2]
        for n, v in half:
            ok = v["scores"]["mean"] >= raw["scores"]["mean"] - raw["spread"]["mean"]
            print(f"2. {n}: {v['unique_samples']:,} unique samples ({v['unique_samples'] / raw['unique_samples']:.0%} "
                  f"of raw), mean {100 * v['scores']['mean']:.1f} vs raw {100 * raw['scores']['mean']:.1f} "
                  f"± {100 * raw['spread']['mean']:.1f} -> {'met' if ok else 'not met'}")
        if not half:
            print("2. no curated subset holds at most half of the raw pool's unique samples")
        for n, step in ABLATION_STEP.items():
            if n in s:
                gain = cur["scores"]["mean"] - s[n]["scores"]["mean"]
                print(f"3. {step}: default minus {n} = {100 * gain:+.1f} points of concept mean "
                      f"(spreads {100 * cur['spread']['mean']:.1f} / {100 * s[n]['spread']['mean']:.1f})")
    print(f"4. wall time of the whole comparison: {wall / 60:.1f} min -> {'met' if wall < 1800 else 'not met'} "
          "(target: under 30 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
