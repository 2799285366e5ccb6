"""Dedup and decontamination in the laion_filter graph, on stored demo-scorer embeddings of the
synthetic corpus (scored once; each run below selects again without the model)."""
import os
from collections import defaultdict

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from curate.filters import dedup
from curate.pipelines.dedup import Deduplicate, DedupParams

from curate import run, synth
from curate.records import Sample

SAMPLES = 400
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
        args += [s] if s.startswith("--") else ["--set", s]
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


def test_clustered_search_decides_as_the_flat_search(scored, flat, tmp_path):
    """near_flat_max=20 forces k-means clusters (about 2 sqrt(n) of them) and the border assignment.
    (Two worker processes: see the Dask test below.)"""
    out, _ = flat
    one = select(scored, tmp_path / "one", "dedup.near_flat_max=20")
    assert decision_bytes(tmp_path / "one") == decision_bytes(out)
    assert sum(r["reason"] == "near_duplicate" for r in one.values()) >= 20


def test_steps_chain_exact_url_caption_and_near_groups():
    """2 repeats 3's bytes (3 scores higher), 1 and 3 are near copies of 4 (highest score): 2 follows
    3 into 4's group. 6 repeats 5's url + caption up to case and spacing; 7 shares only 5's url."""
    def s(key, score, emb, sha, url, caption):
        return Sample(key=key, shard_index=0, shard_path="/in/00000.tar", member_index=int(key), clip_score=score,
                      sha256=sha, url=url, caption=caption, image_embedding=np.asarray(emb, np.float32))
    e1, e2, e3 = np.eye(3, dtype=np.float32)
    near = np.array([0.999, 0.0447, 0], np.float32) / np.linalg.norm([0.999, 0.0447, 0])
    samples = [s("1", 0.5, near, "A", "http://x.org/1.jpg", "one"),
               s("2", 0.6, near, "B", "http://x.org/2.jpg", "two"),
               s("3", 0.7, near, "B", "http://y.org/3.jpg", "three"),
               s("4", 0.9, e1, "D", "http://z.org/4.jpg", "four"),
               s("5", 0.9, e2, "E", "http://x.org/5.jpg", "a red star"),
               s("6", 0.8, e3, "F", "HTTP://X.org:80/5.jpg", "A  Red star "),
               s("7", 0.8, -e3, "G", "http://x.org/5.jpg", "a blue star")]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(samples) | Deduplicate(DedupParams(url_caption=True, near_method="clip"))
        rows = out["decisions"] | beam.Map(lambda r: (r["key"], r["reason"], r["stage"], r["kept_instead"], r["dup_group"]))
        assert_that(out["kept"] | beam.Map(lambda x: x.key), equal_to(["4", "5", "7"]), label="kept")
        assert_that(rows, equal_to([("1", "near_duplicate", "near_dedup", "4", "near:4"),
                                    ("2", "exact_duplicate", "exact_dedup", "4", "near:4"),
                                    ("3", "near_duplicate", "near_dedup", "4", "near:4"),
                                    ("6", "duplicate_url_caption", "exact_dedup", "5",
                                     "url_caption:" + dedup.url_caption_key("http://x.org/5.jpg", "a red star")[:16])]),
                    label="rows")


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


def test_clustered_dedup_and_semdedup_on_a_dask_cluster(scored, tmp_path):
    """The two-pass steps (side inputs, joins by GroupByKey, connected components in rounds) on Beam's
    DaskRunner with two worker processes decide as one process does: results do not depend on the
    runner or worker count. (Top fraction on Dask too: tests/test_runners.py, marked slow.)"""
    distributed = pytest.importorskip("distributed")
    sets = ("dedup.near_flat_max=20", "dedup.semdedup.enabled=true", "dedup.semdedup.target_fraction=0.8")
    select(scored, tmp_path / "direct", *sets)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        select(scored, tmp_path / "dask", *sets, "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
               f"--dask_client_address={cluster.scheduler_address}")
    assert decision_bytes(tmp_path / "dask") == decision_bytes(tmp_path / "direct")


def test_stored_scores_without_hashes_are_one_clear_error(scored, tmp_path):
    """A store written before perceptual hashes existed cannot feed near_method both; clip still works."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(scored, old)
    meta_dir = old / "embeddings" / "metadata"
    for name in os.listdir(meta_dir):
        table = pq.read_table(meta_dir / name)
        pq.write_table(table.drop(["phash"]), meta_dir / name)
    with pytest.raises(Exception, match="hold no perceptual hashes .*set dedup.near_method=clip"):
        select(str(old), tmp_path / "x")
    assert not os.path.exists(tmp_path / "x")  # refused before the output folder was made
    rows = select(str(old), tmp_path / "y", "dedup.near_method=clip")
    assert any(r["reason"] == "near_duplicate" for r in rows.values())
