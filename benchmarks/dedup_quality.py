"""Near-duplicate quality per signal and threshold, on the built-in corpus and on two foreign ones.

    python benchmarks/dedup_quality.py                 # all three corpora, the default grid
    python benchmarks/dedup_quality.py --work /tmp/dq  # keep the corpora and scores there

Corpora: ``builtin`` (``curate.synth``, 2,000 samples, seed 0, noise 0.3: what
``python -m curate.run --pipeline laion_filter`` curates), ``photos`` (``curate.photo_corpus``: 68
quadrants of real photographs shipped in scikit-image/scikit-learn, 12 exact and 28 near copies)
and ``fields`` (400 photo-like smooth random colour fields, 8% exact and 8% rescaled + re-encoded
copies). Each is scored once with the demo scorer (``--pipeline score``: embeddings and hashes).

Part 1, the rule alone: exact duplicates (sha256) are removed first, as the pipeline does; then for
each method and threshold ``filters.dedup.rule_pairs`` and ``near_duplicates`` (the functions the
Beam composite runs per group; tests assert they decide alike) run on what is left. Columns: pairs
found, pair precision and recall against the truth (a true pair shows one image), near copies
caught (copy and original not both kept), and distinct images wrongly dropped (a sample dropped in
favour of another image, per distinct image).

Part 2, the pipeline: ``laion_filter`` with the default config (plus ``select.clip_threshold=-1``
so that the demo scorer's scores on foreign data do not drop everything first) over the stored
scores; the same scores from its decisions, and the warnings it printed.

Part 3, the clustered hash search (used above ``dedup.near_flat_max`` samples): the hashes of all
three corpora searched with k-means clusters forced (about 2 sqrt(n) of them) against the exact
flat search, for several (assignments, border) settings: the share of pairs at distance <= 10 found.
With ``--hash-scale N`` the same on N hashes of random crops of the real photographs (random
position and size, 1% of them planted near copies: re-encoded, rescaled or shifted by a few
pixels), where the flat search is the truth and clusters number about 2 sqrt(N) as in the pipeline.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pyarrow.parquet as pq
from curate.filters import dedup, phash

from curate import dedup_truth, photo_corpus, run, synth
from curate.embeddings import list_parts, read_part

GRID = ([("phash", None, d) for d in (4, 6, 8, 10, 12, 14)]
        + [("clip", t, None) for t in (0.9, 0.94, 0.96, 0.98)]
        + [("both", 0.96, 10), ("both", 0.9, 12), ("either", 0.96, 10)])


def build(work: str, samples: int, fields: int) -> dict[str, str]:
    corpora = {"builtin": os.path.join(work, "builtin", "shards"), "photos": os.path.join(work, "photos", "shards"),
               "fields": os.path.join(work, "fields", "shards")}
    if not os.path.exists(corpora["builtin"]):
        synth.generate(corpora["builtin"], samples, seed=0, noise=0.3, processes=os.cpu_count() or 1)
    if not os.path.exists(corpora["photos"]):
        photo_corpus.photo_corpus(corpora["photos"], seed=0)
    if not os.path.exists(corpora["fields"]):
        photo_corpus.random_fields_corpus(corpora["fields"], samples=fields, seed=0)
    return corpora


def quiet_run(argv: list[str]) -> str:
    """run.run with its summary captured (returned) instead of printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run.run(argv)
    return out.getvalue()


def score(corpus: str, out: str) -> None:
    if not os.path.exists(os.path.join(out, "report.json")):
        quiet_run(["--pipeline", "score", "--input", corpus, "--output", out])


