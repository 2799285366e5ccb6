"""What the downloader may fetch: http(s) only, public addresses only, bounded bytes and time.

img2dataset opens any URL with urllib (file://, ftp:// and intranet hosts included) and reads the
whole body, so a URL list can point it at cloud metadata endpoints or a never-ending response.
This module is the one place every request goes through. The address check runs inside the
socket connect of every hop (redirects open new connections), on the addresses it actually
connects to, so a DNS answer that changes between check and connect cannot slip through.
Each refusal raises ``Refused`` with its own reason, recorded as the row's status.

Every URL, the table's and each redirect target alike, is checked and normalised by ``check_url``
before a request is built: http(s) only, no credentials, host names IDNA-encoded, spaces and
non-ASCII characters of path and query percent-encoded as browsers send them, control characters
refused. Proxy environment variables (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY ...) are ignored: through a
proxy the target's address would be resolved by the proxy, out of the guard's sight.
"""
from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

# Reasons recorded in the shard parquet (``reason`` column, and the prefix of ``error_message``).
REFUSED_SCHEME = "refused_scheme"
REFUSED_ADDRESS = "refused_private_address"
REFUSED_CREDENTIALS = "refused_credentials"
TOO_LARGE = "too_large"
WRONG_CONTENT_TYPE = "wrong_content_type"
OPTED_OUT = "opted_out"
OPTED_OUT_TDM = "opted_out_tdm"          # TDM Reservation Protocol: header or /.well-known/tdmrep.json
ROBOTS_DISALLOWED = "robots_disallowed"  # the host's robots.txt forbids the URL to the user agent token
ROBOTS_UNREACHABLE = "robots_unreachable"  # robots.txt answered 429/5xx or not at all: read as disallowing all
TIMEOUT = "timeout"
DNS_ERROR = "dns_error"
CONNECTION_ERROR = "connection_error"
BAD_URL = "bad_url"
REDIRECT_ERROR = "redirect_error"
DOWNLOAD_ERROR = "download_error"
REASONS = frozenset({REFUSED_SCHEME, REFUSED_ADDRESS, REFUSED_CREDENTIALS, TOO_LARGE, WRONG_CONTENT_TYPE, OPTED_OUT,
                     OPTED_OUT_TDM, ROBOTS_DISALLOWED, ROBOTS_UNREACHABLE, TIMEOUT, DNS_ERROR, CONNECTION_ERROR,
                     BAD_URL, REDIRECT_ERROR, DOWNLOAD_ERROR})  # plus http_<code>
# What a retry cannot change: the same URL is refused again by the same policy (an unreachable
# robots.txt may answer next time: robots_unreachable is retried by ingest.retry_failed).
POLICY_REASONS = frozenset({REFUSED_SCHEME, REFUSED_ADDRESS, REFUSED_CREDENTIALS, TOO_LARGE, WRONG_CONTENT_TYPE,
                            OPTED_OUT, OPTED_OUT_TDM, ROBOTS_DISALLOWED, BAD_URL})

ALLOWED_SCHEMES = ("http", "https")
# Images are also served as generic binary by many CDNs; anything else (text/html ...) is an error page.
IMAGE_CONTENT_TYPES = ("application/octet-stream", "binary/octet-stream")
MAX_REDIRECTS = 5
# Printable ASCII but the space: what stays as it is in a path or query (``%`` included, so escapes
# already there are kept); spaces and non-ASCII characters are percent-encoded (UTF-8), as browsers do.
_URL_SAFE = "".join(map(chr, range(0x21, 0x7F)))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_NAME = re.compile(r"[a-z0-9._-]+")  # after IDNA encoding (underscores occur in real host names)
# img2dataset's browser-like agent string, with its opt-in token format.
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


