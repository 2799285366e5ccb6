"""The coverage audit: per language, which metadata entries a corpus names, before and after a run.

Read from the decisions table after the run (every input sample is one row, with the entries its
caption matched: ``metadata_entries``), so it needs no extra Beam step and ``python -m curate.report``
could recompute it from any output folder. For each metadata language (the list that serves the
row's language, filters/metadata.py ``list_language``):

- ``entries``: every entry of the list with its count of matching samples in the input (every
  sample whose caption was matched: all but unreadable ones), before and after balancing (the rows
  that reached the balancing step, and those it passed on), and among the kept samples;
- ``lost``: entries the run took from present in the input to absent from the kept samples;
- ``head_to_tail``: ``filters.balance.head_to_tail_ratio`` over the list's entries present in the
  input (the same entries at every point, those lost counting 0; entries the corpus never names
  would only dilute it), at each of those points: balancing pulls it towards 1;
- ``cap``: the balancing cap of the language, recomputed from the same counts by the same rule as
  the run (``BalanceParams.caps_for``), with the rule's note when it fell back.

Samples in a language without a list are counted under ``unlisted`` by their language.
"""
from __future__ import annotations

from collections import Counter

from curate import fs
from curate.filters.balance import head_to_tail_ratio
from curate.filters.metadata import Metadata, language_tag
from curate.io import read_parquet
from curate.records import BALANCE, BASIC_FILTER, DECODE, READ

# Rows of these stages never reached balancing (it runs after the basic filters).
_BEFORE_BALANCING = (READ, DECODE, BASIC_FILTER)
POINTS = ("input", "before_balancing", "after_balancing", "kept")


def _points(stage: str, kept: bool, balanced: bool) -> tuple[str, ...]:
    """The audit points a row counts at."""
    points = ["input"]
    if balanced and stage not in _BEFORE_BALANCING:
        points.append("before_balancing")
        if stage != BALANCE:
            points.append("after_balancing")
    if kept:
        points.append("kept")
    return tuple(points)


def count_entries(decisions_dir: str, metadata: Metadata, balanced: bool) -> tuple[dict, dict, Counter]:
    """From OUT/decisions: ({language: {point: Counter(entry)}}, {language: {point: samples}},
    Counter(unlisted language)) over the rows whose caption was matched."""
    entries: dict[str, dict[str, Counter]] = {}
    samples: dict[str, Counter] = {}
    unlisted: Counter = Counter()
    for path in fs.glob(fs.join(decisions_dir, "*.parquet")):
        table = read_parquet(path, columns=["language", "metadata_entries", "kept", "stage"]).to_pydict()
        for language, matched, kept, stage in zip(table["language"], table["metadata_entries"], table["kept"],
                                                  table["stage"], strict=True):
            if matched is None:  # never matched: unreadable, or a run without matching
                continue
            listed = metadata.list_language(language)
            if listed is None:
                unlisted[language_tag(language or "") or "unknown"] += 1
                continue
            points = _points(stage, kept, balanced)
            by_point = entries.setdefault(listed, {p: Counter() for p in POINTS})
            samples.setdefault(listed, Counter()).update(points)
            for point in points:
                by_point[point].update(matched)
    return entries, samples, unlisted


def audit(decisions_dir: str, metadata: Metadata, params) -> dict:
    """report.json's ``coverage``; ``params``: the run's ``pipelines.balance.BalanceParams``."""
    counted, samples, unlisted = count_entries(decisions_dir, metadata, params.enabled)
    points = POINTS if params.enabled else ("input", "kept")
    caps, note = params.caps_for({lang: dict(c["before_balancing"]) for lang, c in counted.items()}) \
        if params.enabled else ({}, None)
    languages = {}
    for language, by_point in sorted(counted.items()):
        listed = metadata.entries(language)
        table = {entry: {p: by_point[p][entry] for p in points} for entry in listed}
        present = [e for e in listed if by_point["input"][e]]
        languages[language] = {
            "samples": {p: samples[language][p] for p in points},
            "entries_present": {p: sum(1 for e in listed if by_point[p][e]) for p in points},
            "entries_listed": len(listed),
            "lost": [e for e in listed if by_point["input"][e] and not by_point["kept"][e]],
            "head_to_tail": {p: _rounded(head_to_tail_ratio([by_point[p][e] for e in present])) for p in points},
            **({"cap": caps.get(language, params.cap)} if params.enabled else {}),
            "entries": table,
        }
    return {"metadata": params.metadata or "built-in (configs/metadata)", "balanced": params.enabled,
            "caps_note": note, "languages": languages, "unlisted": dict(sorted(unlisted.items()))}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summary_lines(coverage: dict) -> list[str]:
    """The closing summary's table: one line per language, then the unlisted languages."""
    balanced = coverage["balanced"]
    first, last = ("before_balancing", "after_balancing") if balanced else ("input", "kept")
    lines = [f"  coverage ({'head/tail ' + ('before -> after balancing' if balanced else 'input -> kept')}):"]
    lines.append(f"    {'lang':<6}{'samples in':>11}{'kept':>8}{'entries in':>12}{'kept':>6}{'lost':>6}"
                 f"{'head/tail':>18}")
    for language, c in coverage["languages"].items():
        ratio = " -> ".join("-" if c["head_to_tail"][p] is None else f"{c['head_to_tail'][p]:.1f}"
                            for p in (first, last))
        lines.append(f"    {language:<6}{c['samples']['input']:>11}{c['samples']['kept']:>8}"
                     f"{c['entries_present']['input']:>12}{c['entries_present']['kept']:>6}{len(c['lost']):>6}"
                     f"{ratio:>18}")
    if coverage["unlisted"]:
        lines.append("    no metadata list: " + ", ".join(f"{k} {v}" for k, v in coverage["unlisted"].items()))
    if coverage["caps_note"]:
        lines.append(f"    note: {coverage['caps_note']}")
    return lines
