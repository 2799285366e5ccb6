"""Duplicate removal: one sample kept per group, by a rule that ignores processing order."""
import random

import numpy as np
import pytest

from curate.records import Sample
from filters import dedup


def sample(key, score=0.5, emb=None, sha="h", shard=0, index=None):
    return Sample(key=key, shard_index=shard, shard_path=f"/in/{shard:05d}.tar",
                  member_index=int(key) if index is None else index, clip_score=score, sha256=sha,
                  image_embedding=None if emb is None else np.asarray(emb, dtype=np.float32))


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
    kept, dups = dedup.near_duplicates([sample("1", 0.3, a), sample("2", 0.9, a2), sample("3", 0.5, b)], 0.99)
    assert sorted(s.key for s in kept) == ["2", "3"]
    (d,) = dups
    assert d.sample.key == "1" and d.kept.key == "2" and d.group == "near:2" and d.similarity > 0.99


def test_threshold_is_inclusive():
    a, b = unit(1, 0), unit(0.6, 0.8)  # cosine exactly 0.6
    kept, dups = dedup.near_duplicates([sample("1", 0.5, a), sample("2", 0.5, b)], 0.6)
    assert len(kept) == 1 and len(dups) == 1
    kept, dups = dedup.near_duplicates([sample("1", 0.5, a), sample("2", 0.5, b)], 0.61)
    assert len(kept) == 2 and not dups


def test_chain_is_one_group_with_one_kept():
    """a~b and b~c but a !~ c: connected components put all three in one group; one is kept."""
    ang = np.deg2rad([0, 10, 20])
    embs = [unit(np.cos(t), np.sin(t)) for t in ang]
    assert float(embs[0] @ embs[2]) < 0.95 < float(embs[0] @ embs[1])
    samples = [sample(str(i), 0.5, e) for i, e in enumerate(embs)]
    kept, dups = dedup.near_duplicates(samples, 0.95)
    assert [s.key for s in kept] == ["0"]
    assert {d.sample.key for d in dups} == {"1", "2"} and {d.kept.key for d in dups} == {"0"}


@pytest.mark.parametrize("seed", range(3))
def test_near_is_order_independent(seed):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    embs = np.concatenate([base, base[:10] + rng.normal(scale=0.01, size=(10, 16))])
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    samples = [sample(str(i), float(rng.uniform()), e, index=i) for i, e in enumerate(embs)]
    ref = sorted(s.key for s in dedup.near_duplicates(samples, 0.98)[0])
    shuffled = random.Random(seed).sample(samples, len(samples))
    assert sorted(s.key for s in dedup.near_duplicates(shuffled, 0.98)[0]) == ref
    assert len(ref) == 30