class Refused(Exception):
    """A URL this policy does not fetch; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Policy:
    """Limits applied to every request. ``allow_networks``: CIDRs allowed even though not public."""
    max_bytes: int = 20_000_000
    deadline_seconds: float = 60.0
    allow_networks: tuple = ()
    check_content_type: bool = True

    @classmethod
    def from_config(cls, max_bytes: int, deadline_seconds: float, allow_networks: str, check_content_type: bool):
        return cls(max_bytes, deadline_seconds, parse_networks(allow_networks), check_content_type)


def parse_networks(spec: str | None) -> tuple:
    """'127.0.0.0/8, 10.1.0.0/16' -> networks; raises ValueError naming the bad entry."""
    nets = []
    for item in (spec or "").split(","):
        if item.strip():
            try:
                nets.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError as e:
                raise ValueError(f"not a network (CIDR): {item.strip()!r}: {e}") from None
    return tuple(nets)


def _ascii_host(host: str) -> str:
    """A host name as DNS and the Host header carry it: IDNA 2008 with UTS #46 mapping (what browsers
    send: ``bücher.example`` -> ``xn--bcher-kva.example``); the ``idna`` package when installed, else
    Python's IDNA 2003 codec (which differs only for a few characters such as ß)."""
    if host.isascii():
        return host
    try:
        import idna
    except ImportError:  # pragma: no cover - idna ships with requests, which the stack installs
        idna = None
    try:
        if idna is not None:
            return idna.encode(host, uts46=True).decode("ascii").lower()
        return host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError) as e:  # idna.IDNAError is a UnicodeError
        raise Refused(BAD_URL, f"host {host!r} is not a valid internationalised name: {e}") from None


def check_url(url, redirect: bool = False) -> str:
    """``url`` as it will be requested, or ``Refused``. ``redirect``: a redirect's target (the
    reasons are the same; the detail says so).

    Rules, in order: a non-empty string (surrounding whitespace removed); no control character
    (CR/LF would inject headers; browsers silently drop some, we refuse them all): ``bad_url``; a
    scheme, and it is http or https: ``bad_url`` / ``refused_scheme``; a host: ``bad_url``; no
    ``user:password@`` (never sent, nor resolved): ``refused_credentials``; a valid host and port:
    ``bad_url``. The host is IDNA-encoded, path and query percent-encoded where browsers do it, the
    fragment dropped (never sent).
    """
    what = "redirect to " if redirect else ""
    if not isinstance(url, str) or not url.strip():
        raise Refused(BAD_URL, f"{what}not a URL: {url!r}"[:200])
    url = url.strip(" \t\r\n\f\v")
    if _CONTROL.search(url):
        raise Refused(BAD_URL, f"{what}control character in URL: {url[:200]!r}")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:
        raise Refused(BAD_URL, f"{what}{e}: {url[:200]!r}") from None
    scheme = parts.scheme.lower()
    if not scheme or ("." in scheme and not parts.netloc):  # example.com:80/x.jpg: a host, not a scheme
        raise Refused(BAD_URL, f"{what}no scheme: {url[:200]!r}")
    if scheme not in ALLOWED_SCHEMES:
        raise Refused(REFUSED_SCHEME, f"{what}{scheme} scheme: {url[:200]}")
    if "@" in parts.netloc:
        # The detail names neither the user nor the password (the row's url column holds the URL).
        raise Refused(REFUSED_CREDENTIALS, f"{what}credentials (user:password@) in the URL of host "
                                           f"{parts.netloc.rsplit('@', 1)[1][:100]!r}")
    if not parts.hostname:
        raise Refused(BAD_URL, f"{what}no host: {url[:200]!r}")
    try:
        port = parts.port
    except ValueError as e:
        raise Refused(BAD_URL, f"{what}{e}: {url[:200]!r}") from None
    if "[" in parts.netloc:  # an IPv6 literal (urlsplit checked the brackets)
        try:
            ipaddress.ip_address(parts.hostname.split("%", 1)[0])
        except ValueError:
            raise Refused(BAD_URL, f"{what}not an IPv6 address: {parts.hostname!r}") from None
        host = f"[{parts.hostname}]"
    else:
        host = _ascii_host(parts.hostname)
        if not _HOST_NAME.fullmatch(host):
            raise Refused(BAD_URL, f"{what}invalid host name: {parts.hostname[:100]!r}")
    netloc = host if port is None else f"{host}:{port}"
    path = urllib.parse.quote(parts.path, safe=_URL_SAFE) or "/"
    query = urllib.parse.quote(parts.query, safe=_URL_SAFE)
    return urllib.parse.urlunsplit((scheme, netloc, path, query, ""))


def address_problem(ip: str, allow_networks: tuple = ()) -> str | None:
    """Why ``ip`` may not be contacted (loopback, private, link-local, multicast ...), or None.

    Rule: only globally routable unicast addresses (IANA special-purpose registries, as Python's
    ``ipaddress`` encodes them), unless inside an explicitly allowed network.
    """
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    addr = getattr(addr, "ipv4_mapped", None) or addr  # ::ffff:10.0.0.1 is 10.0.0.1
    if any(addr in net for net in allow_networks):
        return None
    for name in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(addr, f"is_{name}"):
            return f"{addr} is {name.replace('_', '-')}"
    if not addr.is_global:
        return f"{addr} is not a public address"
    return None


