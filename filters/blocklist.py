"""Block lists and opt-out lists: samples named by a list file are dropped, with the file that named them.

A list is a text file with one entry per line; blank lines and lines whose first non-blank character
is ``#`` are skipped. Each file has one kind (``KINDS``), which says what its entries are and where
the check is first possible:

- ``md5``, ``sha1``, ``sha256``: digests of the image bytes, as hex (either case). Only the first
  whitespace-separated token of a line is read, so ``md5sum``/``sha256sum`` output is a valid list.
  MD5 is what published hash sets and img2dataset's ``md5`` column use. Checked where the bytes (or
  img2dataset's column) are first seen: ingest and read.
- ``phash``: the 64-bit perceptual hash of ``filters/phash.py``, 16 hex digits (first token of the
  line), matched within a Hamming radius (``ListSpec.max_distance``, default
  ``DEFAULT_PHASH_DISTANCE``). Checked once the hash is computed (decode).
- ``url``: exact image URLs, compared after ``normalise_url``. Checked in ingest, before any request.
- ``domain``: host names; an entry blocks the host and every subdomain (``example.com`` blocks
  ``img.example.com``, not ``notexample.com``), compared after ``normalise_host``. Lines may be
  written ``*.example.com``, ``.example.com`` or ``example.com.``. Checked with ``url``.
- ``term``: caption terms, matched by ``filters/metadata.py``'s ``Metadata`` (Aho-Corasick over all
  terms at once; NFKC + casefold; whole words where the script is written with spaces, substrings in
  Han, kana, Thai, ... ; Korean particles and Arabic proclitics per its docstring). A term list
  serves one caption language (``ListSpec.language``; "pt" serves "pt-BR" captions), or every
  caption whatever its language when it names none (then without the Korean and Arabic affix rules,
  which need the language). Checked on captions (decode).

Two purposes share these kinds: safety block lists (reasons ``blocklisted_url``, ``blocklisted_domain``,
``blocklisted_hash``, ``blocklisted_phash``, ``blocklisted_term``) and consent opt-out lists (reason
``opted_out_list`` for every kind). Every match names the list file, so a report can count matches per
file next to the file's sha256 and entry count (``Blocklists.describe``).

Memory: hash, URL and domain lists become one sorted numpy array of fixed-width digests (URLs and
domains as 16-byte BLAKE2b digests of their normalised form: a false match needs a 128-bit
collision), searched with ``np.searchsorted``; phash lists one array of uint64. The array is cached
as ``.npy`` under ``cache_dir()`` (``$CURATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/curate``, else
``~/.cache/curate``; subfolder ``blocklists``), named by the list file's sha256, and memory-mapped on
later loads, so worker processes on one machine share one copy in the page cache. Where the cache
cannot be written the array stays in memory. Loading reads the whole file once to hash it. Within a
process a list is loaded once (``load_list`` caches by spec and file size/mtime), and ``Blocklists``
pickles as its specs, so a Beam DoFn can hold one and each worker loads the lists on first use.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from curate.filters.metadata import Metadata, read_entries

from curate import fs

HASH_KINDS = {"md5": 16, "sha1": 20, "sha256": 32}  # kind -> digest bytes
PHASH, URL, DOMAIN, TERM = "phash", "url", "domain", "term"
KINDS = (*HASH_KINDS, PHASH, URL, DOMAIN, TERM)

SAFETY, CONSENT = "safety", "consent"
PURPOSES = (SAFETY, CONSENT)

# Reasons are data: the decisions table and the report count them by these exact strings.
BLOCKLISTED_URL = "blocklisted_url"
BLOCKLISTED_DOMAIN = "blocklisted_domain"
BLOCKLISTED_HASH = "blocklisted_hash"
BLOCKLISTED_PHASH = "blocklisted_phash"
BLOCKLISTED_TERM = "blocklisted_term"
OPTED_OUT_LIST = "opted_out_list"
_SAFETY_REASONS = {**dict.fromkeys(HASH_KINDS, BLOCKLISTED_HASH), PHASH: BLOCKLISTED_PHASH,
                   URL: BLOCKLISTED_URL, DOMAIN: BLOCKLISTED_DOMAIN, TERM: BLOCKLISTED_TERM}

# A random 64-bit hash lies within 8 bits of a given one with probability sum_{k<=8} C(64,k) / 2^64,
# about 2.8e-10, so a list of a million hashes matches about 1 unrelated image in 3,600 by chance
# (at 10 bits: 1 in 100). Copies found by near dedup at 10 bits (README "Near-duplicate signals")
# mostly lie within 8. Real hashes are not uniform, so chance matches are more frequent than this.
DEFAULT_PHASH_DISTANCE = 8

_URL_DIGEST_BYTES = 16  # BLAKE2b digest of a normalised URL or domain
_CACHE_VERSION = 1      # bump when the cached array's content for a given file changes


def reason(kind: str, purpose: str = SAFETY) -> str:
    """The drop reason of a match in a list of ``kind`` for ``purpose``: ``opted_out_list`` for any
    opt-out list, else ``blocklisted_<url|domain|hash|phash|term>``."""
    return OPTED_OUT_LIST if purpose == CONSENT else _SAFETY_REASONS[kind]


def cache_dir() -> str:
    """Where loaded hash, URL and domain lists are cached as .npy: ``$CURATE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/curate``, else ``~/.cache/curate``, then ``blocklists``."""
    base = os.environ.get("CURATE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "curate")
    return os.path.join(base, "blocklists")


# --- normalisation ----------------------------------------------------------------------------

_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar plus "/" and "?" (the characters a path or query keeps as they are) and "%".
_URL_SAFE = "/?:@!$&'()*+,;=-._~%"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_host(host: str) -> str:
    """A host name as DNS carries it, so that spellings of one host compare equal: surrounding
    whitespace, a leading ``*.`` or ``.`` and a trailing ``.`` removed, lower-cased, and a name with
    non-ASCII letters IDNA-encoded (IDNA 2008 with UTS #46 mapping, as browsers send it:
    ``Bücher.example`` -> ``xn--bcher-kva.example``; the ``idna`` package, as the ingest guard uses).
    Raises ValueError for an empty or invalid name."""
    name = host.strip().removeprefix("*.").lstrip(".").rstrip(".")
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"not a host name: {host!r}")
    if name.isascii():
        return name.lower()
    import idna

    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except (UnicodeError, ValueError) as e:  # idna.IDNAError is a UnicodeError
        raise ValueError(f"not a valid internationalised host name: {host!r}: {e}") from None


def _normalise_escapes(text: str) -> str:
    """Percent-encode what browsers encode, decode escapes of unreserved characters and write the
    remaining escapes in upper case (RFC 3986, 6.2.2.1-6.2.2.2: these spellings are equivalent)."""
    def fix(m: re.Match) -> str:
        byte = int(m.group(1), 16)
        return chr(byte) if byte in _UNRESERVED else "%" + m.group(1).upper()
    return _PERCENT.sub(fix, urllib.parse.quote(text, safe=_URL_SAFE))


def normalise_url(url: str) -> str:
    """The form in which URLs are compared with a URL list.

    Surrounding whitespace, user:password@, the fragment (never sent to the server) and the scheme's
    default port are removed; the host goes through ``normalise_host``; path and query keep their
    case (servers may treat it as meaningful) but are percent-encoded as browsers send them, escapes
    of unreserved characters decoded and other escapes upper-cased; an empty path is ``/``. http and
    https are one: an entry blocks the resource under both schemes (the form starts ``//host``);
    other schemes stay in the form. Raises ValueError when there is no host or the port is invalid.
    """
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if not parts.hostname:
        raise ValueError(f"no host in URL: {url[:200]!r}")
    host = normalise_host(parts.hostname)
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = parts.port  # ValueError for a port that is not a number or out of range
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = _normalise_escapes(parts.path) or "/"
    query = _normalise_escapes(parts.query)
    prefix = "" if scheme in _DEFAULT_PORTS else f"{scheme}:"
    return f"{prefix}//{host}{path}" + (f"?{query}" if query else "")


def host_suffixes(host: str) -> list[str]:
    """``host`` and each parent domain: ``a.b.example.com`` -> itself, ``b.example.com``,
    ``example.com``, ``com``. An IP literal is only itself."""
    if host.startswith("[") or host.replace(".", "").isdigit():
        return [host]
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def _string_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=_URL_DIGEST_BYTES).digest()


# --- list specs and matches -------------------------------------------------------------------

@dataclass(frozen=True)
class ListSpec:
    """One list file and how to read it. ``language``: term lists only (None: every caption);
    ``max_distance``: phash lists only (Hamming bits of 64)."""
    path: str
    kind: str
    purpose: str = SAFETY
    language: str | None = None
    max_distance: int = DEFAULT_PHASH_DISTANCE

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.path}: unknown list kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        if self.purpose not in PURPOSES:
            raise ValueError(f"{self.path}: unknown purpose {self.purpose!r} (one of {', '.join(PURPOSES)})")
        if self.language is not None and self.kind != TERM:
            raise ValueError(f"{self.path}: language applies to term lists only, not to kind {self.kind}")
        if not (isinstance(self.max_distance, int) and 0 <= self.max_distance <= 32):
            raise ValueError(f"{self.path}: max_distance must be an integer in [0, 32], got {self.max_distance!r}")

    @classmethod
    def from_config(cls, item: Mapping, purpose: str = SAFETY) -> ListSpec:
        """A spec from a config entry ``{path, kind[, language][, max_distance]}``; one-line
        ValueError for a missing or unknown key."""
        allowed = {"path", "kind", "language", "max_distance"}
        if not isinstance(item, Mapping) or not {"path", "kind"} <= set(item):
            raise ValueError(f"a list needs path and kind, got {item!r}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ValueError(f"{item['path']}: unknown list key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        if "max_distance" in item and item["kind"] != PHASH:
            raise ValueError(f"{item['path']}: max_distance applies to phash lists only")
        return cls(purpose=purpose, **dict(item))

    @property
    def reason(self) -> str:
        return reason(self.kind, self.purpose)


@dataclass(frozen=True)
class Match:
    """A sample named by a list: the drop reason, the list file, its kind and what matched (the
    digest, the normalised URL, the listed domain, the listed phash and its distance, the term)."""
    reason: str
    path: str
    kind: str
    entry: str

    @property
    def detail(self) -> str:
        """The decision row's ``detail``: which list, and what in it."""
        return f"{self.kind} list {self.path}: {self.entry}"


# --- loaded lists ---------------------------------------------------------------------------

class LoadedList:
    """A list file as loaded: its spec, the sha256 of its bytes and its number of distinct entries."""

    def __init__(self, spec: ListSpec, sha256: str, entries: int):
        self.spec, self.sha256, self.entries = spec, sha256, entries

    @property
    def path(self) -> str:
        return self.spec.path

    def describe(self) -> dict:
        """What report.json records of the list (the pipeline adds its match count)."""
        out = {"path": self.spec.path, "kind": self.spec.kind, "purpose": self.spec.purpose,
               "reason": self.spec.reason, "sha256": self.sha256, "entries": self.entries}
        if self.spec.kind == TERM:
            out["language"] = self.spec.language
        if self.spec.kind == PHASH:
            out["max_distance"] = self.spec.max_distance
        return out

    def _match(self, entry: str) -> Match:
        return Match(self.spec.reason, self.spec.path, self.spec.kind, entry)


class DigestList(LoadedList):
    """Hash, URL and domain lists: a sorted array of fixed-width digests (possibly memory-mapped)."""

    def __init__(self, spec: ListSpec, sha256: str, digests: np.ndarray):
        super().__init__(spec, sha256, len(digests))
        self.digests = digests

    def contains(self, digest: bytes) -> bool:
        """Whether ``digest`` (raw bytes of the list's width) is listed: one binary search."""
        if not len(self.digests):
            return False
        query = np.array(digest, dtype=self.digests.dtype)
        i = int(np.searchsorted(self.digests, query))
        return i < len(self.digests) and self.digests[i] == query

    def match_hex(self, digest: str | None) -> Match | None:
        """Hash lists: the match for a hex digest of the list's kind, or None (also for None or a
        malformed digest, which no list entry can equal)."""
        try:
            raw = bytes.fromhex(digest) if digest else b""
        except ValueError:
            return None
        if len(raw) != HASH_KINDS.get(self.spec.kind) or not self.contains(raw):
            return None
        return self._match(digest.lower())

    def match_url(self, url: str | None) -> Match | None:
        """URL lists: the sample's URL as listed (``normalise_url``); domain lists: its host or a
        parent domain listed. None for a missing URL, or one without a valid host."""
        if not url:
            return None
        try:
            if self.spec.kind == URL:
                form = normalise_url(url)
                return self._match(form) if self.contains(_string_digest(form)) else None
            host = normalise_host(urllib.parse.urlsplit(url.strip()).hostname or "")
        except ValueError:
            return None
        for suffix in host_suffixes(host):
            if self.contains(_string_digest(suffix)):
                return self._match(suffix)
        return None


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _BYTE_BITS[x.view(np.uint8).reshape(-1, 8)].sum(axis=1)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class PhashList(LoadedList):
    """Perceptual hashes as a sorted uint64 array, searched exhaustively (XOR + popcount over the
    whole list: about a millisecond per sample for a million hashes, benchmarks/blocklist_cost.py)."""

    def __init__(self, spec: ListSpec, sha256: str, hashes: np.ndarray):
        super().__init__(spec, sha256, len(hashes))
        self.hashes = hashes

    def match_phash(self, phash: str | None) -> Match | None:
        """The nearest listed hash within ``max_distance`` bits of ``phash`` (16 hex digits; ties go
        to the smaller hash), or None (also for None or a malformed hash)."""
        if not phash or not len(self.hashes):
            return None
        try:
            value = np.uint64(int(phash, 16))
        except (ValueError, OverflowError):
            return None
        distances = _popcount(self.hashes ^ value)
        best = int(np.argmin(distances))  # the first minimum: the smallest hash, as the array is sorted
        d = int(distances[best])
        return self._match(f"{int(self.hashes[best]):016x} at distance {d}") if d <= self.spec.max_distance else None


class TermList(LoadedList):
    """Caption terms of one language (or of every caption), matched by ``filters.metadata.Metadata``."""

    ALL = "*"  # the Metadata language under which a list for every caption is kept

    def __init__(self, spec: ListSpec, sha256: str, terms: Sequence[str]):
        self.metadata = Metadata({spec.language or self.ALL: terms}, source=spec.path)
        super().__init__(spec, sha256, len(self.metadata.entries(spec.language or self.ALL)))

    def match_caption(self, caption: str | None, language: str | None) -> Match | None:
        """The first listed term (in sorted order) that ``caption`` names, when the list serves
        ``language`` (or every language); None otherwise."""
        found = self.metadata.match(caption, self.ALL if self.spec.language is None else language)
        return self._match(found[0]) if found else None


# --- loading --------------------------------------------------------------------------------

def _data_lines(text: str):
    """(line number, stripped line) of every entry line, lazily (a million-line list is never held
    as a list of lines): blank lines and '#' comment lines skipped."""
    start, n = 0, 0
    while start < len(text):  # not io.StringIO, which holds the text again at 4 bytes per character
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        n += 1
        if (s := text[start:end].strip()) and not s.startswith("#"):
            yield n, s
        start = end + 1


def _parse_hex(path: str, text: str, nbytes: int, what: str) -> bytes:
    """The first token of each entry line as ``nbytes`` raw bytes, concatenated; one-line ValueError
    naming the first line that is not ``2 * nbytes`` hex digits."""
    tokens = [s.split(None, 1)[0] for _, s in _data_lines(text)]
    try:
        if all(len(t) == 2 * nbytes for t in tokens):
            return bytes.fromhex("".join(tokens))
    except ValueError:
        pass
    for n, s in _data_lines(text):  # find the culprit only once something is wrong
        t = s.split(None, 1)[0]
        if len(t) != 2 * nbytes or not re.fullmatch(r"[0-9A-Fa-f]+", t):
            raise ValueError(f"{path}:{n}: not a {what} ({2 * nbytes} hex digits): {t[:80]!r}")
    raise AssertionError("unreachable: every token is valid hex")  # pragma: no cover


def _build_array(spec: ListSpec, text: str) -> np.ndarray:
    """The sorted, unique array of a hash, phash, URL or domain list's entries."""
    if spec.kind in HASH_KINDS:
        width = HASH_KINDS[spec.kind]
        raw = _parse_hex(spec.path, text, width, f"{spec.kind} digest")
        return np.unique(np.frombuffer(raw, dtype=f"S{width}"))
    if spec.kind == PHASH:
        raw = _parse_hex(spec.path, text, 8, "perceptual hash")
        return np.unique(np.frombuffer(raw, dtype=">u8").astype(np.uint64))
    digests = bytearray()
    for n, s in _data_lines(text):
        try:
            form = normalise_url(s) if spec.kind == URL else normalise_host(s)
        except ValueError as e:
            raise ValueError(f"{spec.path}:{n}: {e}") from None
        digests += _string_digest(form)
    return np.unique(np.frombuffer(bytes(digests), dtype=f"S{_URL_DIGEST_BYTES}"))


def _read_text(path: str) -> str:
    try:
        return fs.read_bytes(path).decode("utf-8-sig")  # a byte-order mark is no part of the first entry
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text: {e}") from None


def _cached_array(spec: ListSpec, sha256: str, folder: str | None) -> np.ndarray:
    """The list's array from the cache (memory-mapped), else built from the file and written there;
    kept in memory when the cache folder cannot be written."""
    path = os.path.join(folder, f"{sha256}-{spec.kind}-v{_CACHE_VERSION}.npy") if folder else None
    if path and os.path.exists(path):
        if os.path.getsize(path) > 128:  # an empty array cannot be memory-mapped
            return np.load(path, mmap_mode="r")
        return np.load(path)
    array = _build_array(spec, _read_text(spec.path))
    if path:
        tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, array)
            os.replace(tmp, path)  # workers building the same cache write the same bytes
        except OSError:
            pass
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return array


