"""Dedup and decontamination in the laion_filter graph, on stored demo-scorer embeddings of the
synthetic corpus (scored once; each run below selects again without the model)."""
import os
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import run, synth

SAMPLES = 600
DUP_REASONS = ("exact_duplicate", "duplicate_url_caption", "near_duplicate", "semantic_duplicate")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(out, SAMPLES, seed=11, noise=0.4, shard_size=200)
    return out


@pytest.fixture(scope="module")
def scored(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scored"))
    run.run(["--pipeline", "score", "--input", corpus, "--output", out])
    return out


def select(scored, out, *sets, workers=1):
    extra = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"] if workers > 1 else []
    args = ["--pipeline", "laion_filter", "--output", str(out), "--set", f"scores={scored}"]
    for s in sets:
        args += ["--set", s]
    run.run(args + extra)
    return {r["key"]: r for r in pq.read_table(os.path.join(str(out), "decisions")).to_pylist()}


def decision_bytes(out):
    d = os.path.join(str(out), "decisions")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


@pytest.fixture(scope="module")
def flat(scored, tmp_path_factory):
    out = tmp_path_factory.mktemp("flat")
    return out, select(scored, out)


def assert_groups_keep_one(rows):
    """Every dropped duplicate names a kept sample; all members of a group name the same one."""
    kept_of = {}
    for r in rows.values():
        if r["reason"] in DUP_REASONS:
            assert rows[r["kept_instead"]]["kept"], r
            assert kept_of.setdefault(r["dup_group"], r["kept_instead"]) == r["kept_instead"], r


def test_planted_copies_are_found_and_groups_keep_one(flat, corpus):
    _, rows = flat
    truth = {r["key"]: r for r in pq.read_table(os.path.join(corpus, "ground_truth.parquet")).to_pylist()}
    assert_groups_keep_one(rows)
    found = defaultdict(list)
    for key, t in truth.items():
        r, orig = rows[key], rows[t["original_key"]] if t["original_key"] else None
        if t["kind"] in synth.DUPLICATE_KINDS and r["stage"] not in ("read", "decode", "basic_filter", "clip_score") \
                and orig["stage"] not in ("read", "decode", "basic_filter", "clip_score"):
            # copy and original both reached dedup: exactly one of them may be kept
            found[t["transform"] or "exact"].append(not (r["kept"] and orig["kept"]))
    assert set(found) == {"exact", "reencode", "rescale", "crop"}, found.keys()
    assert all(found["exact"])
    near = [ok for kind in ("reencode", "rescale", "crop") for ok in found[kind]]
    assert sum(near) / len(near) >= 0.9, {k: (sum(v), len(v)) for k, v in found.items()}


def test_clustered_search_decides_as_the_flat_search_with_one_or_two_workers(scored, flat, tmp_path):
    """near_flat_max=20 forces k-means clusters (about 2 sqrt(n) of them) and the border assignment."""
    out, _ = flat
    one = select(scored, tmp_path / "one", "dedup.near_flat_max=20")
    assert decision_bytes(tmp_path / "one") == decision_bytes(out)
    select(scored, tmp_path / "two", "dedup.near_flat_max=20", workers=2)
    assert decision_bytes(tmp_path / "two") == decision_bytes(out)
    assert sum(r["reason"] == "near_duplicate" for r in one.values()) >= 20


def test_url_caption_duplicates(scored, flat, tmp_path):
    """The synthetic urls are unique: with url_caption off nothing changes; its rows name the kept key."""
    out, rows = flat
    select(scored, tmp_path / "off", "dedup.url_caption=false")
    assert decision_bytes(tmp_path / "off") == decision_bytes(out)
    assert not any(r["reason"] == "duplicate_url_caption" for r in rows.values())


def test_semdedup_target_fraction(scored, flat, tmp_path):
    _, before = flat
    rows = select(scored, tmp_path / "sem", "dedup.semdedup.enabled=true", "dedup.semdedup.target_fraction=0.8")
    assert_groups_keep_one(rows)
    reached = sum(r["kept"] for r in before.values())  # SemDeDup's input: what near dedup kept
    dropped = [r for r in rows.values() if r["reason"] == "semantic_duplicate"]
    assert dropped and all(r["stage"] == "semdedup" and r["dup_group"].startswith("semdedup:") for r in dropped)
    assert sum(r["kept"] for r in rows.values()) <= 0.8 * reached
    # earlier drops that named a sample SemDeDup then dropped now name the sample kept in its place
    assert all(rows[r["kept_instead"]]["kept"] for r in rows.values() if r["reason"] in DUP_REASONS)


def test_decontamination_drops_copies_of_eval_images(scored, flat, tmp_path):
    _, rows = flat
    emb = np.load(os.path.join(scored, "embeddings", "img_emb", "img_emb_0.npy"))
    meta = pq.read_table(os.path.join(scored, "embeddings", "metadata", "metadata_0.parquet")).to_pylist()
    kept_keys = [m["key"] for m in meta if rows[m["key"]]["kept"]][:10]
    eval_rows = [i for i, m in enumerate(meta) if m["key"] in kept_keys]
    np.save(tmp_path / "eval.npy", emb[eval_rows])
    after = select(scored, tmp_path / "out", f"decontaminate.eval_set={tmp_path / 'eval.npy'}")
    contaminated = {k for k, r in after.items() if r["reason"] == "contaminated"}
    assert set(kept_keys) <= contaminated
    for k in contaminated:
        r = after[k]
        assert r["stage"] == "decontaminate" and r["dup_group"].startswith("eval:row:") and r["dup_similarity"] >= 0.96
    assert_groups_keep_one(after)


def test_missing_eval_set_is_one_clear_error(scored, tmp_path):
    with pytest.raises(Exception, match="decontaminate.eval_set '/nonexistent/eval' does not exist"):
        select(scored, tmp_path / "x", "decontaminate.eval_set=/nonexistent/eval")
