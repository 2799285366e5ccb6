"""Politeness per host for ingest: limits, retries, robots.txt, TDM opt-outs and DNS, per worker process.

Every download of one worker process (all its threads, all the shards it works on in one run)
shares one ``Session``: per host name at most ``per_host_connections`` requests at once and one
request start every ``1 / per_host_rate`` seconds (a token bucket holding one token); a 429 or 503
with Retry-After pauses the host for everyone in the process; each origin's robots.txt and
``/.well-known/tdmrep.json`` are fetched once (through the same guard, limits and size cap); each
host name is resolved once per ``dns_ttl``.

How a shard is downloaded (``Session.fetch_all``): all its rows go into per-host queues, and the
shard's download threads take whichever host may start a request now (round robin over hosts). A
request for a host at its limit waits in that host's queue, holding no thread, so a slow or
saturated host never stalls the others; a retry waits its backoff in a timer heap, also holding no
thread. Results come back in completion order through a bounded queue (backpressure on the
resizing thread); the shard writer orders samples by key, so the output does not depend on it.

Nothing here is shared between worker processes or machines: each process keeps its own limits,
caches and pauses (README "Ingest", "Politeness").
"""
from __future__ import annotations

import dataclasses
import email.utils
import heapq
import json
import queue
import random
import re
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass

from curate.ingest import guard

ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"
# RFC 9309 2.5: crawlers parse at least 500 KiB of a robots.txt; the same cap for tdmrep.json.
SITE_FILE_MAX_BYTES = 512 * 1024


