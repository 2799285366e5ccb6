"""ingest as a good citizen: per-host limits, Retry-After, backoff, robots.txt, TDM opt-outs, DNS cache.

Hosts are loopback addresses (127.0.0.2, 127.0.0.3, ... are distinct hosts on Linux), each served
by its own FaultServer (tests/ingest_server.py) whose log gives what each host saw. Timing checks
are upper bounds on rate and concurrency, and lower bounds only on waits the rules impose.
"""
import ipaddress
import json
import os
import socket
from contextlib import ExitStack
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from curate.pipelines import ingest as ingest_pipeline
from ingest_server import FaultServer

from curate import config, run
from curate.ingest import polite
from curate.ingest.shard import retryable, status_reason


def settings(**over):
    """Ingest settings for loopback hosts, ``over`` as ingest.* keys (``per_host_rate=0`` ...)."""
    extra = {"input": "unused", "ingest.allow_networks": "127.0.0.0/8", "ingest.timeout": 2.0,
             **{f"ingest.{k}": v for k, v in over.items()}}
    return ingest_pipeline.settings(config.load("ingest", ingest_pipeline.SCHEMA, extra=extra))


def fetch_all(urls, threads=8, **over):
    """{url: Fetched} for ``urls`` downloaded by one fresh session."""
    got = polite.Session(settings(**over)).fetch_all(urls, threads)
    return {urls[f.index]: f for f in got}


@pytest.fixture
def hosts():
    """Four hosts, 127.0.0.2 to 127.0.0.5, started and stopped with the test."""
    with ExitStack() as stack:
        yield [stack.enter_context(FaultServer(host=f"127.0.0.{i}")) for i in range(2, 6)]


def starts(server, prefix=""):
    return sorted(t0 for path, t0, _t1 in server.log if path.startswith(prefix))


def most_in_window(times, window):
    """The most request starts within any ``window`` seconds."""
    return max((sum(t0 <= t < t0 + window for t in times) for t0 in times), default=0)


# --- pure rules -------------------------------------------------------------------------------