def resolve(host: str, port: int) -> list:
    """``socket.getaddrinfo`` for a TCP connection; an unknown name raises Refused(dns_error)."""
    try:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Refused(DNS_ERROR, f"{host}: {e.strerror}") from None


def _guarded_create_connection(policy: Policy, resolver, address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT,
                               source_address=None, **_):
    """socket.create_connection that connects only to the resolved addresses the policy allows.

    ``resolver(host, port)``: getaddrinfo's answer (``resolve``, or a per-worker cache of it,
    curate/ingest/polite.py); the addresses it returns are the ones checked and connected to."""
    host, port = address
    infos = (resolver or resolve)(host, port)
    problems, last_error = [], None
    for family, kind, proto, _name, sockaddr in infos:
        problem = address_problem(sockaddr[0], policy.allow_networks)
        if problem:
            problems.append(problem)
            continue
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last_error = e
    if last_error is not None:
        raise last_error
    raise Refused(REFUSED_ADDRESS, f"{host} resolves to {'; '.join(problems)}")


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, policy: Policy, resolver=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, policy, resolver)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, policy: Policy, resolver=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_create_connection, policy, resolver)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: Policy, resolver=None):
        super().__init__()
        self._policy, self._resolver = policy, resolver

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, policy=self._policy, resolver=self._resolver), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: Policy, resolver=None):
        super().__init__()
        self._policy, self._resolver = policy, resolver

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, policy=self._policy, resolver=self._resolver), req,
                            context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, with every target through ``check_url`` first (urllib itself turns a
    file:// or gopher:// target into an HTTPError, which would read as a redirect_error)."""
    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):
        name = next((n for n in ("location", "uri") if n in headers), None)
        if name is not None:
            target = headers[name]
            try:  # http.client decodes headers as ISO-8859-1: recover a UTF-8 target's characters
                target = target.encode("iso-8859-1").decode("utf-8")
            except UnicodeError:
                pass
            try:
                target = check_url(urllib.parse.urljoin(req.full_url, target), redirect=True)
            except Refused:
                fp.close()
                raise
            del headers[name]
            headers[name] = target  # plain ASCII now: urllib's own quoting leaves it as it is
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


