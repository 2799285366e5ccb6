"""Shard IO shared by every stage: atomic writes, WebDataset tar writing and streaming reads."""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from curate import fs

# Member extensions that hold a sample's image (the first present wins). The bytes decide the format,
# never the name: a PNG stored as KEY.jpg decodes as PNG (filters/image.py).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "avif", "heic", "heif", "bmp", "gif", "tif", "tiff", "svg", "jxl")
# Pillow's format name -> the extension a curated tar names the member by (its real format).
FORMAT_EXTS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "AVIF": "avif", "HEIF": "heic",
               "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}
# Fixed member mtime: same samples -> byte-identical tar, whenever it is written.
TAR_MTIME = 0


def format_ext(image_format: str | None, member_ext: str | None) -> str | None:
    """The extension that names an image of Pillow format ``image_format`` (``JPEG`` -> ``jpg``,
    ``PNG`` -> ``png``, ...); the member's own extension for a format without one here (or unknown)."""
    return FORMAT_EXTS.get(image_format or "", member_ext)


def sample_key(index: int) -> str:
    """img2dataset's key form: zero-padded digits, no dots (WebDataset splits names at the first dot)."""
    return f"{index:09d}"


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temp name beside the LOCAL ``path``; rename it onto ``path`` only if the block succeeds.

    A killed run therefore never leaves a truncated file under a final name. For a path that may be
    remote (gs://, s3://, ...) use ``write_bytes`` / ``write_parquet`` / ``curate.fs.atomic_write``.
    """
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def dumps_json(obj) -> bytes:
    """Stable JSON bytes (sorted keys, UTF-8) so outputs are byte-identical across runs."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def npy_shape(path: str) -> tuple[int, ...]:
    """The array shape in a .npy file's header, without reading the array."""
    with fs.open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return header(f)[0]


def write_bytes(path: str, data: bytes) -> None:
    """``data`` under ``path`` (local or remote), atomically."""
    with fs.atomic_write(path) as f:
        f.write(data)


def write_parquet(path: str, table: pa.Table) -> None:
    """``table`` as a parquet file at ``path`` (local or remote), atomically."""
    with fs.atomic_write(path) as f:
        pq.write_table(table, f)


def read_parquet(path: str, **kwargs) -> pa.Table:
    """One parquet file (local or remote)."""
    with fs.open(path, "rb") as f:
        return pq.read_table(f, **kwargs)


def write_tar(path: str, members: list[tuple[str, dict]]) -> None:
    """Write ``[(key, {ext: bytes|str|dict})]`` as a WebDataset tar, atomically and reproducibly."""
    with fs.atomic_write(path) as f:
        with wds.TarWriter(f, encoder=False, mtime=TAR_MTIME) as writer:
            for key, fields in members:
                sample = {"__key__": key}
                for ext, value in fields.items():
                    if isinstance(value, dict):
                        value = dumps_json(value)
                    elif isinstance(value, str):
                        value = value.encode("utf-8")
                    sample[ext] = value
                writer.write(sample)


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/KEY.ext.more`` -> (``dir/KEY``, ``ext.more``) exactly as WebDataset groups members
    (its own ``base_plus_ext``: the folder part kept as written, ``./`` and ``//`` included), the
    extension lower-cased; None for a name WebDataset skips (no dot, or a dot first: ``.hidden``)."""
    key, ext = base_plus_ext(name)
    return None if key is None else (key, ext.lower())


def canonical_key(key: str) -> str:
    """``key`` without empty and ``.`` folder parts: ``./a`` and ``d//e`` name the files ``a`` and
    ``d/e`` wherever they are extracted, so that is the sample's key (webdataset keeps the spelling,
    and two spellings of one path would overwrite each other's files downstream)."""
    return "/".join(part for part in key.split("/") if part not in ("", "."))


def is_safe_key(key: str) -> bool:
    """A key that can name files anywhere downstream: relative, no '..' part, no backslash or NUL,
    and something left once empty and '.' parts are dropped (``canonical_key``).

    Keys become member names of the curated tars, and whoever extracts those must not be led out
    of their folder.
    """
    return bool(canonical_key(key)) and not key.startswith("/") and ".." not in key.split("/") and not any(
        c in key for c in "\\\x00")


class TarReadError(Exception):
    """The tar stream ended badly; samples read before the error were already yielded."""


# Shards as webdataset reads them: plain tars and gzip-compressed ones, as many published corpora
# ship them. iter_tar_samples decompresses on the fly; what curate writes stays .tar.
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
GZIP_MAGIC = b"\x1f\x8b"


def is_shard_name(path: str) -> bool:
    """Whether ``path`` names a tar shard: ``.tar``, ``.tar.gz`` or ``.tgz``."""
    return path.lower().endswith(SHARD_SUFFIXES)


def shard_stem(path: str) -> str:
    """``/x/00003.tar``, ``00003.tar.gz`` or ``gs://b/00003.tgz`` -> ``00003``; other names unchanged."""
    name = fs.basename(path)
    suffix = next((s for s in SHARD_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


@dataclass(frozen=True)
class TarGroup:
    """One sample as webdataset groups a tar: consecutive members whose names share the key.

    Two shapes webdataset reads without complaint or refuses are marked rather than smoothed over:
    ``repeated`` names the members whose name occurs again inside the group (webdataset raises
    ``duplicate file name``; ``fields`` holds the first copy), and ``earlier_index`` is set when the
    key already had a group earlier in this tar, other keys' members in between (webdataset yields
    a second sample with the same key; so does this reader, so sample indices are webdataset's).
    """
    key: str
    fields: dict[str, bytes]
    repeated: tuple[str, ...] = ()
    earlier_index: int | None = None          # index of the key's first group in this tar
    earlier_members: tuple[str, ...] = ()     # that group's member extensions


def iter_tar_groups(path: str) -> Iterator[TarGroup]:
    """Stream the samples of a WebDataset tar (plain or gzip-compressed) as ``TarGroup``s, one at a time.

    Only regular files count: directories, links and devices are skipped, so a hostile tar
    cannot point a reader anywhere. Raises TarReadError when the stream is corrupt or truncated,
    after the samples read before the damage. A gzip stream is read to its end after the tar's
    end marker, so that its checksum is verified: a bit flipped inside it raises TarReadError too
    (after all samples, since a checksum cannot say which one it hit). Memory: one sample's bytes,
    plus each key's first index and member extensions (to recognise a key that comes back).
    """
    seen: dict[str, tuple[int, tuple[str, ...]]] = {}  # key -> (index, member extensions) of its first group
    current_key, fields, repeated, count = None, {}, [], 0

    def group() -> TarGroup:
        nonlocal count
        index, count = count, count + 1
        first, members = seen.setdefault(current_key, (index, tuple(sorted(fields))))
        if first == index:
            return TarGroup(current_key, fields, tuple(repeated))
        return TarGroup(current_key, fields, tuple(repeated), earlier_index=first, earlier_members=members)

    try:
        with fs.open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            gz = gzip.GzipFile(fileobj=f, mode="rb") if head == GZIP_MAGIC else None
            with tarfile.open(fileobj=gz or f, mode="r|" if gz else "r|*") as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    parts = split_member_name(member.name)
                    if parts is None:
                        continue
                    key, ext = parts
                    data = tar.extractfile(member).read()
                    if key != current_key:
                        if current_key is not None:
                            yield group()
                        current_key, fields, repeated = key, {}, []
                    if ext in fields:
                        repeated.append(os.path.basename(member.name))
                    else:
                        fields[ext] = data
            while gz and gz.read(1 << 20):  # to the end: GzipFile checks the CRC there
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if current_key is not None:
            yield group()
        raise TarReadError(f"{path}: {type(e).__name__}: {e}") from e
    if current_key is not None:
        yield group()


def iter_tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {ext: bytes})`` from a WebDataset tar, one sample at a time (see ``iter_tar_groups``,
    whose grouping and indices it keeps; a repeated member name keeps its first copy)."""
    for g in iter_tar_groups(path):
        yield g.key, g.fields


def sample_json(fields: dict[str, bytes]) -> dict:
    """A sample's ``json`` member as a dict; {} when absent or not a JSON object."""
    try:
        meta = json.loads(fields.get("json", b"{}"))
        return meta if isinstance(meta, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}