@dataclass(frozen=True)
class Limits:
    """The ``ingest.*`` politeness settings of the same names (pipelines/specs.py holds their
    defaults and meaning; ``from_config`` reads them)."""
    per_host_connections: int  # 0 = no limit
    per_host_rate: float       # request starts per second; 0 = no limit
    retries: int
    backoff_base: float
    backoff_max: float
    backoff_jitter: float
    max_retry_after: float
    respect_robots_txt: bool
    respect_tdmrep: bool
    dns_ttl: float             # 0 = resolve at every connect

    @classmethod
    def from_config(cls, cfg: dict) -> "Limits":
        """Each field from the config key ``ingest.<field>``."""
        return cls(**{f.name: cfg[f"ingest.{f.name}"] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Fetched:
    """One row's download: the body, or the error ('reason: detail'), and how many requests for
    the row's URL were started (0: refused before any, e.g. bad_url, robots_disallowed)."""
    index: int
    body: bytes | None
    error: str | None
    attempts: int


# --- pure rules -------------------------------------------------------------------------------

def transient(reason: str) -> bool:
    """Whether a failure may go away on its own and is retried: timeouts, connection errors, HTTP
    408, 429 and 5xx. Never another 4xx (the answer would be the same), nor a policy refusal or a
    DNS error (answers are cached for ingest.dns_ttl). Common crawler practice (RFC 9110 15.5.9,
    15.5.20 for 408 and 429; 5xx are server-side)."""
    if reason in (guard.TIMEOUT, guard.CONNECTION_ERROR):
        return True
    if reason.startswith("http_") and reason[5:].isdigit():
        code = int(reason[5:])
        return code in (408, 429) or 500 <= code <= 599
    return False


def backoff_delay(retry: int, base: float, cap: float, jitter: float, u: float) -> float:
    """Seconds before retry number ``retry`` (1 = the first retry): exponential backoff
    ``min(cap, base * 2**(retry-1))`` less a random share of up to ``jitter`` of it (``u`` uniform
    in [0, 1)), so that clients failing together do not come back together (AWS Architecture Blog,
    "Exponential Backoff And Jitter"; jitter 1 is its "full jitter", 0 none)."""
    delay = min(cap, base * 2.0 ** (retry - 1))
    return delay * (1.0 - jitter * u)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header as seconds from ``now`` (epoch seconds): delay-seconds or an HTTP-date
    (RFC 9110 10.2.3); a date in the past is 0; anything else is None (ignored)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is not one
        return None
    return max(0.0, when.timestamp() - now)


def robots_verdict(status: int | None, body: bytes, error: str | None):
    """What a robots.txt fetch means, RFC 9309 2.3.1 (and Google's documented handling):
    2xx: its rules; 4xx but 429 ("unavailable"): everything allowed (None); 429, 5xx, a timeout or
    a connection failure ("unreachable"): everything disallowed, as the string that says why; a
    refused address or an unknown host name: that refusal (the images would meet it too). Other
    failures (a redirect loop, a redirect the guard refuses) count as unavailable (RFC 9309 2.3.1.2)."""
    if error is not None:
        reason = error.split(":", 1)[0]
        if reason in (guard.REFUSED_ADDRESS, guard.DNS_ERROR):
            return _Refusal(error)
        if transient(reason):
            return f"{guard.ROBOTS_UNREACHABLE}: robots.txt: {error} (RFC 9309: unreachable, so nothing is fetched)"
        return None
    if 200 <= status < 300:
        from protego import (
            Protego,  # the maintained RFC 9309 parser (longest match, Allow wins ties, * and $)
        )

        return Protego.parse(body.decode("utf-8", errors="replace").lstrip("\ufeff"))
    if status == 429 or status >= 500:
        return f"{guard.ROBOTS_UNREACHABLE}: robots.txt answered {status} (RFC 9309: unreachable, so nothing is fetched)"
    return None


def tdmrep_rules(status: int | None, body: bytes) -> tuple:
    """The rules of a ``/.well-known/tdmrep.json`` (W3C TDM Reservation Protocol, final report
    2024, "TDM File on the Origin Server"): a JSON array of objects with ``location`` (a path
    pattern) and ``tdm-reservation`` (0 or 1) -> ((location, reserved), ...). No file, an error or
    a malformed file: no rules (the protocol's per-response header still applies)."""
    if status is None or not 200 <= status < 300:
        return ()
    try:
        rules = json.loads(body.decode("utf-8", errors="replace").lstrip("\ufeff"))
    except ValueError:
        return ()
    if not isinstance(rules, list):
        return ()
    return tuple((r["location"], str(r.get("tdm-reservation")).strip() == "1") for r in rules
                 if isinstance(r, dict) and isinstance(r.get("location"), str))


def path_matches(pattern: str, path: str) -> bool:
    """robots.txt's path pattern rule (RFC 9309 2.2.3), which TDMRep's ``location`` uses: a prefix
    match where ``*`` matches any characters and a final ``$`` anchors the end."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.match(regex + ("$" if anchored else ""), path) is not None


def tdm_reserved_by_rules(rules: tuple, path: str) -> bool:
    """The first rule whose location matches ``path`` decides (TDMRep: rules are read in order)."""
    for location, reserved in rules:
        if path_matches(location, path):
            return reserved
    return False


class _Refusal(str):
    """A site file whose fetch the guard refused: the rows of that origin end with this error."""


# --- per worker process -----------------------------------------------------------------------

class DnsCache:
    """``guard.resolve`` answers (and failures) kept for ``ttl`` seconds, one resolution per host
    name at a time; the guard checks and connects to exactly the cached addresses."""

    def __init__(self, ttl: float):
        self._ttl, self._lock, self._answers, self._resolving = ttl, threading.Lock(), {}, {}

    def __call__(self, host: str, port: int) -> list:
        with self._lock:
            gate = self._resolving.setdefault(host, threading.Lock())
        with gate:
            hit = self._answers.get(host)
            if hit is None or hit[0] <= time.monotonic():
                try:
                    answer = guard.resolve(host, 0)
                except guard.Refused as refused:
                    answer = refused
                hit = self._answers[host] = (time.monotonic() + self._ttl, answer)
        if isinstance(hit[1], guard.Refused):
            raise guard.Refused(hit[1].reason, str(hit[1]).split(": ", 1)[1])
        return [(f, k, p, n, (addr[0], port, *addr[2:])) for f, k, p, n, addr in hit[1]]


class _Host:
    """Shared limits of one host name: requests running, and when the next may start."""
    __slots__ = ("active", "next_start")

    def __init__(self):
        self.active, self.next_start = 0, 0.0


_UNKNOWN, _FETCHING = object(), object()


class _Origin:
    """robots.txt and tdmrep.json of one scheme://host:port, once known."""
    __slots__ = ("robots", "tdmrep")

    def __init__(self, robots: bool, tdmrep: bool):
        self.robots = _UNKNOWN if robots else None
        self.tdmrep = _UNKNOWN if tdmrep else ()


class Session:
    """Everything one worker process shares between its download threads in one run (see module doc)."""

    def __init__(self, settings):
        self.settings, self.limits = settings, settings.limits
        self.cond = threading.Condition()
        self.hosts: dict[str, _Host] = {}
        self.origins: dict[tuple, _Origin] = {}
        self.dns = DnsCache(self.limits.dns_ttl) if self.limits.dns_ttl > 0 else None
        rate = self.limits.per_host_rate
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.agent = settings.user_agent_token or "*"

    def fetch_all(self, urls: list, threads: int):
        """Download ``urls`` with ``threads`` threads under this session's limits; yields one
        Fetched per URL, in completion order.

        Block and opt-out lists (``settings.lists``) come first: a URL that a URL or domain list names
        is answered at once with the list's reason and 0 attempts, and never queued, so its host sees
        no request for it (nor a robots.txt request, when every URL of the host is listed); a body
        whose digest a hash list names ends as that list's reason, as if it had not been downloaded."""
        lists = self.settings.lists
        if not lists:
            yield from _ShardRun(self, urls, threads).results()
            return
        listed = {i: m for i, url in enumerate(urls) if (m := lists.check_url(url if isinstance(url, str) else None))}
        yield from (Fetched(i, None, f"{m.reason}: {m.detail}", 0) for i, m in listed.items())
        rest = [i for i in range(len(urls)) if i not in listed]
        for got in _ShardRun(self, [urls[i] for i in rest], threads).results():
            found = lists.check_image(got.body) if got.body is not None else None
            yield Fetched(rest[got.index], None if found else got.body,
                          f"{found.reason}: {found.detail}" if found else got.error, got.attempts)


_SESSIONS: dict[str, Session] = {}
_SESSIONS_LOCK = threading.Lock()


def session(run_id: str, settings) -> Session:
    """The Session of run ``run_id`` in this process (created on first use): every DoFn instance
    of one run in one worker process shares it; another run (tests run many in one process) gets
    its own, with fresh caches. The last few are kept."""
    with _SESSIONS_LOCK:
        if run_id not in _SESSIONS:
            while len(_SESSIONS) >= 4:
                del _SESSIONS[next(iter(_SESSIONS))]
            _SESSIONS[run_id] = Session(settings)
        return _SESSIONS[run_id]


class _Job:
    """A row on its way (mutable, internal to _ShardRun; never emitted)."""
    __slots__ = ("index", "url", "host", "origin", "attempts", "deadline", "error", "retry_at")

    def __init__(self, index: int, url: str):
        parts = urllib.parse.urlsplit(url)
        self.index, self.url, self.host = index, url, parts.hostname
        self.origin = (parts.scheme, parts.hostname, parts.port)
        self.attempts, self.deadline, self.error, self.retry_at = 0, None, None, 0.0


class _ShardRun:
    """One shard's rows through the session's per-host queues (see the module doc).

    Structures, all under the session's condition: ``queues`` (host -> rows waiting), ``ready``
    (hosts that may be able to start, round robin), ``timed`` (hosts waiting for their next start
    time), ``blocked`` (hosts at their connection limit or waiting for a site file another thread
    fetches: few, re-checked whenever any request ends), ``delayed`` (rows waiting their backoff)."""

    def __init__(self, session: Session, urls: list, threads: int):
        self.s = session
        self.queues: dict[str, deque] = {}
        self.ready, self.timed, self.blocked, self.delayed = deque(), [], set(), []
        self.placed: set[str] = set()  # hosts in ready, timed or blocked
        self.seq = 0
        self.out = queue.Queue(maxsize=2 * threads)
        self.early: list[Fetched] = []
        self.pending = 0
        for index, url in enumerate(urls):
            try:
                job = _Job(index, guard.check_url(url))
            except guard.Refused as refused:
                self.early.append(Fetched(index, None, guard.error_reason(refused), 0))
                continue
            self.queues.setdefault(job.host, deque()).append(job)
            self.pending += 1
        for host in self.queues:
            self._place(host)
        self.threads = [threading.Thread(target=self._work, daemon=True, name="curate-fetch")
                        for _ in range(min(threads, self.pending))]

    def results(self):
        yield from self.early
        expected = self.pending  # counted before the threads start taking rows off it
        for t in self.threads:
            t.start()
        for _ in range(expected):
            item = self.out.get()
            if isinstance(item, BaseException):
                raise RuntimeError(f"download thread failed: {item!r}") from item
            yield item
        for t in self.threads:
            t.join()

    # --- scheduling (under self.s.cond) ---

    def _place(self, host: str) -> None:
        if host not in self.placed and self.queues[host]:
            self.placed.add(host)
            self.ready.append(host)

    def _later(self, when: float, host: str) -> None:
        self.seq += 1
        heapq.heappush(self.timed, (when, self.seq, host))

    def _due(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            job = heapq.heappop(self.delayed)[2]
            self.queues[job.host].appendleft(job)
            self._place(job.host)
        while self.timed and self.timed[0][0] <= now:
            host = heapq.heappop(self.timed)[2]
            self.ready.append(host)
        conn = self.s.limits.per_host_connections
        for host in list(self.blocked):
            st = self.s.hosts[host]
            origin = self.s.origins[self.queues[host][0].origin] if self.queues[host] else None
            if (not conn or st.active < conn) and not (origin and _FETCHING in (origin.robots, origin.tdmrep)):
                self.blocked.discard(host)
                self.ready.append(host)

    def _take(self):
        """The next action for a download thread, or None when every row has its result."""
        s = self.s
        with s.cond:
            while True:
                if self.pending == 0:
                    return None
                now = time.monotonic()
                self._due(now)
                while self.ready:
                    host = self.ready.popleft()
                    self.placed.discard(host)
                    action = self._start(host, now)
                    if action is not None:
                        return action
                waits = [heap[0][0] for heap in (self.timed, self.delayed) if heap]
                soonest = min(waits) if waits else None
                s.cond.wait(timeout=None if soonest is None else max(0.0, soonest - now) + 0.001)

    def _start(self, host: str, now: float):
        s, q = self.s, self.queues[host]
        if not q:
            return None
        job = q[0]
        origin = s.origins.get(job.origin)
        if origin is None:
            origin = s.origins[job.origin] = _Origin(s.limits.respect_robots_txt, s.limits.respect_tdmrep)
        # robots.txt first, then (for what it allows) tdmrep.json: a host whose robots.txt forbids
        # everything is asked for nothing else.
        site = refusal = None
        for name, check in (("robots", self._robots_refusal), ("tdmrep", self._tdmrep_refusal)):
            state = getattr(origin, name)
            if state is _UNKNOWN:
                site = name
                break
            if state is _FETCHING:
                self._block(host)
                return None
            refusal = check(job, state)
            if refusal is not None:
                break
        if site is None and (refusal is not None or (job.deadline is not None and now >= job.deadline)):
            q.popleft()
            self.pending -= 1
            self._place(host)
            return ("done", Fetched(job.index, None, refusal or job.error, job.attempts))
        st = s.hosts.get(host)
        if st is None:
            st = s.hosts[host] = _Host()
        conn = s.limits.per_host_connections
        if conn and st.active >= conn:
            self._block(host)
            return None
        if st.next_start > now:
            self.placed.add(host)
            self._later(st.next_start, host)
            return None
        st.active += 1
        st.next_start = max(now, st.next_start) + s.interval
        if site is not None:
            setattr(origin, site, _FETCHING)
            self._place(host)  # its next row waits (blocked) until the file is known
            return ("site", host, job.origin, site)
        q.popleft()
        job.attempts += 1
        if job.deadline is None:
            job.deadline = now + s.settings.policy.deadline_seconds
        self._place(host)
        return ("fetch", host, job)

    def _block(self, host: str) -> None:
        self.placed.add(host)
        self.blocked.add(host)

    def _robots_refusal(self, job: _Job, robots) -> str | None:
        """Why the origin's robots.txt verdict forbids ``job``'s URL, or None."""
        if isinstance(robots, str):  # unreachable, or the guard's refusal of the host
            return str(robots)
        if robots is not None and not robots.can_fetch(job.url, self.s.agent):
            return f"{guard.ROBOTS_DISALLOWED}: robots.txt disallows it to user agent {self.s.agent!r}"
        return None

    def _tdmrep_refusal(self, job: _Job, rules) -> str | None:
        """Why the origin's tdmrep.json reserves ``job``'s URL, or None."""
        if isinstance(rules, _Refusal):
            return str(rules)
        path = urllib.parse.urlsplit(job.url).path or "/"
        if tdm_reserved_by_rules(rules, path):
            return f"{guard.OPTED_OUT_TDM}: {TDMREP_PATH} reserves {path}"
        return None

    # --- the work (outside the lock) ---

    def _work(self) -> None:
        try:
            while (action := self._take()) is not None:
                kind = action[0]
                if kind == "done":
                    self.out.put(action[1])
                elif kind == "site":
                    self._site_file(*action[1:])
                else:
                    result = self._fetch(*action[1:])
                    if result is not None:
                        self.out.put(result)
        except BaseException as err:  # noqa: BLE001 - a bug here must reach the shard, not hang it
            self.out.put(err)

    def _site_file(self, host: str, origin_key: tuple, site: str) -> None:
        scheme, name, port = origin_key
        netloc = name if port is None else f"{name}:{port}"
        path = ROBOTS_PATH if site == "robots" else TDMREP_PATH
        s, status, body, error = self.s, None, b"", None
        try:
            status, body = guard.fetch_site_file(f"{scheme}://{netloc}{path}", s.settings.policy, s.settings.timeout,
                                                 s.settings.user_agent_token, SITE_FILE_MAX_BYTES, s.dns)
        except Exception as err:  # noqa: BLE001 - any failure is an outcome the rules below read
            error = guard.error_reason(err)
        if site == "robots":
            verdict = robots_verdict(status, body, error)
        else:
            refused = error is not None and error.split(":", 1)[0] in (guard.REFUSED_ADDRESS, guard.DNS_ERROR)
            verdict = _Refusal(error) if refused else tdmrep_rules(status, body)
        with s.cond:
            setattr(s.origins[origin_key], site, verdict)
            s.hosts[host].active -= 1
            self._place(host)
            s.cond.notify_all()

    def _fetch(self, host: str, job: _Job) -> Fetched | None:
        s = self.s
        cfg = s.settings
        retry_after = None
        try:
            body = guard.fetch(job.url, cfg.policy, cfg.timeout, cfg.user_agent_token,
                               cfg.disallowed_header_directives or None, resolver=s.dns, deadline=job.deadline,
                               respect_tdm=s.limits.respect_tdmrep)
            error = None
        except Exception as err:  # noqa: BLE001 - any failure of one URL is that row's status
            body, error = None, guard.error_reason(err)
            code = getattr(err, "code", None)
            if code in (429, 503):
                retry_after = retry_after_seconds(err.headers.get("Retry-After"), time.time())
        with s.cond:
            now = time.monotonic()
            st = s.hosts[host]
            st.active -= 1
            if retry_after is not None:  # the whole host slows down, for every thread of this process
                retry_after = min(retry_after, s.limits.max_retry_after)
                st.next_start = max(st.next_start, now + retry_after)
            result = None
            if error is None:
                result = Fetched(job.index, body, None, job.attempts)
            else:
                job.error = error
                delay = None
                if transient(error.split(":", 1)[0]) and job.attempts <= s.limits.retries:
                    delay = backoff_delay(job.attempts, s.limits.backoff_base, s.limits.backoff_max,
                                          s.limits.backoff_jitter, random.random())
                    delay = max(delay, retry_after or 0.0)
                if delay is not None and now + delay < job.deadline:
                    self.seq += 1
                    heapq.heappush(self.delayed, (now + delay, self.seq, job))
                else:
                    result = Fetched(job.index, None, error, job.attempts)
            if result is not None:
                self.pending -= 1
            self._place(host)
            s.cond.notify_all()
        return result
