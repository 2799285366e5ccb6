"""Warnings a user must see: nothing kept, a step that removed an unusual share, a model used outside its world.

Functions of the run's counts and config (and, for a run on stored scores, of the scoring run's
report.json); the closing summary and report.json show what they return, each with the setting
to change.
"""
from __future__ import annotations

import json

from curate import fs

DEMO_MODEL = "curate-demo-64"
SYNTH_TRUTH = "ground_truth.parquet"  # what curate.synth writes beside its shards
# Above these a result is more likely a wrong setting than a property of the corpus.
MAX_NEAR_DROP_SHARE = 0.5
MAX_GROUP_SIZE = 100
NEAR_SETTINGS = "dedup.near_method, dedup.phash_max_distance, dedup.near_threshold"


def near_dedup_share(counts: dict) -> str | None:
    """Near dedup removed more than half of the samples that reached it."""
    reached, dropped = counts.get("near_dedup_input", 0), counts["dropped_by_stage"].get("near_dedup", 0)
    if reached and dropped / reached > MAX_NEAR_DROP_SHARE:
        return (f"near dedup dropped {dropped} of the {reached} samples that reached it "
                f"({100 * dropped / reached:.0f}%): check {NEAR_SETTINGS}")
    return None


def large_groups(counts: dict) -> str | None:
    """A duplicate group of more than MAX_GROUP_SIZE samples (the kept one included)."""
    big = {g: n for g, n in counts.get("largest_duplicate_groups", {}).items() if n > MAX_GROUP_SIZE}
    if not big:
        return None
    name, size = max(big.items(), key=lambda kv: (kv[1], kv[0]))
    return (f"{len(big)} duplicate group(s) of more than {MAX_GROUP_SIZE} samples, the largest {name} "
            f"with {size}: if they are not copies of one image, check {NEAR_SETTINGS}")


def nothing_kept(counts: dict) -> str | None:
    """Samples came in and none came out: almost always a threshold set for another model or corpus."""
    if counts.get("input", 0) and not counts.get("kept", 0):
        reason, n = next(iter(counts["dropped_by_reason"].items()), ("?", 0))
        return (f"no sample was kept of {counts['input']}; the most frequent reason: {reason} ({n}): "
                "check the setting behind it (e.g. select.clip_threshold for low_clip_score)")
    return None


def synthetic_input(config: dict, builtin_input: bool) -> bool:
    """Whether the scored samples come from ``curate.synth`` (the demo scorer's own world): the
    built-in corpus, a folder that synth wrote (its ground_truth.parquet beside the shards), or, for
    a run on stored scores, whatever the scoring run recorded."""
    if config.get("scores"):
        return bool(_stored_report(config["scores"]).get("synthetic_input"))
    spec = config.get("input")
    return builtin_input or bool(spec and fs.isdir(spec) and fs.exists(fs.join(spec, SYNTH_TRUTH)))


def scoring_model(config: dict) -> str | None:
    """The model behind the run's scores: its own scorer, or the stored scores' run's."""
    if config.get("scores"):
        return _stored_report(config["scores"]).get("config", {}).get("scorer.model")
    return config.get("scorer.model")


def demo_scorer_on_foreign_input(config: dict, synthetic: bool) -> str | None:
    """The demo scorer knows only the built-in synthetic scenes: on anything else its scores mean little."""
    if scoring_model(config) == DEMO_MODEL and not synthetic:
        return ("the demo scorer knows only the built-in synthetic scenes: for real data set scorer.model / "
                "scorer.pretrained (e.g. ViT-B-32 / laion2b_s34b_b79k) and select.clip_threshold")
    return None


def unlisted_languages_dropped(config: dict, sections: dict) -> str | None:
    """Balancing with ``balance.unmatched: drop`` drops every sample of a language that has no
    metadata list (nothing can match): a whole language gone is more likely a missing list."""
    unlisted = (sections.get("coverage") or {}).get("unlisted") or {}
    if not (config.get("balance.enabled") and config.get("balance.unmatched") == "drop" and unlisted):
        return None
    shown = ", ".join(f"{lang} {n}" for lang, n in sorted(unlisted.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
    return (f"balance.unmatched=drop dropped every sample of {len(unlisted)} language(s) without a metadata list "
            f"(samples in: {shown}{', ...' if len(unlisted) > 5 else ''}): add LANGUAGE.txt lists to balance.metadata, "
            "or set balance.unmatched=keep")


def warnings(counts: dict, config: dict, synthetic: bool, sections: dict | None = None) -> list[str]:
    """``sections``: what the pipeline added to report.json (laion_filter: the coverage audit)."""
    checks = (nothing_kept(counts), near_dedup_share(counts), large_groups(counts),
              demo_scorer_on_foreign_input(config, synthetic), unlisted_languages_dropped(config, sections or {}))
    return [w for w in checks if w]


def _stored_report(run_dir: str) -> dict:
    path = fs.join(run_dir, "report.json")
    return json.loads(fs.read_bytes(path)) if fs.exists(path) else {}
