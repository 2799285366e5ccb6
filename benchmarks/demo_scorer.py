"""The demo scorer's calibration figures: where its scores and image similarities fall on the built-in corpus.

    python benchmarks/demo_scorer.py [--samples 2000] [--seed 5] [--work DIR]

Writes a ``curate.synth`` corpus (30% planted noise, its truth in ground_truth.parquet), scores it
once with the demo scorer (``--pipeline score``), runs ``laion_filter`` with the default config on
those stored scores, and prints, from the stored float16 embeddings and the decisions:

- image-text score percentiles of clean pairs and of mismatched captions (what
  ``select.clip_threshold`` was read from);
- the share of planted near copies whose image cosine to their original is >= 0.96, and the share
  of clean images that have a *different* clean image that close (what ``dedup.near_threshold``
  was read from);
- from laion_filter's decisions: the share of mismatched captions dropped and of clean samples kept;
- the held-out check of ``tests/test_scorer.py`` (``clip.heldout_accuracy``: true caption above a
  mismatched one, 2,000 held-out scenes).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from curate import embeddings, run, synth  # noqa: E402
from curate.models import clip  # noqa: E402
from curate.records import stable  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--work", default="work-tmp/bench-demo-scorer")
    args = ap.parse_args()
    corpus = os.path.join(args.work, f"corpus-{args.samples}-{args.seed}")
    truth_path = os.path.join(corpus, "ground_truth.parquet")
    if not os.path.exists(truth_path):
        synth.generate(corpus, args.samples, seed=args.seed, noise=0.3)
    scored, curated = os.path.join(args.work, "scored"), os.path.join(args.work, "curated")
    run.run(["--pipeline", "score", "--input", corpus, "--output", scored, "--overwrite"])
    run.run(["--pipeline", "laion_filter", "--set", f"scores={scored}", "--output", curated, "--overwrite"])

    truth = {r["key"]: r for r in pq.read_table(truth_path).to_pylist()}
    samples = {s.key: s for part in embeddings.list_parts(scored)
               for s in embeddings.read_part(os.path.join(scored, "embeddings"), part)}
    kind = lambda k: truth[k]["kind"]  # noqa: E731
    clean = [s for k, s in samples.items() if kind(k) == "clean"]
    mismatched = [s for k, s in samples.items() if kind(k) == "mismatched_caption"]
    pct = lambda xs, qs: ", ".join(f"p{q} {np.percentile(xs, q):.2f}" for q in qs)  # noqa: E731
    print(f"\ndemo scorer on curate.synth, {args.samples} samples, seed {args.seed}, noise 0.3 "
          f"({len(samples)} scored)")
    print(f"clean pairs ({len(clean)}): score {pct([s.clip_score for s in clean], (1, 10, 50, 90, 99))}")
    print(f"mismatched captions ({len(mismatched)}): score {pct([s.clip_score for s in mismatched], (50, 90, 99))}")

    def cos(a, b):
        return stable(np.dot(a.image_embedding, b.image_embedding))

    near = [(s, samples[truth[k]["original_key"]]) for k, s in samples.items()
            if kind(k) == "near_duplicate" and truth[k]["original_key"] in samples]
    close = sum(cos(a, b) >= 0.96 for a, b in near)
    print(f"near copies with image cosine >= 0.96 to their original: {close} of {len(near)} "
          f"({close / max(1, len(near)):.1%})")
    x = np.stack([s.image_embedding for s in clean])
    sims = np.round(x @ x.T, 4)
    np.fill_diagonal(sims, -1)
    with_twin = int(np.sum(np.any(sims >= 0.96, axis=1)))
    print(f"clean images with a different clean image at cosine >= 0.96: {with_twin} of {len(clean)} "
          f"({with_twin / len(clean):.1%})")

    decisions = pq.read_table(os.path.join(curated, "decisions")).to_pylist()
    kept = {r["key"]: r["kept"] for r in decisions if r["key"] in truth}
    mm = [k for k in kept if kind(k) == "mismatched_caption"]
    cl = [k for k in kept if kind(k) == "clean"]
    print(f"laion_filter, default config: mismatched captions dropped {sum(not kept[k] for k in mm)} of {len(mm)} "
          f"({sum(not kept[k] for k in mm) / max(1, len(mm)):.1%}); clean samples kept "
          f"{sum(kept[k] for k in cl)} of {len(cl)} ({sum(kept[k] for k in cl) / max(1, len(cl)):.1%})")
    acc = clip.heldout_accuracy(os.path.join(args.work, "heldout"), 2000)
    print(f"held-out (clip.heldout_accuracy, 2,000 scenes): true caption above a mismatched one in {acc:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
