"""Curated shard layout without a global gather: WriteCuratedShards equals the pure rule
(shards.plan_shards), byte for byte, whatever the bundling and the number of worker processes."""
import os
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from curate.filters.sample import decode_sample

from curate import shards, synth
from curate.io import iter_tar_groups
from curate.records import WRITE, RawSample, decision

PER_SHARD = 7  # not a divisor of any input shard's kept count: output shards straddle input shards


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """About two thirds of a 3-shard corpus, as decoded Samples (what the writer receives)."""
    corpus = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(corpus, 75, seed=8, noise=0.0, shard_size=25)
    rng = random.Random(8)
    samples = []
    for shard_index, name in enumerate(sorted(n for n in os.listdir(corpus) if n.endswith(".tar"))):
        path = os.path.join(corpus, name)
        for member_index, group in enumerate(iter_tar_groups(path)):
            verdict = decode_sample(RawSample(group.key, shard_index, path, member_index, group.fields),
                                    detect_language=False)
            if verdict.reason is None and rng.random() < 0.7:
                samples.append(verdict.sample)
    return samples


def files(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def reference(kept, tmp_path_factory):
    """The layout written the old way: every kept sample planned in one list (plan_shards)."""
    out = str(tmp_path_factory.mktemp("reference"))
    by_order = {s.order: s for s in kept}
    writer, sizes = shards.WriteShardFn(out), {}
    for shard_id, orders in enumerate(shards.plan_shards([s.order for s in kept], PER_SHARD)):
        sizes.update(writer.process((shard_id, [by_order[o] for o in orders])))
    shards.write_sizes(out, sizes)
    return files(out)


def test_offsets_and_positions_give_the_planned_layout():
    """Pure: per-input-shard counts -> prefix-sum offsets -> offset + rank // n is plan_shards' layout."""
    rng = random.Random(3)
    for _ in range(50):
        orders = sorted({(rng.randrange(6), rng.randrange(40)) for _ in range(rng.randrange(120))})
        n = rng.randint(1, 9)
        counts = {}
        for shard_index, _ in orders:
            counts[shard_index] = counts.get(shard_index, 0) + 1
        offsets = shards.input_shard_offsets(list(counts.items()))
        ranks = {o: [x for x in orders if x[0] == o[0]].index(o) for o in orders}
        got: dict[int, list] = {}
        for o in orders:
            got.setdefault(shards.output_shard(offsets[o[0]] + ranks[o], n), []).append(o)
        assert [got[i] for i in sorted(got)] == shards.plan_shards(orders, n)
        assert sorted(got) == list(range(len(got)))


@pytest.mark.parametrize("workers", [1, 2])
def test_written_shards_equal_the_planned_layout(kept, reference, tmp_path, workers):
    """One process with input in order, and two worker processes with input shuffled: the same
    bytes as the reference (tars, parquets, sizes.json) and the same 'write' decision rows."""
    shuffled = list(kept)
    random.Random(workers).shuffle(shuffled)
    options = PipelineOptions(direct_running_mode="multi_processing", direct_num_workers=workers) if workers > 1 \
        else PipelineOptions()
    runner = FnApiRunner() if workers == 1 else "DirectRunner"
    with beam.Pipeline(runner=runner, options=options) as p:
        written = (p | beam.Create(kept if workers == 1 else shuffled)
                   | shards.WriteCuratedShards(str(tmp_path), PER_SHARD))
        assert_that(written["decisions"], equal_to([decision(s, True, WRITE) for s in kept]))
    got = files(tmp_path)
    assert len(got) == 2 * -(-len(kept) // PER_SHARD) + 1  # tar + parquet per shard, sizes.json
    assert sorted(got) == sorted(reference) and [n for n in got if got[n] != reference[n]] == []


def test_nothing_kept_writes_nothing(tmp_path):
    with beam.Pipeline(runner=FnApiRunner()) as p:
        written = p | beam.Create([]) | shards.WriteCuratedShards(str(tmp_path / "shards"), PER_SHARD)
        assert_that(written["decisions"], equal_to([]))
    assert not os.path.exists(tmp_path / "shards")