@pytest.mark.parametrize("reason,retried", [
    ("timeout", True), ("connection_error", True), ("http_500", True), ("http_503", True), ("http_429", True),
    ("http_408", True), ("http_404", False), ("http_403", False), ("http_410", False), ("dns_error", False),
    ("refused_private_address", False), ("robots_disallowed", False), ("redirect_error", False),
])
def test_only_transient_failures_are_retried(reason, retried):
    assert polite.transient(reason) is retried


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens():
    assert [polite.backoff_delay(n, 0.5, 3.0, 0.0, 0.99) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert polite.backoff_delay(3, 0.5, 3.0, 0.5, 0.0) == 2.0
    assert polite.backoff_delay(3, 0.5, 3.0, 0.5, 0.999) == pytest.approx(1.001)
    assert polite.backoff_delay(2, 1.0, 60.0, 1.0, 0.5) == 1.0  # full jitter: anywhere in [0, 2)


def test_retry_after_in_seconds_or_as_an_http_date():
    now = 1_800_000_000.0
    assert polite.retry_after_seconds("7", now) == 7.0
    assert polite.retry_after_seconds(" 0 ", now) == 0.0
    date = "Fri, 15 Jan 2027 08:00:10 GMT"  # RFC 9110's IMF-fixdate
    from email.utils import parsedate_to_datetime
    assert polite.retry_after_seconds(date, parsedate_to_datetime(date).timestamp() - 12) == pytest.approx(12)
    assert polite.retry_after_seconds(date, parsedate_to_datetime(date).timestamp() + 5) == 0.0
    for junk in (None, "", "soon", "-3", "1.5"):
        assert polite.retry_after_seconds(junk, now) is None


def test_robots_fetch_outcomes_follow_rfc_9309():
    rules = polite.robots_verdict(200, b"User-agent: *\nDisallow: /img/\nAllow: /img/1.jpg\n", None)
    assert rules.can_fetch("http://h/img/1.jpg", "*") and not rules.can_fetch("http://h/img/2.jpg", "*")
    assert polite.robots_verdict(404, b"", None) is None and polite.robots_verdict(403, b"", None) is None
    for status in (429, 500, 503):
        assert polite.robots_verdict(status, b"", None).startswith(f"robots_unreachable: robots.txt answered {status}")
    assert polite.robots_verdict(None, b"", "timeout: timed out").startswith("robots_unreachable: robots.txt: timeout")
    assert polite.robots_verdict(None, b"", "redirect_error: 302 loop") is None
    refused = polite.robots_verdict(None, b"", "refused_private_address: h resolves to 10.0.0.1 is private")
    assert status_reason("failed_to_download", refused) == "refused_private_address"


def test_robots_longest_match_wins_and_allow_wins_ties():
    """Google's and RFC 9309's rule (urllib.robotparser takes the first match instead)."""
    rules = polite.robots_verdict(200, b"User-agent: *\nDisallow: /a\nAllow: /a\nDisallow: /b/*.jpg$\n"
                                  b"Allow: /b/ok\n\nUser-agent: curatebot\nDisallow: /\n", None)
    assert rules.can_fetch("http://h/a/x.jpg", "*")
    assert not rules.can_fetch("http://h/b/x.jpg", "*") and rules.can_fetch("http://h/b/x.jpg?v=1", "*")
    assert rules.can_fetch("http://h/b/ok.png", "*") and not rules.can_fetch("http://h/a", "curatebot")


def test_tdmrep_rules_first_matching_location_decides():
    body = json.dumps([{"location": "/private/*", "tdm-reservation": 1, "tdm-policy": "https://x/p.json"},
                       {"location": "/*.png$", "tdm-reservation": 1}, {"location": "/", "tdm-reservation": 0}])
    rules = polite.tdmrep_rules(200, body.encode())
    assert polite.tdm_reserved_by_rules(rules, "/private/a.jpg") and polite.tdm_reserved_by_rules(rules, "/x/a.png")
    assert not polite.tdm_reserved_by_rules(rules, "/public/a.jpg")
    assert not polite.tdm_reserved_by_rules(rules, "/x/a.png?s=1")
    for status, junk in ((404, body.encode()), (200, b"{not json"), (200, b'{"location": "/"}'), (None, b"")):
        assert polite.tdmrep_rules(status, junk) == ()


def test_new_reasons_are_counted_and_policy_ones_never_retried():
    for reason in ("robots_disallowed", "robots_unreachable", "opted_out_tdm"):
        assert status_reason("failed_to_download", f"{reason}: because") == reason
    assert not retryable("robots_disallowed") and not retryable("opted_out_tdm")
    assert retryable("robots_unreachable")  # it may answer next time


# --- against loopback hosts -------------------------------------------------------------------

def test_per_host_limits_hold_while_another_host_runs_free(hosts):
    """Host a answers slowly (0.5 s per image) and its rows come first; with 3 threads, at most 2
    connections and 8 requests/s per host, host b's rows are not held behind a's: b is done long
    before a, and neither host ever sees more than its limits."""
    a, b = hosts[0], hosts[1]
    a.hold = 0.5
    urls = [f"{a.base}/hold/{i}.jpg" for i in range(12)] + [f"{b.base}/img/{i}.jpg" for i in range(8)]
    got = fetch_all(urls, threads=3, per_host_connections=2, per_host_rate=8)
    assert all(f.error is None and f.attempts == 1 for f in got.values())
    for server in (a, b):
        assert server.max_active <= 2
        assert most_in_window(starts(server), 1.0) <= 8 + 1  # one start per 1/8 s
    a_end = max(t1 for _p, _t0, t1 in a.log)
    b_end = max(t1 for _p, _t0, t1 in b.log)
    assert b_end < a_end - 1.0  # a needs >= 3 s (12 x 0.5 s over 2 connections)


def test_one_host_limit_is_shared_by_the_shards_of_a_worker(hosts):
    """Two shards downloading at once in one worker process share the host's limits."""
    import threading

    a = hosts[0]
    a.hold = 0.3
    session = polite.Session(settings(per_host_connections=2, per_host_rate=0))
    done = []
    shards = [threading.Thread(target=lambda k=k: done.extend(session.fetch_all(
        [f"{a.base}/hold/{k * 10 + i}.jpg" for i in range(6)], 4))) for k in range(2)]
    for t in shards:
        t.start()
    for t in shards:
        t.join(30)
    assert len(done) == 12 and all(f.error is None for f in done)
    assert a.max_active <= 2
    assert [p for p, _t0, _t1 in a.log].count("/robots.txt") == 1  # fetched once per worker


def test_retry_after_is_waited_out_for_the_whole_host_and_capped(hosts):
    """A 429 with Retry-After: 1 is retried after about a second and succeeds; the host's other
    rows wait as well; a Retry-After of 30 s is cut to ingest.max_retry_after."""
    a, b = hosts[0], hosts[1]
    urls = [f"{a.base}/flap/429/1/1/0.jpg", *(f"{a.base}/img/{i}.jpg" for i in (1, 2, 3)),
            f"{b.base}/flap/503/1/30/4.jpg"]
    got = fetch_all(urls, threads=4, per_host_connections=1, per_host_rate=0, max_retry_after=1.5, retries=2,
                    backoff_base=0.1)
    assert all(f.error is None for f in got.values())
    assert got[urls[0]].attempts == 2 and got[urls[-1]].attempts == 2
    first, second = starts(a, "/flap/")
    refused_at = next(t1 for p, _t0, t1 in a.log if p.startswith("/flap/"))
    assert second - refused_at >= 0.9
    assert all(t >= refused_at + 0.9 for t in starts(a, "/img/"))  # the whole host paused
    b_first, b_second = starts(b, "/flap/")
    assert 1.3 <= b_second - b_first < 10  # 30 s asked, 1.5 s honoured


def test_backoff_schedule_from_the_server_log(hosts):
    """retries=3, backoff 0.3 s doubling, no jitter, deadline 1.5 s: a 500 twice then success is
    tried at 0, 0.3, 0.9 s; a lasting 500 stops at the deadline (the 4th try would start at 2.1 s);
    a 404 is tried once; a 408 is retried."""
    a = hosts[0]
    urls = [f"{a.base}/flap/500/2/-/0.jpg", f"{a.base}/flap/500/99/-/1.jpg", f"{a.base}/404",
            f"{a.base}/flap/408/1/-/2.jpg"]
    got = fetch_all(urls, threads=4, per_host_rate=0, per_host_connections=0, retries=3, backoff_base=0.3,
                    backoff_jitter=0.0, deadline_seconds=1.5)
    assert (got[urls[0]].error, got[urls[0]].attempts) == (None, 3)
    assert got[urls[1]].error.startswith("http_500") and got[urls[1]].attempts == 3
    assert got[urls[2]].error.startswith("http_404") and got[urls[2]].attempts == 1
    assert (got[urls[3]].error, got[urls[3]].attempts) == (None, 2)
    for path in ("/flap/500/2/-/0.jpg", "/flap/500/99/-/1.jpg"):
        tries = [(t0, t1) for p, t0, t1 in a.log if p == path]
        assert len(tries) == 3
        gaps = [tries[i + 1][0] - tries[i][1] for i in range(2)]
        assert 0.28 <= gaps[0] < 0.28 + 1.0 and 0.58 <= gaps[1] < 0.58 + 1.0
    assert a.hits["/404"] == 1


def test_robots_txt_cases_and_no_request_where_it_forbids(hosts):
    """allow/disallow by longest match; 404: all allowed; 503 and a timeout: nothing fetched
    (robots_unreachable); a host whose robots.txt disallows everything gets no other request."""
    rules, missing, broken, closed = hosts
    rules.robots = "User-agent: *\nDisallow: /img/\nAllow: /img/1.jpg\n"
    broken.robots = 503
    closed.robots = "User-agent: *\nDisallow: /\n"
    urls = [f"{rules.base}/img/0.jpg", f"{rules.base}/img/1.jpg", f"{missing.base}/img/2.jpg",
            f"{broken.base}/img/3.jpg", f"{closed.base}/img/4.jpg", f"{closed.base}/img/5.jpg"]
    got = fetch_all(urls, per_host_rate=0)
    reasons = {u: status_reason("failed_to_download", f.error) if f.error else None for u, f in got.items()}
    assert [reasons[u] for u in urls] == ["robots_disallowed", None, None, "robots_unreachable", "robots_disallowed",
                                      "robots_disallowed"]
    assert "robots.txt answered 503" in got[urls[3]].error and got[urls[3]].attempts == 0
    assert rules.hits == {"/img/1.jpg": 1} and broken.hits == {} and closed.hits == {}
    assert [p for p, _t0, _t1 in closed.log] == ["/robots.txt"]  # not even tdmrep.json
    assert [p for p, _t0, _t1 in broken.log] == ["/robots.txt"]
    # A robots.txt that does not answer in time: unreachable too.
    missing.robots, missing.log[:] = "hang", []
    got = fetch_all([f"{missing.base}/img/6.jpg"], timeout=0.5)
    assert got[f"{missing.base}/img/6.jpg"].error.startswith("robots_unreachable: robots.txt: timeout")
    assert missing.hits == {"/img/2.jpg": 1}
    # Evaluated for the configured token: its own group applies.
    rules.robots = "User-agent: *\nDisallow: /\n\nUser-agent: curatebot\nAllow: /\n"
    got = fetch_all([f"{rules.base}/img/7.jpg"], user_agent_token="curatebot")
    assert got[f"{rules.base}/img/7.jpg"].error is None


def test_tdm_reservation_header_and_tdmrep_json(hosts):
    a, b = hosts[0], hosts[1]
    b.tdmrep = json.dumps([{"location": "/img/9*", "tdm-reservation": 1}, {"location": "/", "tdm-reservation": 0}])
    urls = [f"{a.base}/tdm/0.jpg", f"{a.base}/img/1.jpg", f"{b.base}/img/9.jpg", f"{b.base}/img/2.jpg"]
    got = fetch_all(urls, per_host_rate=0)
    assert got[urls[0]].error == "opted_out_tdm: tdm-reservation: 1 (response header)"
    assert got[urls[1]].error is None and got[urls[3]].error is None
    assert got[urls[2]].error == "opted_out_tdm: /.well-known/tdmrep.json reserves /img/9.jpg"
    assert "/img/9.jpg" not in b.hits  # refused before any request
    # ingest.respect_tdmrep=false: neither the header nor the file counts, and the file is not asked for.
    a.log[:] = []
    got = fetch_all(urls[:1], per_host_rate=0, respect_tdmrep=False)
    assert got[urls[0]].error is None and "/.well-known/tdmrep.json" not in [p for p, _t0, _t1 in a.log]


@pytest.fixture
def names(monkeypatch):
    """A resolver stub: NAME.test -> the loopback address in ``map``; counts what was asked."""
    real, stub = socket.getaddrinfo, SimpleNamespace(map={}, asked=[])

    def getaddrinfo(host, port, *args, **kwargs):
        stub.asked.append(host)
        if host in stub.map:
            return real(stub.map[host], port, *args, **kwargs)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return stub


def test_dns_is_resolved_once_per_host_and_the_guard_checks_the_cached_address(hosts, names):
    a = hosts[0]
    port = a.server_address[1]
    names.map.update({"images.test": "127.0.0.2", "gone.test": "127.0.0.2"})
    urls = [f"http://images.test:{port}/img/{i}.jpg" for i in range(5)]
    got = fetch_all(urls, per_host_rate=0)
    assert all(f.error is None for f in got.values()) and names.asked.count("images.test") == 1
    # dns_ttl=0: every connect resolves (robots.txt, tdmrep.json and 5 images)
    names.asked.clear()
    fetch_all(urls, per_host_rate=0, dns_ttl=0)
    assert names.asked.count("images.test") == 7
    # The cached answer is what the guard checks: the same address refused without allow_networks,
    # and no request reaches the host.
    names.asked.clear()
    before = dict(a.hits)
    got = fetch_all([f"http://images.test:{port}/img/{i}.jpg" for i in range(3)], per_host_rate=0, allow_networks="")
    assert {status_reason("failed_to_download", f.error) for f in got.values()} == {"refused_private_address"}
    assert names.asked == ["images.test"] and a.hits == before
    # A name that does not resolve fails once, and is not asked again within the ttl.
    names.asked.clear()
    got = fetch_all([f"http://nowhere.test:{port}/{i}.jpg" for i in range(3)], per_host_rate=0)
    assert {status_reason("failed_to_download", f.error) for f in got.values()} == {"dns_error"}
    assert names.asked == ["nowhere.test"]


def test_ingest_records_attempts_and_groups_by_host(hosts, tmp_path):
    """A whole run: every row's attempts in the shard parquet, failures' attempts in the decisions,
    the new reasons counted; ingest.group_by_host puts one host's rows in one shard, and
    source_index still names each row of the table."""
    a, b = hosts[0], hosts[1]
    a.robots = "User-agent: *\nDisallow: /img/2.jpg\n"
    rows = []
    for i in range(6):
        server = (a, b)[i % 2]
        rows.append({"url": f"{server.base}/img/{i}.jpg", "caption": f"scene {i}"})
    rows += [{"url": f"{b.base}/flap/503/1/-/7.jpg", "caption": "flaky"}, {"url": f"{a.base}/tdm/8.jpg", "caption": "tdm"}]
    path = tmp_path / "urls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = run.run(["--pipeline", "ingest", "--input", str(path), "--output", str(tmp_path / "out"),
                      "--set", "ingest.allow_networks=127.0.0.0/8", "--set", "ingest.samples_per_shard=4",
                      "--set", "ingest.image_size=64", "--set", "ingest.group_by_host=true",
                      "--set", "ingest.backoff_base=0.1", "--set", "ingest.per_host_rate=20"])
    c = report["counts"]
    assert c["input"] == 8 and c["dropped_by_reason"] == {"robots_disallowed": 1, "opted_out_tdm": 1}
    raw = tmp_path / "out" / "raw"
    shards = [pq.read_table(raw / f"0000{k}.parquet").to_pylist() for k in (0, 1)]
    assert [{r["url"].split("/")[2] for r in shard} for shard in shards] == [
        {a.base[7:]}, {b.base[7:]}]  # 127.0.0.2's four rows, then 127.0.0.3's
    by_url = {r["url"]: r for shard in shards for r in shard}
    assert by_url[rows[6]["url"]]["attempts"] == 2 and by_url[rows[6]["url"]]["status"] == "success"
    assert by_url[rows[2]["url"]]["attempts"] == 0 and by_url[rows[0]["url"]]["attempts"] == 1
    decisions = pq.read_table(tmp_path / "out" / "decisions").to_pylist()
    assert sorted(d["source_index"] for d in decisions) == list(range(8))
    for d in decisions:
        assert d["attempts"] == by_url[rows[d["source_index"]]["url"]]["attempts"]
    tdm = next(d for d in decisions if d["reason"] == "opted_out_tdm")
    assert tdm["attempts"] == 1 and os.path.basename(tdm["source_shard"]) == "urls.jsonl"
    assert rows[tdm["source_index"]]["caption"] == "tdm"
