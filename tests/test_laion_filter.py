"""laion_filter end to end on a small synthetic corpus, checked against the generator's ground truth."""
import glob
import json
import os
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate import run, synth

SAMPLES, PER_SHARD = 800, 150


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus"))
    synth.generate(out, SAMPLES, seed=5, noise=0.4, shard_size=300)
    return out


def laion_filter(corpus, out, *extra):
    return run.run(["--pipeline", "laion_filter", "--input", corpus, "--output", out,
                    "--set", f"shards.samples_per_shard={PER_SHARD}", *extra])


@pytest.fixture(scope="module")
def result(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    report = laion_filter(corpus, out)
    decisions = pq.read_table(os.path.join(out, "decisions")).to_pylist()
    truth = {r["key"]: r for r in pq.read_table(os.path.join(corpus, "ground_truth.parquet")).to_pylist()}
    return out, report, decisions, truth


def test_every_input_sample_has_exactly_one_decision(result):
    out, report, decisions, truth = result
    c = report["counts"]
    assert c["input"] == SAMPLES == len(decisions) == c["kept"] + c["dropped"]
    assert len({(d["source_shard"], d["source_index"]) for d in decisions}) == SAMPLES
    assert sum(c["dropped_by_reason"].values()) == c["dropped"]
    assert all(d["kept"] == (d["reason"] is None) for d in decisions)
    assert sorted(os.listdir(os.path.join(out, "decisions"))) == ["00000.parquet", "00001.parquet", "00002.parquet"]


def test_curated_shards_read_back_and_match_sizes_and_parquet(result):
    out, report, decisions, _ = result
    shard_dir = os.path.join(out, "shards")
    sizes = json.load(open(os.path.join(shard_dir, "sizes.json")))
    tars = sorted(glob.glob(os.path.join(shard_dir, "*.tar")))
    assert [os.path.basename(t) for t in tars] == sorted(sizes)
    assert sum(sizes.values()) == report["counts"]["kept"]
    assert all(n == PER_SHARD for n in list(sizes.values())[:-1]) and 0 < list(sizes.values())[-1] <= PER_SHARD
    kept = {d["key"] for d in decisions if d["kept"]}
    seen = []
    for tar in tars:
        rows = pq.read_table(tar[:-4] + ".parquet").to_pylist()
        ds = wds.WebDataset(tar, shardshuffle=False).decode("pil")
        got = list(ds)
        assert len(got) == len(rows) == sizes[os.path.basename(tar)]
        for sample, row in zip(got, rows):
            assert sample["__key__"] == row["key"]
            assert sample["txt"] == row["caption"] and sample["jpg"].mode == "RGB"
            meta = sample["json"]
            assert meta["source_key"] == row["key"] and meta["caption"] == row["caption"]
            assert meta["language"] in synth.LANGUAGES and meta["clip_score"] >= report["config"]["select.clip_threshold"]
            seen.append(row["key"])
    assert len(seen) == len(set(seen)) and set(seen) == kept


def test_each_duplicate_group_keeps_exactly_one(result):
    _, _, decisions, truth = result
    by_key = {d["key"]: d for d in decisions}
    groups = defaultdict(set)
    for key, t in truth.items():
        if t["kind"] in synth.DUPLICATE_KINDS:
            groups[t["original_key"]].update({key, t["original_key"]})
    assert len(groups) > 20
    dedup_stages = {"exact_dedup", "near_dedup", "write"}
    for members in groups.values():
        reached = [k for k in members if by_key[k]["kept"] or by_key[k]["stage"] in dedup_stages]
        kept = [k for k in members if by_key[k]["kept"]]
        assert len(kept) == (1 if reached else 0), {k: (by_key[k]["reason"], by_key[k]["stage"]) for k in members}
    for d in decisions:
        if d["reason"] in ("exact_duplicate", "near_duplicate"):
            assert by_key[d["kept_instead"]]["kept"] and d["dup_group"]


def test_ground_truth_recovered(result):
    _, report, decisions, truth = result
    by_kind = defaultdict(list)
    for d in decisions:
        by_kind[truth[d["key"]]["kind"]].append(d)
    mismatched = by_kind["mismatched_caption"]
    dropped = sum(not d["kept"] for d in mismatched) / len(mismatched)
    clean_kept = sum(d["kept"] for d in by_kind["clean"]) / len(by_kind["clean"])
    print(f"mismatched dropped {dropped:.1%}, clean kept {clean_kept:.1%}")
    assert dropped >= 0.90 and clean_kept >= 0.90
    expected = {"small_image": {"image_too_small"}, "extreme_aspect": {"extreme_aspect_ratio"},
                "empty_caption": {"caption_too_short"}, "truncated_image": {"truncated_image"},
                "corrupt_image": {"unreadable_image", "corrupt_image"},
                "boilerplate_caption": {"caption_too_short", "boilerplate_caption"},
                "exact_duplicate": {"exact_duplicate", None}}
    for kind, reasons in expected.items():
        got = {d["reason"] for d in by_kind[kind]}
        assert got <= reasons, (kind, got)


def test_rerun_is_byte_identical(result, corpus, tmp_path):
    out, *_ = result
    laion_filter(corpus, str(tmp_path))
    for sub in ("shards", "decisions"):
        names = sorted(os.listdir(os.path.join(out, sub)))
        assert names == sorted(os.listdir(os.path.join(tmp_path, sub)))
        for name in names:
            a = open(os.path.join(out, sub, name), "rb").read()
            assert a == open(os.path.join(tmp_path, sub, name), "rb").read(), f"{sub}/{name}"


def test_report_and_summary(result, capsys):
    out, report, _, _ = result
    on_disk = json.load(open(os.path.join(out, "report.json")))
    assert on_disk["counts"] == report["counts"] and on_disk["config"]["scorer.model"] == "curate-demo-64"
    assert on_disk["time"]["wall_seconds"] > 0 and "decode_and_filter" in on_disk["time"]["stage_cpu_seconds"]
