"""Raw shards compressed as .tar.gz or .tgz (as many published corpora ship them) read like .tar.

A small synthetic corpus is curated once as plain tars; copies whose shards are gzip-compressed (a
folder of .tar.gz, a folder mixing .tar/.tar.gz/.tgz, a glob, one .tgz) must give the same decisions,
the same curated samples and the same FLAVA unimodal streams (which re-read the raw shards). The one
difference allowed is provenance: ``source_shard`` names the file a sample was actually read from.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile

import fsspec
import pyarrow.parquet as pq
import pytest

from curate import run, synth
from curate.ingest.table import is_url_table
from curate.io import iter_tar_samples, shard_stem
from curate.outputs import MAIN
from curate.raw_shards import UNREADABLE_TAR, list_input_shards, read_shard

SAMPLES, SHARD_SIZE, PER_SHARD = 60, 20, 16
SHARDS = ["00000", "00001", "00002"]
MIXED = {"00000": ".tar", "00001": ".tar.gz", "00002": ".tgz"}


def _repack_gz(src: str, dst: str) -> None:
    """A new gzip tar with the same members, in order, as ``tar czf`` or Python's tarfile write it."""
    with tarfile.open(src) as old, tarfile.open(dst, "w:gz") as new:
        for member in old:
            new.addfile(member, old.extractfile(member) if member.isreg() else None)


def _gzip_stream(src: str, dst: str) -> None:
    """The tar's bytes gzip-compressed as a whole, as ``gzip -c x.tar > x.tgz`` writes it."""
    with open(src, "rb") as f, gzip.open(dst, "wb") as g:
        shutil.copyfileobj(f, g)


def compressed_copy(corpus: str, dst: str, suffixes: dict[str, str]) -> str:
    """``corpus`` with shard NNNNN.tar replaced by NNNNN + suffix; the parquet and stats files stay."""
    shutil.copytree(corpus, dst)
    for name, suffix in suffixes.items():
        tar = os.path.join(dst, f"{name}.tar")
        if suffix != ".tar":
            (_repack_gz if suffix == ".tar.gz" else _gzip_stream)(tar, os.path.join(dst, name + suffix))
            os.remove(tar)
    return dst


def laion_filter(inp: str, out: str) -> dict:
    return run.run(["--pipeline", "laion_filter", "--input", inp, "--output", out,
                    "--set", f"shards.samples_per_shard={PER_SHARD}", "--set", "exports=[flava]"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("corpus") / "tar")
    synth.generate(out, SAMPLES, seed=11, noise=0.4, shard_size=SHARD_SIZE)
    return out


@pytest.fixture(scope="module")
def plain(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("plain"))
    laion_filter(corpus, out)
    return out


def _tar(path: str, sources: set) -> list:
    """Members as (name, bytes), json members as dicts with ``source_shard`` as a shard stem;
    the source names seen are added to ``sources``."""
    members = []
    with tarfile.open(path) as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            if m.name.endswith(".json"):
                data = json.loads(data)
                if "source_shard" in data:
                    sources.add(data["source_shard"])
                    data["source_shard"] = shard_stem(data["source_shard"])
            members.append((m.name, data))
    return members


def _parquet(path: str, sources: set) -> list:
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        if r.get("source_shard"):
            sources.add(os.path.basename(r["source_shard"]))
            r["source_shard"] = shard_stem(r["source_shard"])
    return rows


def outcome(out: str) -> tuple[dict, set]:
    """Every file of the curated shards, decisions and FLAVA export, read with source shards as stems;
    and the source shard file names the run recorded."""
    files, sources = {}, set()
    for sub in ("shards", "decisions", os.path.join("exports", "flava")):
        for root, _dirs, names in os.walk(os.path.join(out, sub)):
            for name in names:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, out)
                if name.endswith(".tar"):
                    files[rel] = _tar(path, sources)
                elif name.endswith(".parquet"):
                    files[rel] = _parquet(path, sources)
                else:
                    with open(path, "rb") as f:
                        files[rel] = f.read()
    return files, sources


def reasons(out: str) -> dict:
    return {r["key"]: r["reason"] for r in pq.read_table(os.path.join(out, "decisions")).to_pylist()}


def kept_keys(out: str) -> list:
    shards = os.path.join(out, "shards")
    return [r["key"] for name in sorted(os.listdir(shards)) if name.endswith(".parquet")
            for r in pq.read_table(os.path.join(shards, name)).to_pylist()]


def test_listing_mixes_suffixes_sorted_by_path(corpus, tmp_path):
    mixed = compressed_copy(corpus, str(tmp_path / "mixed"), MIXED)
    (tmp_path / "mixed" / ".00003.tar.tmp-0123abcd").write_bytes(b"")  # a killed writer's temp file
    expected = [os.path.join(mixed, n + s) for n, s in MIXED.items()]
    assert list_input_shards(mixed) == expected
    assert list_input_shards(os.path.join(mixed, "0000*")) == expected  # the .parquet/.json beside are not shards
    assert list_input_shards(os.path.join(mixed, "00002.tgz")) == expected[2:]
    assert not is_url_table(mixed)  # img2dataset's NNNNN.parquet beside compressed shards: still shards
    with pytest.raises(ValueError, match=r"no \.tar, \.tar\.gz or \.tgz shards found"):
        list_input_shards(str(tmp_path / "empty*"))


def test_compressed_shards_stream_the_same_samples(corpus, tmp_path):
    mixed = compressed_copy(corpus, str(tmp_path / "mixed"), MIXED)
    plain_samples = [s for n in SHARDS for s in iter_tar_samples(os.path.join(corpus, f"{n}.tar"))]
    assert len(plain_samples) == SAMPLES
    assert [s for p in list_input_shards(mixed) for s in iter_tar_samples(p)] == plain_samples


