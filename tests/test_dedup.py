"""Duplicate removal: one sample kept per group, by a rule that ignores processing order."""
import random

import numpy as np
import pytest
from curate.filters import dedup

from curate.records import Sample


def sample(key, score=0.5, emb=None, sha="h", shard=0, index=None, phash=None):
    return Sample(key=key, shard_index=shard, shard_path=f"/in/{shard:05d}.tar",
                  member_index=int(key) if index is None else index, clip_score=score, sha256=sha,
                  image_embedding=None if emb is None else np.asarray(emb, dtype=np.float32), phash=phash)


def clip_rule(threshold):
    return dedup.NearRule("clip", threshold=threshold)


def unit(*v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_exact_keeps_highest_score_then_smallest_key():
    group = [sample("3", 0.4), sample("2", 0.6), sample("1", 0.6)]
    kept, dups = dedup.exact_duplicates(group)
    assert kept.key == "1"
    assert sorted(d.sample.key for d in dups) == ["2", "3"]
    assert all(d.kept.key == "1" and d.group == "sha256:h" for d in dups)


def test_exact_is_order_independent():
    group = [sample(str(i), 0.5) for i in range(10)]
    results = {dedup.exact_duplicates(random.Random(s).sample(group, 10))[0].key for s in range(5)}
    assert results == {"0"}


def test_near_groups_keep_one_and_name_it():
    a, a2 = unit(1, 0, 0), unit(1, 0.05, 0)  # cosine ~0.9988
    b = unit(0, 1, 0)
    kept, dups = dedup.near_duplicates([sample("1", 0.3, a), sample("2", 0.9, a2), sample("3", 0.5, b)], clip_rule(0.99))
    assert sorted(s.key for s in kept) == ["2", "3"]
    (d,) = dups
    assert d.sample.key == "1" and d.kept.key == "2" and d.group == "near:2" and d.similarity > 0.99


def test_threshold_is_inclusive():
    a, b = unit(1, 0), unit(0.6, 0.8)  # cosine exactly 0.6
    kept, dups = dedup.near_duplicates([sample("1", 0.5, a), sample("2", 0.5, b)], clip_rule(0.6))
    assert len(kept) == 1 and len(dups) == 1
    kept, dups = dedup.near_duplicates([sample("1", 0.5, a), sample("2", 0.5, b)], clip_rule(0.61))
    assert len(kept) == 2 and not dups


def test_chain_keeps_both_ends():
    """a~b and b~c but a !~ c: a ranks first and is kept, b is dropped for a, c is kept (no chaining)."""
    ang = np.deg2rad([0, 10, 20])
    embs = [unit(np.cos(t), np.sin(t)) for t in ang]
    assert float(embs[0] @ embs[2]) < 0.95 < float(embs[0] @ embs[1])
    samples = [sample(str(i), 0.5, e) for i, e in enumerate(embs)]
    kept, dups = dedup.near_duplicates(samples, clip_rule(0.95))
    assert [s.key for s in kept] == ["0", "2"]
    (d,) = dups
    assert d.sample.key == "1" and d.kept.key == "0" and d.similarity >= 0.95


def test_chain_whose_middle_ranks_first_keeps_only_the_middle():
    ang = np.deg2rad([0, 10, 20])
    samples = [sample(str(i), 0.9 if i == 1 else 0.5, unit(np.cos(t), np.sin(t))) for i, t in enumerate(ang)]
    kept, dups = dedup.near_duplicates(samples, clip_rule(0.95))
    assert [s.key for s in kept] == ["1"] and {d.kept.key for d in dups} == {"1"}


def test_long_chain_never_drops_a_sample_far_from_every_kept_one():
    """100 points 2 degrees apart on a circle: connected components would keep 1; the greedy rule
    keeps every other point and each dropped one names a kept neighbour within the threshold."""
    embs = [unit(np.cos(t), np.sin(t)) for t in np.deg2rad(np.arange(100) * 2.0)]
    samples = [sample(str(i), 0.5, e, index=i) for i, e in enumerate(embs)]
    kept, dups = dedup.near_duplicates(samples, clip_rule(float(np.round(np.cos(np.deg2rad(2.5)), 4))))
    assert len(kept) == 50
    kept_keys = {s.key for s in kept}
    for d in dups:
        assert d.kept.key in kept_keys and d.similarity >= np.cos(np.deg2rad(2.5)) - 1e-4


def test_phash_rule_uses_hamming_distance():
    h = "0" * 16
    near, far = "0" * 15 + "7", "f" * 4 + "0" * 12  # 3 bits, 16 bits
    samples = [sample("1", 0.5, phash=h), sample("2", 0.4, phash=near), sample("3", 0.3, phash=far)]
    kept, dups = dedup.near_duplicates(samples, dedup.NearRule("phash", max_distance=10))
    assert [s.key for s in kept] == ["1", "3"]
    (d,) = dups
    assert d.kept.key == "1" and d.distance == 3 and d.similarity is None


@pytest.mark.parametrize("method", dedup.NEAR_METHODS)
def test_methods_combine_the_two_signals(method):
    """Sample 2 is a hash copy of 1 with a far embedding; sample 3 an embedding twin with a far hash."""
    a, far = unit(1, 0), unit(0, 1)
    samples = [sample("1", 0.9, a, phash="0" * 16), sample("2", 0.5, far, phash="0" * 15 + "1"),
               sample("3", 0.4, a, phash="f" * 16)]
    got = dedup.near_duplicates(samples, dedup.NearRule(method, threshold=0.95, max_distance=4))[0]
    expected = {"phash": ["1", "3"], "clip": ["1", "2"], "both": ["1", "2", "3"], "either": ["1"]}[method]
    assert [s.key for s in got] == expected


@pytest.mark.parametrize("seed", range(3))
def test_near_is_order_independent(seed):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    embs = np.concatenate([base, base[:10] + rng.normal(scale=0.01, size=(10, 16))])
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    samples = [sample(str(i), float(rng.uniform()), e, index=i) for i, e in enumerate(embs)]
    ref = sorted(s.key for s in dedup.near_duplicates(samples, clip_rule(0.98))[0])
    shuffled = random.Random(seed).sample(samples, len(samples))
    assert sorted(s.key for s in dedup.near_duplicates(shuffled, clip_rule(0.98))[0]) == ref
    assert len(ref) == 30


# --- exact (url, caption) ---------------------------------------------------------------------

def test_url_caption_key_normalises_host_case_port_fragment_and_caption_spacing():
    a = dedup.url_caption_key("HTTP://Example.COM:80/img/A.jpg#top", "A  red\tCircle ")
    b = dedup.url_caption_key(" http://example.com/img/A.jpg", "a red circle")
    assert a == b
    assert dedup.url_caption_key("http://example.com/img/a.jpg", "a red circle") != b  # path case matters
    assert dedup.url_caption_key("http://example.com/img/A.jpg", "a blue circle") != b
    assert dedup.url_caption_key(None, "x") is None and dedup.url_caption_key("http://e.com/", None) is None
    assert dedup.url_caption_key("http://e.com:notaport/", "x") is not None  # bad port: compared as written


# --- near: exact search in blocks, clustered search ----------------------------------------------

def _clustered(n, d=32, topics=8, copies=40, seed=0):
    """Points around topic centres plus ``copies`` planted near copies (cosine 0.97-0.999)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d))
    x = centres[rng.integers(topics, size=n)] + rng.normal(scale=0.6, size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.choice(n, size=copies, replace=False)
    y = x[src] + rng.normal(scale=0.03, size=(copies, d))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return np.concatenate([x, y]).astype(np.float32), src


def _brute(x, threshold):
    sim = x @ x.T
    return {(i, j) for i, j in zip(*np.nonzero(np.round(sim, 4) >= threshold), strict=True) if i < j}


def test_pairs_above_in_blocks_equals_brute_force():
    x, _ = _clustered(300)
    i, j, s = dedup.pairs_above(x, 0.95, block=64)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute(x, 0.95) and len(i) >= 40
    assert np.all(s >= 0.95)


def test_clustered_search_finds_every_planted_pair_and_only_true_pairs():
    x, src = _clustered(3000)
    ranks = np.array([dedup.training_rank(str(k), (0, k)) for k in range(len(x))], dtype=np.uint64)
    i, j, _s = dedup.near_pairs(x, 0.95, ranks, flat_max=100)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    truth = _brute(x, 0.95)
    planted = {(int(a), 3000 + k) for k, a in enumerate(src)}
    assert planted <= truth and found <= truth  # precision 1: every found pair is checked exactly
    assert len(found & truth) / len(truth) >= 0.98


def test_assign_adds_a_second_cluster_only_near_a_border():
    centroids = np.array([[1, 0], [0, 1]], dtype=np.float32)
    x = np.stack([unit(1, 0), unit(1, 0.98)])  # deep inside cluster 0; on the 0/1 border
    got = dedup.assign(x, centroids, m=2, border=0.05)
    assert got[0].tolist() == [0, -1] and sorted(got[1].tolist()) == [0, 1]


def test_follow_points_followers_at_the_final_kept_sample():
    a, b, c = sample("1", 0.9, unit(1, 0)), sample("2", 0.5, unit(1, 0.01)), sample("3", 0.5, unit(1, 0.01))
    exact = dedup.Duplicate(c, b, "sha256:h")          # c copies b ...
    near = dedup.Duplicate(b, a, "near:1", 0.9999, dedup.NEAR_DUPLICATE, "near_dedup")  # ... b is then dropped for a
    (moved,) = dedup.follow([exact], near)
    assert moved.kept is a and moved.group == "near:1" and moved.reason == dedup.EXACT_DUPLICATE
    assert moved.similarity == pytest.approx(float(unit(1, 0.01) @ unit(1, 0)), abs=1e-4)


def test_nearest_clusters_agrees_with_batched_assign():
    x, _ = _clustered(500)
    centroids = dedup.train_centroids(x, 12)
    batched = dedup.assign(x, centroids, m=2, border=0.1)
    one_by_one = [dedup.nearest_clusters(v, centroids, 2, 0.1) for v in x]
    assert [sorted(c for c in row if c >= 0) for row in batched.tolist()] == [sorted(r) for r in one_by_one]


def test_packed_vectors_give_back_the_search_vectors_exactly():
    """What a sample ships to its clusters (8 hash bytes, a float16 embedding) unpacks to the very
    vectors the search would have used, in both spaces."""
    rng = np.random.default_rng(3)
    stored = [rng.standard_normal(64).astype(np.float16).astype(np.float32) for _ in range(5)]
    samples = [sample(str(i), emb=e, phash=rng.bytes(8).hex()) for i, e in enumerate(stored)]
    for space in (dedup.PHASH, dedup.CLIP):
        packed = [dedup.packed_vector(s, space) for s in samples]
        expected = np.stack([dedup.search_vector(s, space) for s in samples])
        assert np.array_equal(dedup.unpacked_vectors(packed, space), expected)
    assert all(len(dedup.packed_vector(s, dedup.PHASH)) == 8 for s in samples)
    assert dedup.packed_vector(samples[0], dedup.CLIP).dtype == np.float16


def test_exact_half_keeps_float32_when_float16_would_lose_bits():
    v = np.float32([1 / 3, 0.1, 2.0])  # 1/3 and 0.1 are not float16 values
    assert dedup.exact_half(v).dtype == np.float32 and np.array_equal(dedup.exact_half(v), v)
    assert dedup.exact_half(np.float32([0.5, -2.0])).dtype == np.float16
