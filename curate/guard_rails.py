"""Warnings a user must see: a step that removed an unusual share, and a model used outside its world.

Pure functions of the run's counts and config; the closing summary and report.json show what they
return, each with the setting to change.
"""
from __future__ import annotations

DEMO_MODEL = "curate-demo-64"
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


def demo_scorer_on_foreign_input(config: dict, builtin_input: bool) -> str | None:
    """The demo scorer knows only the built-in synthetic scenes: on anything else its scores mean little."""
    if config.get("scorer.model") == DEMO_MODEL and not builtin_input and not config.get("scores"):
        return ("the demo scorer knows only the built-in synthetic scenes: for real data set scorer.model / "
                "scorer.pretrained (e.g. ViT-B-32 / laion2b_s34b_b79k) and select.clip_threshold")
    return None


def warnings(counts: dict, config: dict, builtin_input: bool) -> list[str]:
    checks = (near_dedup_share(counts), large_groups(counts), demo_scorer_on_foreign_input(config, builtin_input))
    return [w for w in checks if w]