def test_remote_folder_of_compressed_shards(corpus):
    mem = fsspec.filesystem("memory")
    for name, suffix in MIXED.items():
        with open(os.path.join(corpus, f"{name}.tar"), "rb") as f:
            data = f.read()
        mem.pipe(f"/compressed_raw/{name}{suffix}", data if suffix == ".tar" else gzip.compress(data, mtime=0))
    mem.pipe("/compressed_raw/00000.parquet", b"")
    try:
        paths = list_input_shards("memory://compressed_raw")
        assert [os.path.basename(p) for p in paths] == [n + s for n, s in MIXED.items()]
        plain = iter_tar_samples(os.path.join(corpus, "00002.tar"))
        assert list(iter_tar_samples(paths[2])) == list(plain)
    finally:
        mem.rm("/compressed_raw", recursive=True)


def test_truncated_tgz_keeps_what_was_read_and_records_the_damage(corpus, tmp_path):
    with open(os.path.join(corpus, "00000.tar"), "rb") as f:
        data = gzip.compress(f.read(), mtime=0)
    path = tmp_path / "00000.tgz"
    path.write_bytes(data[: len(data) // 2])
    *out, (_, count) = list(read_shard(0, str(path), 1))
    samples = [x for tag, x in out if tag == MAIN]
    assert 0 < len(samples) < SHARD_SIZE and count.samples == len(samples)
    assert out[-1][1]["reason"] == UNREADABLE_TAR and "00000.tgz" in out[-1][1]["detail"]


def test_bit_flip_inside_a_tgz_is_recorded_not_passed_silently(corpus, tmp_path):
    """Stored (level 0) deflate keeps a flipped bit valid deflate: only gzip's CRC, at the end of the
    stream, sees it. Every sample is read, then the shard gets its unreadable_tar row."""
    with open(os.path.join(corpus, "00000.tar"), "rb") as f:
        data = bytearray(gzip.compress(f.read(), compresslevel=0, mtime=0))
    data[10 + 5 + 512 + 100] ^= 0x10  # gzip header, stored-block header, first member header: its data
    path = tmp_path / "00000.tgz"
    path.write_bytes(bytes(data))
    *out, (_, count) = list(read_shard(0, str(path), 1))  # the reader's count comes last
    assert len([x for tag, x in out if tag == MAIN]) == SHARD_SIZE == count.samples
    assert out[-1][1]["reason"] == UNREADABLE_TAR and "CRC check failed" in out[-1][1]["detail"]


def test_suffixes_are_matched_whatever_their_case(corpus, tmp_path):
    folder = tmp_path / "upper"
    folder.mkdir()
    shutil.copy(os.path.join(corpus, "00000.tar"), folder / "00000.TAR")
    with open(os.path.join(corpus, "00001.tar"), "rb") as f:
        (folder / "00001.TGZ").write_bytes(gzip.compress(f.read(), mtime=0))
    assert [os.path.basename(p) for p in list_input_shards(str(folder))] == ["00000.TAR", "00001.TGZ"]
    assert shard_stem(str(folder / "00001.TGZ")) == "00001"


@pytest.mark.parametrize("layout", ["tar.gz", "mixed"])
def test_compressed_folder_curates_like_plain_tars(corpus, plain, tmp_path, layout):
    suffixes = {n: ".tar.gz" for n in SHARDS} if layout == "tar.gz" else MIXED
    folder = compressed_copy(corpus, str(tmp_path / "in"), suffixes)
    out = str(tmp_path / "out")
    report = laion_filter(folder, out)
    assert report["counts"]["input"] == SAMPLES and report["counts"]["unreadable_shards"] == 0
    assert kept_keys(out) == kept_keys(plain)
    assert reasons(out) == reasons(plain)
    got, sources = outcome(out)
    want, _ = outcome(plain)
    assert sorted(got) == sorted(want)
    assert any(f.startswith(os.path.join("exports", "flava", "image_only")) for f in got)
    for name in sorted(want):
        assert got[name] == want[name], name
    # Curated output stays .tar; provenance names the files as they are.
    written = os.listdir(os.path.join(out, "shards"))
    assert all(n.endswith(".tar") for n in written if not n.endswith((".parquet", ".json")))
    assert {shard_stem(s): s for s in sources} == {n: n + s for n, s in suffixes.items()}


def test_glob_over_mixed_shards(corpus, plain, tmp_path):
    folder = compressed_copy(corpus, str(tmp_path / "in"), MIXED)
    out = str(tmp_path / "out")
    laion_filter(os.path.join(folder, "*.t*"), out)
    assert kept_keys(out) == kept_keys(plain)
    assert reasons(out) == reasons(plain)


def test_one_tgz_file(corpus, tmp_path):
    folder = compressed_copy(corpus, str(tmp_path / "in"), {"00001": ".tgz"})
    out = str(tmp_path / "out")
    report = laion_filter(os.path.join(folder, "00001.tgz"), out)
    keys = [k for k, _ in iter_tar_samples(os.path.join(corpus, "00001.tar"))]
    assert report["counts"]["input"] == SHARD_SIZE == report["counts"]["kept"] + report["counts"]["dropped"]
    assert sorted(reasons(out)) == sorted(keys)
    assert set(kept_keys(out)) == {k for k, r in reasons(out).items() if r is None}
    sources = {os.path.basename(r["source_shard"]) for r in pq.read_table(os.path.join(out, "decisions")).to_pylist()}
    assert sources == {"00001.tgz"}