def rule_rows(name: str, scored: str, truth: dedup_truth.Truth) -> list[str]:
    samples = [s for p in list_parts(scored) for s in read_part(os.path.join(scored, "embeddings"), p)]
    by_sha: dict[str, list] = {}
    for s in samples:
        by_sha.setdefault(s.sha256, []).append(s)
    left = [dedup.exact_duplicates(g)[0] for g in by_sha.values()]  # exact dedup first, as the pipeline
    keys = [s.key for s in left]
    rows = []
    for method, t, d in GRID:
        rule = dedup.NearRule(method, threshold=t if t is not None else 0.96, max_distance=d if d is not None else 10)
        by_order = {s.order: s.key for s in left}
        pairs = {(by_order[p.a], by_order[p.b]) for p in dedup.rule_pairs(left, rule)}
        ps = dedup_truth.pair_scores(truth, keys, pairs)
        kept, dropped = dedup.near_duplicates(left, rule)
        decisions = {s.key: {"stage": "near_dedup", "kept": True, "reason": None, "kept_instead": None} for s in kept}
        decisions.update({x.sample.key: {"stage": "near_dedup", "kept": False, "reason": dedup.NEAR_DUPLICATE,
                                         "kept_instead": x.kept.key} for x in dropped})
        # exact copies were removed above: score near copies and wrong drops only
        ds = dedup_truth.decision_scores(truth, decisions)
        setting = {"phash": f"d<={d}", "clip": f"cos>={t}", "both": f"d<={d} and cos>={t}",
                   "either": f"d<={d} or cos>={t}"}[method]
        rows.append(f"| {name} | {method} | {setting} | {ps['pairs']} | {ps['precision']:.3f} | {ps['recall']:.3f} | "
                    f"{ds['near_caught']}/{ds['near_copies']} | {ds['wrong_drops']}/{ds['distinct']} "
                    f"({100 * ds['distinct_dropped']:.1f}%) |")
    return rows


def pipeline_row(name: str, scored: str, out: str, truth: dedup_truth.Truth) -> str:
    text = quiet_run(["--pipeline", "laion_filter", "--output", out, "--overwrite",
                      "--set", f"scores={scored}", "--set", "select.clip_threshold=-1"])
    rows = {r["key"]: r for r in pq.read_table(os.path.join(out, "decisions")).to_pylist()}
    ds = dedup_truth.decision_scores(truth, rows)
    near = [r for r in rows.values() if r["reason"] == dedup.NEAR_DUPLICATE]
    worst = max((r["dup_hash_distance"] for r in near if r["dup_hash_distance"] is not None), default=None)
    warnings = [line.strip() for line in text.splitlines() if line.strip().startswith("warning:")]
    return (f"| {name} | {ds['exact_caught']}/{ds['exact_copies']} | {ds['near_caught']}/{ds['near_copies']} "
            f"({100 * ds['near_recall']:.0f}%) | {ds['wrong_drops']}/{ds['distinct']} "
            f"({100 * ds['distinct_dropped']:.1f}%) | {len(near)} | {worst} | {len(warnings)} |")


def hash_search_rows(scored_dirs: list[str], max_distance: int = 10) -> list[str]:
    samples = [s for d in scored_dirs for p in list_parts(d) for s in read_part(os.path.join(d, "embeddings"), p)]
    x = np.stack([phash.to_vector(s.phash) for s in samples])
    ranks = np.array([dedup.training_rank(f"{i}", s.order) for i, s in enumerate(samples)], dtype=np.uint64)
    cos = phash.cosine_at(max_distance)
    flat = set(zip(*(a.tolist() for a in dedup.pairs_above(x, cos)[:2]), strict=True))
    rows = []
    for m, border in ((2, 0.1), (3, 0.3), (4, 0.4), (8, 0.6)):
        i, j, _ = dedup.near_pairs(x, cos, ranks, flat_max=100, assignments=m, border=border)
        found = set(zip(i.tolist(), j.tolist(), strict=True))
        rows.append(f"| {len(x)} | {dedup.cluster_count(len(x), 100)} | {m} | {border} | {len(flat)} | "
                    f"{len(found & flat)} | {len(found & flat) / len(flat):.3f} |")
    return rows


