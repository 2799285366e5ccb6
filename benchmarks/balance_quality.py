"""Does balancing help? Balanced vs unbalanced subsets of a skewed pool at equal samples seen.

    python benchmarks/balance_quality.py                    # into ./balance-bench
    python benchmarks/balance_quality.py --out DIR -- --seeds 3 --samples-seen 24000   # pass flags on

Runs ``python -m curate.quality --mix skewed`` (a pool of the built-in corpus in its skewed mix: 12
languages, English about half, a few shapes and colours dominant) with four recipes: the default
(CLIP threshold), the default with balancing (``balanced``: balance.enabled, cap 50), the top half of
CLIP scores per language (``language_top``) and that with balancing (``language_top_balanced``),
plus the raw pool. Then it prints, per subset, from curate.quality's results.json and each
subset's report.json:

- the subset's samples per language group (head: en; middle: de fr es ru; tail: the rest);
- concept accuracy and retrieval R@1 per language group (the mean over that group's datasets);
- per-class accuracy of head and tail concepts: the two most common shapes and colours of the
  skewed mix against the two rarest (curate.synth.SKEWED), over every language;
- the head-to-tail ratio of metadata matches before and after the run (the coverage audit).

Nothing is asserted: the figures are printed as they are, with the seed spread.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from curate.filters.balance import head_to_tail_ratio
from quality import run_quality  # benchmarks/quality.py, beside this script

from curate import synth
from curate.quality.evalsets import class_names, class_values
from curate.quality.evaluate import RETRIEVAL, discover

RECIPES = "curated,balanced,language_top,language_top_balanced"
GROUPS = {"head (en)": ["en"], "middle (de fr es ru)": ["de", "fr", "es", "ru"],
          "tail (pt zh ja ar ko hi th)": ["pt", "zh", "ja", "ar", "ko", "hi", "th"]}
DEFAULT_FLAGS = ["--seeds", "2", "--eval-images", "200", "--eval-pairs", "200"]


def _ranked(weights: dict) -> list:
    return sorted(weights, key=weights.get, reverse=True)


HEAD_TAIL = {task: (_ranked(synth.SKEWED[task])[:2], _ranked(synth.SKEWED[task])[-2:]) for task in ("shape", "colour")}


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def group_scores(runs: list[dict], datasets) -> dict:
    """{subset: {group: (concept values per seed, retrieval R@1 per seed)}}."""
    out: dict[str, dict] = {}
    for subset in dict.fromkeys(r["subset"] for r in runs):
        mine = [r for r in runs if r["subset"] == subset]
        out[subset] = {}
        for group, languages in GROUPS.items():
            concept, retrieval = [], []
            for r in mine:
                c = [r["metrics"][d.name]["acc1"] for d in datasets
                     if d.kind != RETRIEVAL and d.language in languages]
                t = [(r["metrics"][d.name]["image_retrieval_recall@1"] + r["metrics"][d.name]["text_retrieval_recall@1"]) / 2
                     for d in datasets if d.kind == RETRIEVAL and d.language in languages]
                concept.append(statistics.fmean(c))
                retrieval.append(statistics.fmean(t))
            out[subset][group] = (concept, retrieval)
    return out


def concept_scores(runs: list[dict], datasets) -> dict:
    """{subset: {(task, head|tail): per-seed mean per-class accuracy over every language}}."""
    out: dict[str, dict] = {}
    for subset in dict.fromkeys(r["subset"] for r in runs):
        mine = [r for r in runs if r["subset"] == subset]
        out[subset] = {}
        for task, (head, tail) in HEAD_TAIL.items():
            for part, values in (("head", head), ("tail", tail)):
                per_seed = []
                for r in mine:
                    accs = []
                    for d in datasets:
                        if d.task != task or d.language is None:
                            continue
                        names = class_names(task, d.language)
                        per_class = r["metrics"][d.name].get("per_class_acc1", {})
                        accs += [per_class[names[class_values(task).index(v)]] for v in values
                                 if names[class_values(task).index(v)] in per_class]
                    per_seed.append(statistics.fmean(accs) if accs else float("nan"))
                out[subset][(task, part)] = per_seed
    return out


def subset_languages(out: str, subset: str, point: str = "kept") -> dict[str, int] | None:
    """Samples per language group of a recipe's curated subset (``point`` "input": of the readable
    pool it was cut from), from its coverage audit (None: raw)."""
    path = os.path.join(out, "subsets", subset, "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        report = json.load(f)
    languages = report.get("coverage", {}).get("languages", {})
    kept = {lang: c["samples"][point] for lang, c in languages.items()}
    out = {g: sum(kept.get(lang, 0) for lang in langs) for g, langs in GROUPS.items()}
    for lang in ("en", "th"):  # the head language and the smallest: the audit's rule, from its entry counts
        entries = [c for c in languages.get(lang, {}).get("entries", {}).values() if c["input"]]
        ratios = [head_to_tail_ratio([c[p] for c in entries]) for p in ("input", "kept")]
        out[f"head/tail {lang} in -> kept"] = " -> ".join("-" if r is None else f"{r:.1f}" for r in ratios)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="balance-bench")
    ap.add_argument("rest", nargs="*", help="flags passed on to python -m curate.quality (after --)")
    args = ap.parse_args(argv)
    status, doc, wall = run_quality(args.out, ["--mix", "skewed", "--recipes", RECIPES, *DEFAULT_FLAGS, *args.rest])
    if status != 0:
        return status
    datasets = discover(os.path.join(args.out, "eval"))
    runs = doc["runs"]
    print(f"\n# balance quality: {platform.node() or 'machine'}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}; command: {' '.join(['python benchmarks/balance_quality.py', *sys.argv[1:]])}")
    print(f"settings: {json.dumps(doc['settings'], sort_keys=True)}; wall {wall / 60:.1f} min")
    print("\nSamples per language group in each subset, from its run's coverage audit:")
    pool = subset_languages(args.out, "curated", "input")
    if pool:
        print(f"  {'pool (readable)':<24} {'':>13} {json.dumps({g: pool[g] for g in GROUPS})}")
    for subset, s in doc["summary"].items():
        langs = subset_languages(args.out, subset)
        print(f"  {subset:<24} {s['unique_samples']:>6} unique  {json.dumps(langs) if langs else ''}")
    groups = group_scores(runs, datasets)
    print("\n| subset | " + " | ".join(f"{g}: concepts | {g}: R@1" for g in GROUPS) + " |")
    print("|---|" + "---|---|" * len(GROUPS))
    for subset, by_group in groups.items():
        print(f"| {subset} | " + " | ".join(f"{_mean_sd(c)} | {_mean_sd(t)}" for c, t in by_group.values()) + " |")
    concepts = concept_scores(runs, datasets)
    header = [f"{task} {part} ({', '.join(HEAD_TAIL[task][part == 'tail'])})" for task in HEAD_TAIL
              for part in ("head", "tail")]
    print("\nPer-class top-1 accuracy, every language (mean ± spread over seeds):\n")
    print("| subset | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for subset, by in concepts.items():
        print(f"| {subset} | " + " | ".join(_mean_sd(by[(t, p)]) for t in HEAD_TAIL for p in ("head", "tail")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
