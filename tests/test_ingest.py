"""ingest: URL tables -> raw shards, against a local fault server on 127.0.0.1 (no other network)."""
import gzip
import json
import os

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from ingest_server import FAULTS, FaultServer, image_caption

from curate import run
from curate.ingest import guard, table
from curate.ingest.shard import status_reason
from curate.io import iter_tar_samples

FAST = ["--set", "ingest.allow_networks=127.0.0.0/8", "--set", "ingest.timeout=2",
        "--set", "ingest.deadline_seconds=3", "--set", "ingest.image_size=64", "--set", "ingest.thread_count=8",
        "--set", "ingest.samples_per_shard=10"]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def ingest(table_path, out, *extra):
    return run.run(["--pipeline", "ingest", "--input", str(table_path), "--output", str(out), *FAST, *extra])


def raw_rows(out):
    raw = os.path.join(out, "raw")
    return pa.concat_tables([pq.read_table(os.path.join(raw, n)) for n in sorted(os.listdir(raw))
                             if n.endswith(".parquet")]).to_pylist()


def raw_files(out):
    raw = os.path.join(out, "raw")
    return {n: open(os.path.join(raw, n), "rb").read() for n in sorted(os.listdir(raw)) if not n.endswith("_stats.json")}


# --- pure rules -------------------------------------------------------------------------------

@pytest.mark.parametrize("ip,problem", [
    ("8.8.8.8", None), ("2606:4700::1111", None),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::ffff:10.0.0.1", "private"), ("100.64.0.1", "not a public address"),
])
def test_address_rules(ip, problem):
    got = guard.address_problem(ip)
    assert (got is None) if problem is None else (problem in got)


def test_allowed_networks_open_only_themselves():
    nets = guard.parse_networks("127.0.0.0/8")
    assert guard.address_problem("127.0.0.1", nets) is None
    assert "private" in guard.address_problem("10.0.0.1", nets)
    with pytest.raises(ValueError, match="not a network"):
        guard.parse_networks("10.0.0.0/8, intranet")


@pytest.mark.parametrize("status,message,reason", [
    ("success", None, None),
    ("failed_to_download", "http_404: Not Found", "http_404"),
    ("failed_to_download", "refused_private_address: x resolves to 10.0.0.1 is private", "refused_private_address"),
    ("failed_to_download", "hash mismatch", "hash_mismatch"),
    ("failed_to_download", "something new", "download_error"),
    ("failed_to_resize", "image too small", "image_too_small"),
    ("failed_to_resize", "Image decoding error", "undecodable_image"),
    ("failed_to_resize", "decompression_bomb: 12000x12000 > 89478485 pixels", "decompression_bomb"),
    ("failed_to_resize", "cv2 said no", "resize_error"),
])
def test_status_reasons(status, message, reason):
    assert status_reason(status, message) == reason


def test_default_policy_refuses_before_connecting():
    with pytest.raises(guard.Refused, match="refused_private_address: .*loopback"):
        guard.fetch("http://127.0.0.1:9/x.jpg", guard.Policy(), 1)
    for url in ("file:///etc/passwd", "ftp://example.com/x.jpg", "gopher://x/"):
        with pytest.raises(guard.Refused, match="refused_scheme"):
            guard.fetch(url, guard.Policy(), 1)


# --- tables -----------------------------------------------------------------------------------

def test_every_table_format_reads_the_same(tmp_path):
    data = pa.table({"URL": ["http://a/1.jpg", "http://a/2.jpg"], "TEXT": ["one", "two"],
                     "sha256": ["x", "y"], "score": [0.5, 0.25]})
    pq.write_table(data, tmp_path / "t.parquet")
    pa_csv.write_csv(data, tmp_path / "t.csv")
    with gzip.open(tmp_path / "t.tsv.gz", "wb") as f:
        f.write(b"URL\tTEXT\tsha256\tscore\nhttp://a/1.jpg\tone\tx\t0.5\nhttp://a/2.jpg\ttwo\ty\t0.25\n")
    write_jsonl(tmp_path / "t.jsonl", data.to_pylist())
    for name in ("t.parquet", "t.csv", "t.tsv.gz", "t.jsonl"):
        t = table.read_table(str(tmp_path / name), "URL", "TEXT")
        # url/caption renamed as img2dataset names them; a column it writes itself is kept as input_NAME
        assert t.to_pylist() == [{"url": "http://a/1.jpg", "caption": "one", "input_sha256": "x", "score": 0.5},
                                 {"url": "http://a/2.jpg", "caption": "two", "input_sha256": "y", "score": 0.25}], name
    assert table.list_tables(str(tmp_path)) == sorted(str(tmp_path / n) for n in
                                                      ("t.csv", "t.jsonl", "t.parquet", "t.tsv.gz"))
    with pytest.raises(table.TableError, match="no column 'url'; its columns are: URL, TEXT"):
        table.check_columns(str(tmp_path / "t.parquet"), "url", "TEXT")