def crop_hashes(n: int, seed: int = 0) -> np.ndarray:
    """pHashes (as +-1/8 vectors) of ``n`` random crops of the real photographs; 1% near copies."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [p.load() for p in photo_corpus.real_photos()]
    hashes = []
    originals = []
    for i in range(n):
        if originals and rng.random() < 0.01:  # a near copy of an earlier crop
            img = originals[rng.integers(len(originals))]
            w, h = img.size
            img = img.resize((max(8, int(w * 0.9)), max(8, int(h * 0.9))), Image.BICUBIC)
        else:
            photo = photos[rng.integers(len(photos))]
            side = int(rng.integers(48, min(photo.size) // 2))
            x, y = int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side))
            img = photo.crop((x, y, x + side, y + side)).resize((64, 64), Image.BILINEAR)
            if len(originals) < 10_000:
                originals.append(img)
        hashes.append(phash.to_vector(phash.phash(img)))
    return np.stack(hashes)


def hash_scale_rows(n: int, max_distance: int = 10) -> list[str]:
    x = crop_hashes(n)
    cos = phash.cosine_at(max_distance)
    ranks = np.array([dedup.training_rank(f"{i}", (0, i)) for i in range(n)], dtype=np.uint64)
    t0 = time.time()
    flat = set(zip(*(a.tolist() for a in dedup.pairs_above(x, cos)[:2]), strict=True))
    flat_s = time.time() - t0
    k = dedup.cluster_count(n, 1)
    rows = []
    for m, border in ((2, 0.1), (3, 0.3), (4, 0.4), (8, 0.6)):
        t0 = time.time()
        i, j, _ = dedup.near_pairs(x, cos, ranks, flat_max=1, assignments=m, border=border)
        found = set(zip(i.tolist(), j.tolist(), strict=True))
        rows.append(f"| {n} | {k} | {m} | {border} | {len(flat)} | {len(found & flat)} | "
                    f"{len(found & flat) / max(1, len(flat)):.4f} | {time.time() - t0:.1f} (flat {flat_s:.1f}) |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", help="folder for corpora and scores (default: a temporary one)")
    ap.add_argument("--samples", type=int, default=2000, help="built-in corpus size")
    ap.add_argument("--fields", type=int, default=400, help="random-field corpus size")
    ap.add_argument("--hash-scale", type=int, nargs="*", default=[], metavar="N",
                    help="also: clustered vs flat hash search on N hashes of random photo crops")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        corpora = build(work, args.samples, args.fields)
        print(f"# dedup_quality: {platform.node() or 'machine'}, {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d')}; demo scorer; exact dedup first\n")
        print("| corpus | method | setting | pairs | precision | recall | near copies caught | distinct wrongly dropped |")
        print("|---|---|---|---|---|---|---|---|")
        tables = []
        for name, corpus in corpora.items():
            scored = os.path.join(work, name, "scored")
            score(corpus, scored)
            truth = dedup_truth.load_truth(corpus)
            for row in rule_rows(name, scored, truth):
                print(row)
            tables.append(pipeline_row(name, scored, os.path.join(work, name, "curated"), truth))
        print("\nlaion_filter, default config, select.clip_threshold=-1, over the stored scores:\n")
        print("| corpus | exact copies dropped | near copies caught | distinct wrongly dropped | near_duplicate rows | "
              "largest dup_hash_distance | warnings |")
        print("|---|---|---|---|---|---|---|")
        for row in tables:
            print(row)
        print("\nclustered hash search vs flat, pairs at distance <= 10 (defaults: dedup.phash_assignments=8, "
              "dedup.phash_border=0.6):\n")
        print("| hashes | clusters | assignments | border | flat pairs | found | recall |")
        print("|---|---|---|---|---|---|---|")
        for row in hash_search_rows([os.path.join(work, name, "scored") for name in corpora]):
            print(row)
        if args.hash_scale:
            print("\nclustered hash search vs flat on hashes of random photo crops (pairs at distance <= 10):\n")
            print("| hashes | clusters | assignments | border | flat pairs | found | recall | search s |")
            print("|---|---|---|---|---|---|---|---|")
            for n in args.hash_scale:
                for row in hash_scale_rows(n):
                    print(row, flush=True)
        print(f"\n({time.time() - t0:.0f} s; settings {json.dumps({'samples': args.samples, 'fields': args.fields})})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