_LOADED: dict[tuple, LoadedList] = {}
_LOCK = threading.Lock()


def _file_state(path: str) -> tuple:
    if fs.is_local(path):
        st = os.stat(fs.local_path(path))
        return st.st_size, st.st_mtime_ns
    return (fs.size(path),)


def load_list(spec: ListSpec, cache: str | None = None) -> LoadedList:
    """Load one list file (a local path or any fsspec URL), once per process: a second call with the
    same spec and an unchanged file returns the same object. ``cache``: the .npy cache folder
    (default ``cache_dir()``; "" for none). One-line ValueError for a missing file or a bad line."""
    folder = cache_dir() if cache is None else cache
    try:
        key = (spec, folder, _file_state(spec.path))
    except (OSError, FileNotFoundError):
        raise ValueError(f"{spec.path}: {spec.kind} list not found") from None
    with _LOCK:
        if key not in _LOADED:
            sha256 = fs.sha256(spec.path)
            if spec.kind == TERM:
                _LOADED[key] = TermList(spec, sha256, read_entries(_read_text(spec.path)))
            elif spec.kind == PHASH:
                _LOADED[key] = PhashList(spec, sha256, _cached_array(spec, sha256, folder))
            else:
                _LOADED[key] = DigestList(spec, sha256, _cached_array(spec, sha256, folder))
        return _LOADED[key]