@functools.lru_cache(maxsize=8)
def opener(policy: Policy, resolver=None) -> urllib.request.OpenerDirector:
    """urllib opener with only http(s), guarded connects and re-checked redirects; no proxies, not
    even from HTTP_PROXY and the like (no ProxyHandler: the guard checks the address it connects
    to, which with a proxy would be the proxy's). ``resolver``: see _guarded_create_connection."""
    director = urllib.request.OpenerDirector()
    for handler in (_HTTPHandler(policy, resolver), _HTTPSHandler(policy, resolver), _RedirectHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        director.add_handler(handler)
    return director


def user_agent(token: str | None) -> str:
    return USER_AGENT + (f" (compatible; {token}; +https://github.com/rom1504/img2dataset)" if token else "")


def tdm_reserved(headers) -> bool:
    """Whether a response reserves text and data mining rights: a ``tdm-reservation`` header of 1
    (W3C TDM Reservation Protocol, final report 2024, "TDM Reservation in HTTP headers"; 0 or no
    header: not reserved)."""
    return any(v.strip() == "1" for v in headers.get_all("tdm-reservation", []))


def fetch(url, policy: Policy, timeout: float, user_agent_token: str | None = None,
          disallowed_header_directives=None, *, resolver=None, deadline: float | None = None,
          respect_tdm: bool = False) -> bytes:
    """The body of ``url`` under ``policy``; raises Refused or the network error (urllib's).

    ``resolver``: the DNS answers to connect to (see _guarded_create_connection); ``deadline``: a
    time.monotonic() by which the whole body must have arrived (default: policy.deadline_seconds
    from now); ``respect_tdm``: a ``tdm-reservation: 1`` header refuses the response (opted_out_tdm).
    """
    url = check_url(url)
    from img2dataset.downloader import (
        is_disallowed,  # imported here: img2dataset takes seconds to import
    )

    request = urllib.request.Request(url, headers={"User-Agent": user_agent(user_agent_token)})
    start = time.monotonic()
    until = start + policy.deadline_seconds if deadline is None else deadline
    with opener(policy, resolver).open(request, timeout=max(0.1, min(timeout, until - start))) as response:
        # img2dataset's own X-Robots-Tag parser: same directives, same user-agent token rule.
        if disallowed_header_directives and is_disallowed(response.headers, user_agent_token,
                                                          disallowed_header_directives):
            raise Refused(OPTED_OUT, f"X-Robots-Tag: {', '.join(response.headers.get_all('X-Robots-Tag', []))}")
        if respect_tdm and tdm_reserved(response.headers):
            raise Refused(OPTED_OUT_TDM, "tdm-reservation: 1 (response header)")
        ctype = (response.headers.get_content_type() if response.headers.get("Content-Type") else "")
        if policy.check_content_type and ctype and not (ctype.startswith("image/") or ctype in IMAGE_CONTENT_TYPES):
            raise Refused(WRONG_CONTENT_TYPE, ctype)
        length = response.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > policy.max_bytes:
            raise Refused(TOO_LARGE, f"Content-Length {int(length)} > {policy.max_bytes} bytes")
        body = io.BytesIO()
        while True:
            # read1: whatever has arrived (read(n) would wait for all n bytes, past any deadline)
            chunk = response.read1(min(1 << 16, policy.max_bytes + 1 - body.tell()) or 1)
            if not chunk:
                break
            body.write(chunk)
            if body.tell() > policy.max_bytes:
                raise Refused(TOO_LARGE, f"more than {policy.max_bytes} bytes")
            if time.monotonic() > until:
                raise Refused(TIMEOUT, f"response not complete after {until - start:.3g}s")
    return body.getvalue()


def fetch_site_file(url: str, policy: Policy, timeout: float, user_agent_token: str | None, max_bytes: int,
                    resolver=None) -> tuple[int, bytes]:
    """(status, first ``max_bytes`` of the body) of a site-wide file (robots.txt, tdmrep.json):
    the same guard, redirects and deadline as an image, no Content-Type or X-Robots-Tag check; a
    longer body is cut (RFC 9309 2.5: a crawler parses at least 500 KiB, and may ignore the rest).
    An HTTP error status is returned, not raised; other failures raise as ``fetch`` does."""
    request = urllib.request.Request(check_url(url), headers={"User-Agent": user_agent(user_agent_token)})
    start = time.monotonic()
    try:
        response = opener(policy, resolver).open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if 300 <= err.code < 400:
            raise
        err.close()
        return err.code, b""
    with response:
        body = io.BytesIO()
        while body.tell() < max_bytes:
            chunk = response.read1(min(1 << 16, max_bytes - body.tell()))
            if not chunk:
                break
            body.write(chunk)
            if time.monotonic() - start > policy.deadline_seconds:
                raise Refused(TIMEOUT, f"response not complete after {policy.deadline_seconds:g}s")
        return response.status, body.getvalue()


def error_reason(err: BaseException) -> str:
    """'reason: detail' for a failed fetch (one line); the reason comes first so it can be counted."""
    return " ".join(_error_reason(err).splitlines()[0].split())


def _error_reason(err: BaseException) -> str:
    if isinstance(err, Refused):
        return str(err)
    if isinstance(err, urllib.error.HTTPError):
        if 300 <= err.code < 400:  # urllib gives up on loops and on more than MAX_REDIRECTS hops
            return f"{REDIRECT_ERROR}: {err.code} {err.reason}"
        return f"http_{err.code}: {err.reason}"
    inner = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(inner, Refused):
        return str(inner)
    if isinstance(inner, (socket.timeout, TimeoutError)) or "timed out" in str(inner):
        return f"{TIMEOUT}: {inner}"
    if isinstance(inner, (ConnectionError, OSError, http.client.HTTPException)):
        return f"{CONNECTION_ERROR}: {type(inner).__name__}: {inner}"
    return f"{DOWNLOAD_ERROR}: {type(err).__name__}: {err}"


# Set by install(); img2dataset's Downloader calls download_image from its worker threads.
_POLICY = Policy()


def download_image(row, timeout, user_agent_token, disallowed_header_directives):
    """img2dataset's ``download_image`` contract ((key, url) -> (key, stream | None, error)),
    fetching through the guard."""
    key, url = row
    try:
        return key, io.BytesIO(fetch(url, _POLICY, timeout, user_agent_token, disallowed_header_directives)), None
    except Exception as err:  # noqa: BLE001 - any failure of one URL is that row's status, never the shard's
        return key, None, error_reason(err)


def install(policy: Policy) -> None:
    """Route img2dataset's downloads through the guard in this process.

    Its Downloader looks ``download_image`` up in its module on every call (no hook argument), so
    the module attribute is the hook. One policy per process: a pipeline's workers share one config.
    """
    import img2dataset.downloader

    global _POLICY
    _POLICY = policy
    img2dataset.downloader.download_image = download_image
