"""Q/results.json, Q/results.md (the table) and Q/results.png (a bar chart with the seed spread).

Per run (subset, seed) every dataset has clip_benchmark's metrics; a task's score is the mean over
its languages of top-1 accuracy (classification) or of recall@K over both directions (retrieval).
"mean" is the mean over the classification tasks (the five physical concepts on the built-in suite)
and "spread" its standard deviation over seeds (n - 1 in the denominator; 0 for one seed).
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass

from curate.io import atomic_path
from curate.quality.evaluate import RECALL_K, RETRIEVAL, EvalDataset


@dataclass(frozen=True)
class Run:
    subset: str
    seed: int
    unique_samples: int
    samples_seen: int
    metrics: dict  # dataset name -> clip_benchmark's metrics


def _recall(metrics: dict, k: int) -> float:
    return (metrics[f"image_retrieval_recall@{k}"] + metrics[f"text_retrieval_recall@{k}"]) / 2


def columns(datasets: list[EvalDataset]) -> list[tuple[str, str, int]]:
    """(column, task, k) in table order: classification tasks (k = 0), then each retrieval task at R@K."""
    cls = sorted({d.task for d in datasets if d.kind != RETRIEVAL}, key=_task_order)
    ret = sorted({d.task for d in datasets if d.kind == RETRIEVAL})
    return [(t, t, 0) for t in cls] + [(f"{t} R@{k}", t, k) for t in ret for k in RECALL_K]


def _task_order(task: str):
    from curate.quality.evalsets import TASKS
    return (TASKS.index(task), task) if task in TASKS else (len(TASKS), task)


def run_scores(run: Run, datasets: list[EvalDataset]) -> dict[str, float]:
    """{column: score} for one run, plus "mean" over the classification tasks."""
    out = {}
    for column, task, k in columns(datasets):
        members = [d for d in datasets if d.task == task]
        values = [_recall(run.metrics[d.name], k) if k else run.metrics[d.name]["acc1"] for d in members]
        out[column] = statistics.fmean(values)
    concepts = [out[c] for c, _t, k in columns(datasets) if not k]
    out["mean"] = statistics.fmean(concepts) if concepts else float("nan")
    return out


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[Run], datasets: list[EvalDataset]) -> dict:
    """Per subset: unique samples, samples seen, each column's mean and spread over seeds, and the
    per-language scores of every classification task (mean over seeds)."""
    out = {}
    for subset in dict.fromkeys(r.subset for r in runs):
        mine = [r for r in runs if r.subset == subset]
        scores = [run_scores(r, datasets) for r in mine]
        by_language: dict[str, dict[str, float]] = {}
        for d in datasets:
            if d.language is not None:
                values = [_recall(r.metrics[d.name], 1) if d.kind == RETRIEVAL else r.metrics[d.name]["acc1"]
                          for r in mine]
                by_language.setdefault(d.task, {})[d.language] = statistics.fmean(values)
        out[subset] = {
            "unique_samples": mine[0].unique_samples, "samples_seen": mine[0].samples_seen,
            "seeds": [r.seed for r in mine],
            "scores": {c: statistics.fmean(s[c] for s in scores) for c in scores[0]},
            "spread": {c: _spread([s[c] for s in scores]) for c in scores[0]},
            "per_seed_mean": [s["mean"] for s in scores],
            "by_language": by_language,
        }
    return out


def markdown(summary: dict, datasets: list[EvalDataset]) -> str:
    cols = [c for c, _t, _k in columns(datasets)]
    head = ["subset", "unique samples", "samples seen", *cols, "mean", "spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, s in summary.items():
        cells = [name, f"{s['unique_samples']:,}", f"{s['samples_seen']:,}",
                 *(f"{100 * s['scores'][c]:.1f}" for c in cols),
                 f"{100 * s['scores']['mean']:.1f}", f"{100 * s['spread']['mean']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    languages = sorted({d.language for d in datasets if d.language})
    if languages:
        lines += ["", "Per language (mean over seeds; classification: top-1 accuracy, retrieval: R@1):", "",
                  "| subset | task | " + " | ".join(languages) + " |",
                  "|---|---|" + "|".join("---" for _ in languages) + "|"]
        for name, s in summary.items():
            for task, per in s["by_language"].items():
                lines.append(f"| {name} | {task} | " + " | ".join(
                    f"{100 * per[lang]:.1f}" if lang in per else "" for lang in languages) + " |")
    return "\n".join(lines) + "\n"


def chart(summary: dict, datasets: list[EvalDataset], path: str) -> None:
    """Grouped bars: one group per column (and the mean), one bar per subset, seed spread as error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [c for c, _t, _k in columns(datasets)] + ["mean"]
    names = list(summary)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols)), 4.2), dpi=100)
    x = np.arange(len(cols))
    for i, name in enumerate(names):
        s = summary[name]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [100 * s["scores"][c] for c in cols], width,
               yerr=[100 * s["spread"][c] for c in cols], capsize=2, label=name)
    ax.set_xticks(x, cols, rotation=20, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_title("zero-shot accuracy / retrieval recall at equal samples seen (bars: seed spread)")
    ax.legend(fontsize=8, ncols=min(3, len(names)))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write(out_dir: str, runs: list[Run], datasets: list[EvalDataset], extra: dict) -> dict:
    """Write the three files; return the summary."""
    summary = summarise(runs, datasets)
    doc = {**extra, "datasets": [{"name": d.name, "path": d.path, "kind": d.kind} for d in datasets],
           "runs": [r.__dict__ for r in runs], "summary": summary}
    with atomic_path(os.path.join(out_dir, "results.json")) as tmp, open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    with atomic_path(os.path.join(out_dir, "results.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown(summary, datasets))
    chart(summary, datasets, os.path.join(out_dir, "results.png"))
    return summary
