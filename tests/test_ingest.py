"""ingest: URL tables -> raw shards, against a local fault server on 127.0.0.1 (no other network)."""
import gzip
import io
import ipaddress
import json
import os
import re
import socket
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from complete_files import assert_complete
from ingest_server import FAULTS, FaultServer, image_caption, png_header_only

from curate import run
from curate.ingest import guard, table
from curate.ingest.shard import retryable, status_reason
from curate.io import iter_tar_samples

# No per-host rate limit or retries here (all URLs are on one host): tests/test_ingest_polite.py tests those.
FAST = ["--set", "ingest.allow_networks=127.0.0.0/8", "--set", "ingest.timeout=2",
        "--set", "ingest.deadline_seconds=3", "--set", "ingest.image_size=64", "--set", "ingest.thread_count=8",
        "--set", "ingest.samples_per_shard=10", "--set", "ingest.per_host_rate=0",
        "--set", "ingest.per_host_connections=0", "--set", "ingest.retries=0"]


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


def raw_samples(out):
    raw, samples = os.path.join(out, "raw"), {}
    for name in sorted(os.listdir(raw)):
        if name.endswith(".tar"):
            samples.update(iter_tar_samples(os.path.join(raw, name)))
    return samples


@pytest.fixture
def resolver(monkeypatch):
    """DNS for one test: the names in ``names`` resolve to 127.0.0.1, IP literals to themselves,
    any other name fails as unknown, so no test ever asks a real resolver. ``asked``: every name
    the code asked for, in order."""
    real, stub = socket.getaddrinfo, SimpleNamespace(names={"localhost"}, asked=[])

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        stub.asked.append(name)
        if name in stub.names:
            return real("127.0.0.1", port, *args, **kwargs)
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return real(name, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return stub


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
    ("failed_to_download", "refused_credentials: credentials (user:password@) in the URL of host 'h'",
     "refused_credentials"),
    ("failed_to_download", "refused_scheme: redirect to file scheme: file:///etc/passwd", "refused_scheme"),
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


@pytest.mark.parametrize("url,expect", [
    # credentials: refused, never sent nor resolved
    ("http://user:secret@example.test/x.jpg", "refused_credentials"),
    ("https://user@example.test/x.jpg", "refused_credentials"),
    # malformed: bad_url with the detail (CR/LF would inject a header)
    ("http://example.test/x.jpg\r\nX-Injected: yes", "bad_url"),
    ("http://example.test/a\nb.jpg", "bad_url"),
    ("http://example.test/a\x00b.jpg", "bad_url"),
    ("http:///x.jpg", "bad_url"), ("http:/x.jpg", "bad_url"), ("https://:80/x.jpg", "bad_url"),
    (1, "bad_url"), ("1", "bad_url"), (None, "bad_url"), ("   ", "bad_url"), (1.5, "bad_url"),
    ("example.test/x.jpg", "bad_url"), ("example.test:80/x.jpg", "bad_url"),
    ("http://exa mple.test/x.jpg", "bad_url"), ("http://%65xample.test/x.jpg", "bad_url"),
    ("http://example.test:99999/x.jpg", "bad_url"), ("http://example.test:port/x.jpg", "bad_url"),
    ("http://[zz]/x.jpg", "bad_url"), ("http://[::1/x.jpg", "bad_url"),
    ("http://xn--a.test/x.jpg", "http://xn--a.test/x.jpg"),  # ASCII names are not re-validated
    # other schemes
    ("file:///etc/passwd", "refused_scheme"), ("gopher://example.test/", "refused_scheme"),
    ("data:image/png;base64,AAAA", "refused_scheme"), ("FTP://example.test/x.jpg", "refused_scheme"),
    # what is sent: IDNA host, percent-encoded spaces and non-ASCII (UTF-8), no fragment
    ("http://bücher.test/x.jpg", "http://xn--bcher-kva.test/x.jpg"),
    ("HTTP://Bücher.Test:8080/a b/ü.jpg?q=a b#top", "http://xn--bcher-kva.test:8080/a%20b/%C3%BC.jpg?q=a%20b"),
    ("http://faß.test/", "http://xn--fa-hia.test/"),  # IDNA 2008, as browsers (IDNA 2003 gave fass.test)
    ("http://example.test/x%20y.jpg?a=%2F", "http://example.test/x%20y.jpg?a=%2F"),  # escapes kept as they are
    (" http://example.test/x.jpg\n", "http://example.test/x.jpg"),  # surrounding whitespace dropped
    ("http://example.test", "http://example.test/"),
    ("http://[::1]:8080/x.jpg", "http://[::1]:8080/x.jpg"), ("http://127.1/", "http://127.1/"),
])
def test_url_rules(url, expect):
    if expect.startswith("http"):
        assert guard.check_url(url) == expect
        return
    with pytest.raises(guard.Refused) as refused:
        guard.check_url(url)
    assert refused.value.reason == expect and str(refused.value).startswith(expect + ": ")
    assert "secret" not in str(refused.value) and "\n" not in str(refused.value)


def test_credentials_are_never_sent_nor_resolved(resolver):
    for url in ("http://user:secret@127.0.0.1:9/x.jpg", "http://user:secret@example.test/x.jpg"):
        _key, stream, error = guard.download_image(("k", url), 1, None, None)
        assert stream is None and status_reason("failed_to_download", error) == "refused_credentials"
        assert "secret" not in error
    assert resolver.asked == []


def test_a_number_in_the_url_column_is_a_bad_url(tmp_path):
    pq.write_table(pa.table({"url": [1, 2], "caption": ["a", "b"]}), tmp_path / "t.parquet")
    url = table.read_table(str(tmp_path / "t.parquet"), "url", "caption").column("url")[0].as_py()
    _key, stream, error = guard.download_image(("k", url), 1, None, None)
    assert stream is None and error == "bad_url: no scheme: '1'"


@pytest.mark.parametrize("reason", ["refused_scheme", "refused_credentials", "bad_url", "refused_private_address",
                                    "too_large", "wrong_content_type", "opted_out", "decompression_bomb"])
def test_policy_refusals_are_never_retried(reason):
    assert not retryable(reason)


def test_pixel_cap_is_the_configured_one_not_pils(monkeypatch):
    """PIL raises DecompressionBombError above 2 x Image.MAX_IMAGE_PIXELS (about 179M pixels) by
    itself; ingest.max_image_pixels decides instead, above or below that."""
    from PIL import Image

    from curate.ingest.download import PixelLimit

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # PIL's default, restored after
    header = png_header_only(20_000, 10_000)  # declares 200M pixels; nothing that large is allocated
    assert 20_000 * 10_000 > 2 * Image.MAX_IMAGE_PIXELS
    seen = []

    def resizer(stream, blurring_bbox_list=None):
        seen.append(stream.read())
        return b"resized", 64, 32, 20_000, 10_000, None

    assert PixelLimit(resizer, 100_000_000)(io.BytesIO(header))[-1].startswith("decompression_bomb: ")
    assert PixelLimit(resizer, 300_000_000)(io.BytesIO(header)) == (b"resized", 64, 32, 20_000, 10_000, None)
    assert seen == [header]  # handed to the Resizer from the first byte
    # A smaller cap after a larger one in the same process still applies (its own check, on the header).
    assert PixelLimit(resizer, 100_000_000)(io.BytesIO(header))[-1] == (
        "decompression_bomb: 20000x10000 > 100000000 pixels")
    assert PixelLimit(resizer, 2 ** 30)(io.BytesIO(png_header_only(40_000, 30_000)))[-1].startswith(
        "decompression_bomb: ")
    assert len(seen) == 1


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
    (["--input", "/nonexistent/urls.parquet"], "input '/nonexistent/urls.parquet' does not exist"),
    (["--set", "ingest.allow_networks=everything"], "not a network"),
    # OpenCV's decoder refuses more than 2**30 pixels whatever the cap says
    (["--set", "ingest.max_image_pixels=1073741825"], "ingest.max_image_pixels must be an integer >= 1 and <= 1073741824"),
])
def test_errors_are_one_line_before_any_work(tmp_path, capsys, args, expect):
    if "--set" in args:
        args = ["--input", write_jsonl(tmp_path / "t.jsonl", [{"url": "http://x/1.jpg", "caption": "c"}]), *args]
    out = tmp_path / "out"
    assert run.main(["--pipeline", "ingest", "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def bad_table(kind, folder):
    """A table whose contents (not its header) cannot be ingested; returns the --input to give."""
    good = [{"url": f"http://x/{i}.jpg", "caption": f"c {i}"} for i in range(5)]
    if kind == "jsonl_url_changes_type":
        return write_jsonl(folder / "t.jsonl", [*good, {"url": 7, "caption": "c"}])
    if kind == "jsonl_caption_changes_type":
        return write_jsonl(folder / "t.jsonl", [*good, {"url": "http://x/7.jpg", "caption": 1.5}])
    if kind == "csv_not_utf8":
        (folder / "t.csv").write_bytes(b"url,caption\nhttp://x/1.jpg,one\nhttp://x/2.jpg,caf\xe9\n")
        return str(folder / "t.csv")
    if kind == "csv_column_not_utf8":  # pyarrow would read the column as binary: never carried silently
        (folder / "t.csv").write_bytes(b"url,caption,other\nhttp://x/1.jpg,one,caf\xe9\n")
        return str(folder / "t.csv")
    if kind == "jsonl_not_utf8":
        (folder / "t.jsonl").write_bytes(b'{"url": "http://x/1.jpg", "caption": "one"}\n'
                                         b'{"url": "http://x/2.jpg", "caption": "caf\xe9"}\n')
        return str(folder / "t.jsonl")
    if kind == "jsonl_broken_line":
        (folder / "t.jsonl").write_text('{"url": "http://x/1.jpg", "caption": "one"}\n{"url": \n')
        return str(folder / "t.jsonl")
    if kind == "parquet_numeric_caption":  # NaN alone would be a missing caption; 1.5 is not text
        pq.write_table(pa.table({"url": ["http://x/1.jpg", "http://x/2.jpg"],
                                 "caption": pa.array([float("nan"), 1.5])}), folder / "t.parquet")
        return str(folder / "t.parquet")
    if kind == "jsonl_numeric_caption":
        return write_jsonl(folder / "t.jsonl", [{"url": "http://x/1.jpg", "caption": 2},
                                                {"url": "http://x/2.jpg", "caption": 1.5}])
    assert kind == "folder_one_good_one_bad"
    (folder / "tables").mkdir()
    write_jsonl(folder / "tables" / "a.jsonl", good)
    (folder / "tables" / "b.csv").write_bytes(b"url,caption\nhttp://x/1.jpg,caf\xe9\n")
    return str(folder / "tables")


@pytest.mark.parametrize("kind,expect", [
    ("jsonl_url_changes_type", r"t\.jsonl: JSON parse error: Column\(/url\) changed from string to number in row 5"),
    ("jsonl_caption_changes_type", r"t\.jsonl: JSON parse error: Column\(/caption\) changed from string to number"),
    ("csv_not_utf8", r"t\.csv: not UTF-8 text .*re-encode the file as UTF-8"),
    ("csv_column_not_utf8", r"t\.csv: column 'other' is not UTF-8 text"),
    ("jsonl_not_utf8", r"t\.jsonl: not UTF-8 text"),
    ("jsonl_broken_line", r"t\.jsonl: JSON parse error"),
    ("parquet_numeric_caption", r"t\.parquet: caption column 'caption' holds double values, not text \(row 1: 1\.5\)"),
    ("jsonl_numeric_caption", r"t\.jsonl: caption column 'caption' holds double values, not text \(row 0: 2\.0\)"),
    ("folder_one_good_one_bad", r"tables/b\.csv: not UTF-8 text"),
])
@pytest.mark.parametrize("pipeline", ["ingest", "laion_filter"])
def test_table_contents_errors_are_one_line_before_any_work(tmp_path, capsys, kind, expect, pipeline):
    out = tmp_path / "out"
    assert run.main(["--pipeline", pipeline, "--input", bad_table(kind, tmp_path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(expect, err) and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_dry_run_writes_nothing(tmp_path):
    """Issue 14: `ingest --dry_run=True` planned its shards by writing their rows to OUT/raw/.pending.
    DataflowRunner builds the job offline and stops before submitting it; the output stays absent."""
    pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient")
    rows = [{"url": f"http://127.0.0.1:9/img/{i}.jpg", "caption": image_caption(i)} for i in range(12)]
    out = tmp_path / "out"
    result = run.run(["--pipeline", "ingest", "--input", write_jsonl(tmp_path / "urls.jsonl", rows), "--output", str(out),
                      *FAST, "--runner=DataflowRunner", "--project=curate-offline-check", "--region=us-central1",
                      "--temp_location=gs://curate-offline-check/tmp", "--dry_run=True"])
    assert result["dry_run"] and result["state"] == "DONE"
    names = {t.unique_name for t in result["job"].proto_pipeline.components.transforms.values()}
    assert "Ingest/DownloadShard" in names
    assert not out.exists()


def test_planning_leaves_no_pending_rows_when_a_table_fails(tmp_path):
    """A table that turns bad between the check and the planning (or an interrupt while planning)
    leaves no raw/.pending behind."""
    from curate.pipelines import ingest as ingest_pipeline

    from curate import config

    cfg = config.load("ingest", ingest_pipeline.SCHEMA, extra={
        "input": bad_table("folder_one_good_one_bad", tmp_path), "output": str(tmp_path / "out")})
    with pytest.raises(table.TableError, match="not UTF-8"):
        ingest_pipeline.plan(cfg)
    assert not (tmp_path / "out" / "raw" / ".pending").exists()


def test_missing_captions_are_no_caption(tmp_path):
    """NaN or null captions (parquet, jsonl) and empty csv fields are missing captions, not 'nan'."""
    import pandas as pd

    from curate.ingest.table import read_table

    tmp = str(tmp_path)
    frame = pd.DataFrame({"url": ["http://x/1.jpg", "http://x/2.jpg", "http://x/3.jpg"],
                          "caption": ["one", float("nan"), None]})
    frame.to_parquet(os.path.join(tmp, "t.parquet"))
    frame.to_csv(os.path.join(tmp, "t.csv"), index=False)
    pq.write_table(pa.table({"url": ["http://x/1.jpg", "http://x/2.jpg"],  # a float column holding only NaN
                             "caption": pa.array([float("nan"), None], pa.float64())}), os.path.join(tmp, "n.parquet"))
    write_jsonl(os.path.join(tmp, "t.jsonl"), [{"url": "http://x/1.jpg", "caption": "one"},
                                              {"url": "http://x/2.jpg", "caption": None}, {"url": "http://x/3.jpg"}])
    for name in ("t.parquet", "t.csv", "t.jsonl"):
        assert read_table(os.path.join(tmp, name), "url", "caption").column("caption").to_pylist() == [
            "one", None, None], name
    assert read_table(os.path.join(tmp, "n.parquet"), "url", "caption").column("caption").to_pylist() == [None, None]
    assert read_table(os.path.join(tmp, "n.parquet"), "url", "caption").column("caption").type == pa.string()


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
    from curate.pipelines import ingest as ingest_pipeline
    from curate.pipelines import laion_filter

    from curate import config

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
    assert_complete(out)  # and every parquet, json and tar under a final name reads whole
    report = ingest(path, out, "--set", "ingest.thread_count=2")
    assert report["counts"]["kept"] == 30
    assert raw_files(out) == raw_files(tmp_path / "reference")
    assert not [n for n in os.listdir(out / "raw") if n.startswith(".")]


def test_two_worker_processes_write_the_same_shards_and_decisions(server, tmp_path):
    path = write_jsonl(tmp_path / "urls.jsonl", good_rows(server, 25))
    ingest(path, tmp_path / "one")
    ingest(path, tmp_path / "two", "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert raw_files(tmp_path / "one") == raw_files(tmp_path / "two")
    decisions = lambda out: {p.name: p.read_bytes() for p in sorted((out / "decisions").iterdir())}
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


def test_rows_with_missing_captions_download_with_an_empty_caption(server, tmp_path):
    """A NaN caption (pandas' missing value) in parquet and csv: the row downloads, its sample gets
    an empty KEY.txt as img2dataset writes it, and caption is null in the parquet and KEY.json."""
    import pandas as pd

    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame({"url": [f"{server.base}/img/{i}.jpg" for i in (0, 1)], "caption": ["one", float("nan")]}).to_parquet(
        tables / "a.parquet")
    pd.DataFrame({"url": [f"{server.base}/img/{i}.jpg" for i in (2, 3)], "caption": [float("nan"), "three"]}).to_csv(
        tables / "b.csv", index=False)
    report = ingest(tables, tmp_path / "out")
    assert report["counts"]["input"] == report["counts"]["kept"] == 4
    rows = {r["url"].rsplit("/", 1)[1]: r for r in raw_rows(tmp_path / "out")}
    assert [rows[f"{i}.jpg"]["caption"] for i in range(4)] == ["one", None, None, "three"]
    samples = raw_samples(tmp_path / "out")
    for i, caption in enumerate(["one", None, None, "three"]):
        sample = samples[rows[f"{i}.jpg"]["key"]]
        assert sample["txt"] == (caption or "").encode() and json.loads(sample["json"])["caption"] == caption


def test_odd_urls_end_as_their_reasons(server, resolver, tmp_path):
    """Credentials, IDN host names in both forms, spaces, CR/LF, no host, no scheme (resolver stub:
    the .test names are 127.0.0.1; nothing else is resolved)."""
    resolver.names.add("xn--bcher-kva.test")
    port = server.server_address[1]
    cases = [
        (f"http://user:secret@127.0.0.1:{port}/img/20.jpg", "refused_credentials"),
        (f"http://xn--bcher-kva.test:{port}/img/21.jpg", None),
        (f"http://bücher.test:{port}/img/22.jpg", None),
        (f"http://BÜCHER.test:{port}/img/23.jpg", None),
        (f"http://127.0.0.1:{port}/img/24.jpg?note=a b", None),
        ("http:///img/25.jpg", "bad_url"),
        (f"http://127.0.0.1:{port}/img/26.jpg\r\nX-Injected: yes", "bad_url"),
        (f"127.0.0.1:{port}/img/27.jpg", "bad_url"),
        (f"http://ünknown.test:{port}/img/28.jpg", "dns_error"),
    ]
    path = write_jsonl(tmp_path / "urls.jsonl", [{"url": u, "caption": f"case {i}"} for i, (u, _) in enumerate(cases)])
    before = dict(server.hits)
    ingest(path, tmp_path / "out")
    got = {r["url"]: r for r in raw_rows(tmp_path / "out")}
    assert {u: got[u]["reason"] for u, _ in cases} == dict(cases)
    fetched = {p for p, n in server.hits.items() if n != before.get(p, 0)}
    assert fetched == {f"/img/{i}.jpg" for i in (21, 22, 23, 24)}
    # Host names reach the resolver IDNA-encoded; credentials never do.
    assert resolver.asked and all(name.isascii() and "@" not in name for name in resolver.asked)
    assert "xn--bcher-kva.test" in resolver.asked and "xn--nknown-2ya.test" in resolver.asked
    assert not any("secret" in (r["error_message"] or "") for r in got.values())


def test_a_host_name_resolving_to_a_private_address_is_refused(server, resolver, tmp_path):
    """The guard checks the address a name resolves to, at connect time: internal.test -> 127.0.0.1
    with ingest.allow_networks empty is refused, and no request reaches the server."""
    resolver.names.add("internal.test")
    port = server.server_address[1]
    urls = [f"http://internal.test:{port}/img/0.jpg", f"http://internal.test:{port}/redirect"]
    path = write_jsonl(tmp_path / "urls.jsonl", [{"url": u, "caption": "c"} for u in urls])
    before = dict(server.hits)
    report = ingest(path, tmp_path / "out", "--set", "ingest.allow_networks=")
    assert report["counts"]["dropped_by_reason"] == {"refused_private_address": 2}
    assert server.hits == before
    assert all("127.0.0.1 is loopback" in r["error_message"] for r in raw_rows(tmp_path / "out"))
    assert resolver.asked.count("internal.test") == 1  # resolved once, cached for ingest.dns_ttl


def test_proxy_environment_variables_are_ignored(server, resolver, monkeypatch):
    """With HTTP_PROXY and the like pointing at a recording server, guarded requests still go
    straight to their host (a proxy would resolve the target where the guard cannot check it)."""
    import urllib.error
    import urllib.request

    resolver.names.add("images.test")
    port = server.server_address[1]
    with FaultServer() as proxy:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(var, proxy.base)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        # Control: urllib's default opener does send it to the proxy.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.build_opener().open(f"http://images.test:{port}/img/7.jpg", timeout=2)
        assert proxy.hits == {f"http://images.test:{port}/img/7.jpg": 1}
        proxy.hits.clear()
        policy = guard.Policy(allow_networks=guard.parse_networks("127.0.0.0/8"))
        before = server.hits.get("/img/7.jpg", 0)
        assert guard.fetch(f"http://images.test:{port}/img/7.jpg", policy, 2) == server.image(7)
        assert guard.fetch(f"{server.base}/redirect", policy, 2) == server.image(0)
        assert proxy.hits == {} and server.hits["/img/7.jpg"] == before + 1


def test_readme_lists_every_ingest_reason():
    """The README's ingest reason table names every reason the ingest code can write, and no other."""
    from curate.ingest import shard

    with open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Ingest: URL tables to raw shards", 1)[1].split("\n## ", 1)[0]
    lines = section.split("| reason | cause |", 1)[1].split("\n\n", 1)[0].splitlines()
    listed = set(re.findall(r"`([a-z0-9_]+)`", " ".join(line.split("|")[1] for line in lines if line.startswith("| `"))))
    written = set(guard.REASONS) | set(shard.RESIZE_REASONS.values()) | {
        shard.DECOMPRESSION_BOMB, shard.HASH_MISMATCH, shard.RESIZE_ERROR}
    assert written - listed == set()
    assert {r for r in listed - written if not re.fullmatch(r"http_\d+", r)} == set()