@pytest.mark.parametrize("args,expect", [
    ([], "ingest needs --input"),
    (["--input", "/nonexistent/urls.parquet"], "no URL table"),
    (["--set", "ingest.allow_networks=everything"], "not a network"),
])
def test_errors_are_one_line_before_any_work(tmp_path, capsys, args, expect):
    if "--set" in args:
        args = ["--input", write_jsonl(tmp_path / "t.jsonl", [{"url": "http://x/1.jpg", "caption": "c"}]), *args]
    out = tmp_path / "out"
    assert run.main(["--pipeline", "ingest", "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# --- against the fault server -----------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with FaultServer() as s:
        for i in range(30):  # rendered up front: a first request must not wait on rendering
            s.image(i)
        yield s


@pytest.fixture(scope="module")
def faulty_run(server, tmp_path_factory):
    """12 good URLs, every fault of the server, a file:// URL and a missing URL, in 4 shards."""
    d = tmp_path_factory.mktemp("faulty")
    rows = [{"url": f"{server.base}/img/{i}.jpg", "caption": f"scene {i}", "extra": i} for i in range(12)]
    rows += [{"url": server.base + path, "caption": path, "extra": -1} for path in FAULTS]
    rows += [{"url": "file:///etc/passwd", "caption": "local file", "extra": -2},
             {"url": None, "caption": "no url", "extra": -3}]
    path = write_jsonl(d / "urls.jsonl", rows)
    report = ingest(path, d / "out")
    return rows, report, str(d / "out")


def test_every_fault_ends_as_its_reason(faulty_run):
    _rows, _report, out = faulty_run
    got = {r["url"]: r for r in raw_rows(out)}
    for path, reason in FAULTS.items():
        row = next(r for u, r in got.items() if u and u.endswith(path) and "/img/" not in u)
        assert row["reason"] == reason, (path, row["error_message"])
        assert (row["status"] == "success") == (reason is None)
    assert got["file:///etc/passwd"]["reason"] == "refused_scheme"
    assert got[None]["reason"] == "bad_url"


def test_one_status_row_per_input_row_and_counts_add_up(faulty_run):
    rows, report, out = faulty_run
    status = raw_rows(out)
    assert len(status) == len(rows) and len({r["key"] for r in status}) == len(rows)
    c = report["counts"]
    assert c["input"] == len(rows) == c["kept"] + c["dropped"] == c["kept"] + sum(c["dropped_by_reason"].values())
    assert c["kept"] == sum(r["status"] == "success" for r in status) == 12 + sum(v is None for v in FAULTS.values())
    # decisions: one row per input row, pointing at the table row it came from
    decisions = pq.read_table(os.path.join(out, "decisions")).to_pylist()
    assert sorted(d["source_index"] for d in decisions) == list(range(len(rows)))
    assert all(d["stage"] == "ingest" and d["source_shard"].endswith("urls.jsonl") for d in decisions)


def test_tars_hold_the_successes_with_their_columns(faulty_run):
    _rows, _report, out = faulty_run
    by_key = {r["key"]: r for r in raw_rows(out)}
    members = {}
    for name in sorted(os.listdir(os.path.join(out, "raw"))):
        if name.endswith(".tar"):
            members.update(iter_tar_samples(os.path.join(out, "raw", name)))
    assert set(members) == {k for k, r in by_key.items() if r["status"] == "success"}
    for key, fields in members.items():
        meta = json.loads(fields["json"])
        assert meta["key"] == key and meta["url"] == by_key[key]["url"] and "extra" in meta
        assert fields["txt"].decode() == by_key[key]["caption"]
        assert max(by_key[key]["width"], by_key[key]["height"]) <= 64 and fields["jpg"][:2] == b"\xff\xd8"
        assert meta["sha256"] and len(meta["sha256"]) == 64
    leftovers = [n for _d, dirs, names in os.walk(out) for n in dirs + names if ".tmp-" in n or n == ".pending"]
    assert not leftovers


def good_rows(server, n, flaky=()):
    return [{"url": f"{server.base}/{'flaky' if i in flaky else 'img'}/{i}.jpg", "caption": image_caption(i), "n": i}
            for i in range(n)]


def test_rerun_redoes_only_unfinished_shards(server, tmp_path):
    path = write_jsonl(tmp_path / "urls.jsonl", good_rows(server, 25))
    out = tmp_path / "out"
    ingest(path, out)
    reference = raw_files(out)
    raw = out / "raw"
    # A run killed while shard 1 was being written: its stats (the done marker) missing, a partial
    # tar under the final name from an older tool, a work folder of the killed process.
    (raw / "00001_stats.json").unlink()
    (raw / "00001.tar").write_bytes(reference["00001.tar"][:1000])
    (raw / ".00001.tmp-0123abcd").mkdir()
    (raw / ".00001.tmp-0123abcd" / "00001.tar").write_bytes(b"partial")
    untouched = os.stat(raw / "00000.tar").st_mtime_ns
    hits = dict(server.hits)
    report = ingest(path, out)
    assert raw_files(out) == reference
    assert os.stat(raw / "00000.tar").st_mtime_ns == untouched
    fetched = {p for p, n in server.hits.items() if n != hits.get(p, 0)}
    assert fetched == {f"/img/{i}.jpg" for i in range(10, 20)}  # shard 1's rows only
    assert report["counts"]["input"] == 25 and report["counts"]["kept"] == 25
    assert not list(raw.glob(".*"))


def test_retry_failed_merges_into_the_shards_without_duplicates(server, tmp_path):
    rows = good_rows(server, 14, flaky={3, 11, 12})
    path = write_jsonl(tmp_path / "urls.jsonl", rows)
    server.flaky = True
    try:
        first = ingest(path, tmp_path / "out")
    finally:
        server.flaky = False
    assert first["counts"]["dropped_by_reason"] == {"http_503": 3}
    hits = dict(server.hits)
    retried = ingest(path, tmp_path / "out", "--set", "ingest.retry_failed=true")
    assert retried["counts"]["kept"] == 14 and retried["counts"]["input"] == 14
    assert {p for p, n in server.hits.items() if n != hits.get(p, 0)} == {"/flaky/3.jpg", "/flaky/11.jpg",
                                                                          "/flaky/12.jpg"}
    # The merged shards are the bytes of a run in which nothing failed.
    clean = ingest(path, tmp_path / "clean")
    assert clean["counts"]["kept"] == 14
    assert raw_files(tmp_path / "out") == raw_files(tmp_path / "clean")
    stats = json.loads((tmp_path / "out" / "raw" / "00001_stats.json").read_text())
    assert stats["count"] == 4 and stats["successes"] == 4 and stats["retried"] == 2


def test_laion_filter_takes_a_url_table(server, tmp_path):
    rows = good_rows(server, 16) + [{"url": server.base + "/404", "caption": "gone", "n": -1},
                                    {"url": server.base + "/to-private", "caption": "metadata", "n": -2}]
    path = write_jsonl(tmp_path / "urls.jsonl", rows)
    out = tmp_path / "out"
    report = run.run(["--pipeline", "laion_filter", "--input", path, "--output", str(out),
                      "--set", "ingest.allow_networks=127.0.0.0/8", "--set", "ingest.samples_per_shard=10",
                      "--set", "ingest.image_size=256", "--set", "filters.min_image_size=64"])
    c = report["counts"]
    assert c["input"] == len(rows) == c["kept"] + c["dropped"]
    assert c["dropped_by_reason"]["http_404"] == 1 and c["dropped_by_reason"]["refused_private_address"] == 1
    assert c["dropped_by_stage"]["ingest"] == 2
    assert report["config"]["input"] == path and (out / "raw" / "00001.tar").exists()
    assert c["kept"] > 0 and (out / "shards" / "sizes.json").exists()


def test_laion_filter_ingests_with_the_ingest_defaults():
    from curate import config
    from pipelines import ingest as ingest_pipeline
    from pipelines import laion_filter

    mine = config.load("ingest", ingest_pipeline.SCHEMA)
    theirs = config.load("laion_filter", laion_filter.SCHEMA)
    assert {k: v for k, v in mine.items() if k.startswith("ingest.")} == {
        k: v for k, v in theirs.items() if k.startswith("ingest.")}


def test_rerun_of_a_finished_run_downloads_nothing(server, faulty_run, tmp_path):
    _rows, report, out = faulty_run
    before, hits = raw_files(out), dict(server.hits)
    again = ingest(os.path.join(os.path.dirname(out), "urls.jsonl"), out)
    assert server.hits == hits and raw_files(out) == before
    assert again["counts"] == report["counts"]
    assert not [n for n in os.listdir(os.path.join(out, "raw")) if n.startswith(".")]


def test_killed_run_leaves_no_truncated_shard_and_resumes_to_the_same_bytes(server, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    rows = [{"url": f"{server.base}/img-slow/{i}.jpg", "caption": image_caption(i), "n": i} for i in range(30)]
    path = write_jsonl(tmp_path / "urls.jsonl", rows)
    slow = [*FAST, "--set", "ingest.thread_count=2"]
    ingest(path, tmp_path / "reference", "--set", "ingest.thread_count=2")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "curate.run", "--pipeline", "ingest", "--input", path,
                             "--output", str(out), *slow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill while a shard is being written (its work folder holds a growing tar).
    while proc.poll() is None and time.time() < deadline and not (
            (out / "raw").is_dir() and any(p.name.endswith(".tar") for p in (out / "raw").glob(".*.tmp-*/*"))):
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    for tar in (out / "raw").glob("*.tar"):  # whatever has a final name is complete
        assert len(list(iter_tar_samples(str(tar)))) == 10
    report = ingest(path, out, "--set", "ingest.thread_count=2")
    assert report["counts"]["kept"] == 30
    assert raw_files(out) == raw_files(tmp_path / "reference")
    assert not [n for n in os.listdir(out / "raw") if n.startswith(".")]


def test_two_worker_processes_write_the_same_shards_and_decisions(server, tmp_path):
    path = write_jsonl(tmp_path / "urls.jsonl", good_rows(server, 25))
    ingest(path, tmp_path / "one")
    ingest(path, tmp_path / "two", "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert raw_files(tmp_path / "one") == raw_files(tmp_path / "two")
    decisions = lambda out: {p.name: p.read_bytes() for p in sorted((out / "decisions").iterdir())}  # noqa: E731
    assert decisions(tmp_path / "one") == decisions(tmp_path / "two")


def test_remote_input_and_output_through_fsspec(server, tmp_path):
    """Table and output on fsspec's in-memory filesystem: the same shards as a local run, and a
    rerun there resumes (downloads nothing)."""
    import fsspec

    from curate import fs

    path = write_jsonl(tmp_path / "urls.jsonl", good_rows(server, 14) + [
        {"url": server.base + "/404", "caption": "gone", "n": -1}])
    local = ingest(path, tmp_path / "local")
    memory = fsspec.filesystem("memory")
    memory.pipe("/ingest-in/urls.jsonl", (tmp_path / "urls.jsonl").read_bytes())
    try:
        remote = ingest("memory://ingest-in", "memory://ingest-out")
        assert remote["counts"] == local["counts"]
        raw = "memory://ingest-out/raw"
        got = {fs.basename(p): fs.read_bytes(p) for p in fs.walk_files(raw) if not p.endswith("_stats.json")}
        assert got == raw_files(tmp_path / "local")  # tars and status parquets, byte for byte
        assert sorted(fs.basename(p) for p in fs.walk_files(raw) if p.endswith("_stats.json")) == [
            "00000_stats.json", "00001_stats.json"]
        for name in ("00000.tar", "00001.tar"):
            assert list(iter_tar_samples(f"{raw}/{name}")) == list(
                iter_tar_samples(str(tmp_path / "local" / "raw" / name)))
        # Decision rows name the table by its path; otherwise the same.
        def strip(rows):
            return [{**r, "source_shard": fs.basename(r["source_shard"])} for r in rows]

        for name in ("ingest-00000.parquet", "ingest-00001.parquet"):
            with fs.open(f"memory://ingest-out/decisions/{name}") as f:
                a = pq.read_table(f).to_pylist()
            assert strip(a) == strip(pq.read_table(tmp_path / "local" / "decisions" / name).to_pylist())
            source = a[0]["source_shard"]
            assert source.startswith("memory://") and source.endswith("/ingest-in/urls.jsonl")
        assert not [p for p in fs.walk_files("memory://ingest-out") if ".tmp-" in p or "/.pending" in p]
        hits = dict(server.hits)
        again = ingest("memory://ingest-in", "memory://ingest-out")
        assert server.hits == hits and again["counts"] == local["counts"]
        assert {fs.basename(p): fs.read_bytes(p) for p in fs.walk_files(raw) if not p.endswith("_stats.json")} == got
    finally:
        for root in ("/ingest-in", "/ingest-out"):
            if memory.exists(root):
                memory.rm(root, recursive=True)