# --- a set of lists --------------------------------------------------------------------------

class Blocklists:
    """Several list files (block and opt-out), checked in the order given; the first match wins.

    Pickles as its specs: each process loads the files on first use (``load_list``), so a Beam DoFn
    can hold one. Each ``check_*`` consults only the lists of the kinds that apply to what it is
    given and returns a ``Match`` or None.
    """

    def __init__(self, specs: Sequence[ListSpec], cache: str | None = None):
        self.specs = tuple(specs)
        self.cache = cache
        self._lists: tuple[LoadedList, ...] | None = None

    @classmethod
    def from_config(cls, safety: Sequence[Mapping] = (), consent: Sequence[Mapping] = (),
                    cache: str | None = None) -> Blocklists:
        """Block lists (``safety.blocklists``) then opt-out lists (``consent.optout``), each entry
        ``{path, kind[, language][, max_distance]}``: a block list wins when both name a sample."""
        return cls([ListSpec.from_config(i, SAFETY) for i in safety]
                   + [ListSpec.from_config(i, CONSENT) for i in consent], cache)

    def __reduce__(self):
        return Blocklists, (self.specs, self.cache)

    def __bool__(self) -> bool:
        return bool(self.specs)

    @property
    def lists(self) -> tuple[LoadedList, ...]:
        """The loaded lists, in order (loaded on first access)."""
        if self._lists is None:
            self._lists = tuple(load_list(s, self.cache) for s in self.specs)
        return self._lists

    def kinds(self) -> frozenset[str]:
        """The kinds present: which checks a pipeline needs to run (and which digests to supply)."""
        return frozenset(s.kind for s in self.specs)

    def describe(self) -> list[dict]:
        """Per list file: path, kind, purpose, reason, sha256, entries (for report.json)."""
        return [x.describe() for x in self.lists]

    def _of(self, *kinds: str):
        return (x for x in self.lists if x.spec.kind in kinds)

    def check_url(self, url: str | None) -> Match | None:
        """URL and domain lists against a sample's URL (ingest, before any request)."""
        return next((m for x in self._of(URL, DOMAIN) if (m := x.match_url(url))), None)

    def check_digests(self, digests: Mapping[str, str | None]) -> Match | None:
        """Hash lists against hex digests already computed, ``{"md5": ..., "sha256": ...}`` (an
        img2dataset ``md5`` column, the ``sha256`` a read computes); a list whose kind has no digest
        given is not consulted."""
        return next((m for x in self._of(*HASH_KINDS) if (m := x.match_hex(digests.get(x.spec.kind)))), None)

    def check_image(self, data: bytes | None) -> Match | None:
        """Hash lists against image bytes: computes only the digests the lists need."""
        if data is None:
            return None
        needed = self.kinds() & set(HASH_KINDS)
        return self.check_digests({k: hashlib.new(k, data).hexdigest() for k in needed})

    def check_phash(self, phash: str | None) -> Match | None:
        """Perceptual-hash lists against the image's phash (16 hex digits, ``filters.phash``)."""
        return next((m for x in self._of(PHASH) if (m := x.match_phash(phash))), None)

    def check_caption(self, caption: str | None, language: str | None) -> Match | None:
        """Term lists against a caption in ``language`` (the sample's language, as decisions record it)."""
        return next((m for x in self._of(TERM) if (m := x.match_caption(caption, language))), None)

    def check(self, *, url: str | None = None, image: bytes | None = None,
              digests: Mapping[str, str | None] | None = None, phash: str | None = None,
              caption: str | None = None, language: str | None = None) -> Match | None:
        """Every check whose input is given, in pipeline order (URL, bytes, digests, caption, phash:
        filters.sample.decode_sample's): e.g. a selection over stored metadata (url, sha256, phash,
        caption, language)."""
        return (self.check_url(url) or self.check_image(image) or self.check_digests(digests or {})
                or self.check_caption(caption, language) or self.check_phash(phash))

