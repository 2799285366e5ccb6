"""SemDeDup within a cluster: one kept per duplicate group, chains, keep modes, target eps."""
import random

import numpy as np
import pytest
from curate.filters import semdedup

from curate.records import Sample


def sample(key, emb, index=None):
    return Sample(key=key, shard_index=0, shard_path="/in/00000.tar", member_index=int(key) if index is None else index,
                  clip_score=0.5, sha256=key, image_embedding=np.asarray(emb, dtype=np.float32))


def on_circle(degrees):
    t = np.deg2rad(degrees)
    return np.array([np.cos(t), np.sin(t), 0.0], dtype=np.float32)


def test_chain_keeps_both_ends_where_the_reference_rule_drops_the_far_end():
    """a~b, b~c, a !~ c (eps 0.02: cos 10 deg = 0.985 > 0.98 > cos 20 deg = 0.940).

    Offered in order a, b, c: b goes (close to kept a); c is close only to b, which was dropped,
    so c stays. SemDeDup's reference code compares c with every earlier member and would drop it.
    """
    members = [sample("1", on_circle(0)), sample("2", on_circle(10)), sample("3", on_circle(20))]
    kept, dups = semdedup.semdedup_cluster(members, None, eps=0.02, keep="random", seed=0)
    ordered = [s.key for s in semdedup.priority(members, None, "random", 0)]
    if ordered.index("2") < min(ordered.index("1"), ordered.index("3")):
        assert [s.key for s in kept] == ["2"] and len(dups) == 2  # b first: both ends name b
    else:
        assert sorted(s.key for s in kept) == ["1", "3"]
        (d,) = dups
        assert d.sample.key == "2" and d.kept.key in ("1", "3") and d.group == f"semdedup:{d.kept.key}"


@pytest.mark.parametrize("keep", semdedup.KEEP_MODES)
def test_one_kept_per_group_and_kept_members_are_apart(keep):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 16))
    x = np.concatenate([base, base[:15] + rng.normal(scale=0.05, size=(15, 16)), base[:5] + rng.normal(scale=0.05, size=(5, 16))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    members = [sample(str(i), e) for i, e in enumerate(x)]
    centroid = x.mean(axis=0) / np.linalg.norm(x.mean(axis=0))
    eps = 0.02
    kept, dups = semdedup.semdedup_cluster(members, centroid, eps, keep, seed=3)
    kept_keys = {s.key for s in kept}
    assert len(kept) + len(dups) == len(members) and len(kept) == 40
    k = np.stack([s.image_embedding for s in kept])
    sims = k @ k.T - 2 * np.eye(len(k))
    assert np.round(sims, 4).max() <= 1 - eps  # no two kept members are duplicates
    for d in dups:
        assert d.kept.key in kept_keys and d.similarity > 1 - eps and d.reason == semdedup.SEMANTIC_DUPLICATE
    shuffled = random.Random(7).sample(members, len(members))
    assert {s.key for s in semdedup.semdedup_cluster(shuffled, centroid, eps, keep, seed=3)[0]} == kept_keys


def test_hard_keeps_the_member_far_from_the_centroid_easy_the_close_one():
    centroid = on_circle(0)
    pair = [sample("1", on_circle(1)), sample("2", on_circle(3))]  # cos 2 deg = 0.9994
    assert [s.key for s in semdedup.semdedup_cluster(pair, centroid, 0.01, "hard")[0]] == ["2"]
    assert [s.key for s in semdedup.semdedup_cluster(pair, centroid, 0.01, "easy")[0]] == ["1"]


def test_random_keep_depends_on_the_seed_only():
    pairs = [[sample(str(2 * i), on_circle(5 * i)), sample(str(2 * i + 1), on_circle(5 * i + 0.5))] for i in range(20)]
    members = [s for p in pairs for s in p]
    by_seed = [frozenset(s.key for s in semdedup.semdedup_cluster(members, None, 0.001, "random", seed)[0])
               for seed in (0, 0, 1)]
    assert by_seed[0] == by_seed[1] != by_seed[2] and len(by_seed[0]) == 20


def test_target_mode_picks_the_smallest_eps_that_reaches_the_fraction():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(100, 8))
    x = np.concatenate([base, base + rng.normal(size=(100, 1)) * 0.2 * rng.normal(size=(100, 8))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    members = [sample(str(i), e) for i, e in enumerate(x)]
    counts = semdedup.kept_counts(members, None)  # scanned in grid order: greedy counts need not be monotone
    eps = semdedup.choose_eps(counts, len(members), 0.5)
    at = semdedup.EPS_GRID.index(eps)
    assert counts[at] / len(members) <= 0.5 and all(c / len(members) > 0.5 for c in counts[:at])
    kept, _ = semdedup.semdedup_cluster(members, None, eps)
    assert len(kept) == counts[at]
    assert semdedup.choose_eps(counts, len(members), 0.0) == semdedup.EPS_GRID[-1]  # unreachable: the loosest


def test_bad_keep_mode():
    with pytest.raises(ValueError, match="keep must be one of hard, easy, random"):
        semdedup.priority([sample("1", on_circle(0))], None, "medium")
