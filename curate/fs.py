"""Paths through fsspec, so a local folder and gs://, s3://, hdfs:// (any fsspec filesystem the
workers can reach) are read and written by the same code.

Local paths stay plain paths (no ``file://`` prefix is added), so every local behaviour and every
byte of output is unchanged. Remote filesystems need their fsspec driver installed where the
pipeline runs (gcsfs for gs://, s3fs for s3://, pyarrow's HDFS for hdfs://).
"""
from __future__ import annotations

import builtins
import contextlib
import glob as local_glob
import hashlib
import os
import shutil
import uuid

import fsspec

# Object stores publish an object only when its upload completes, so writing straight to the final
# name never exposes a truncated object (and their "rename" is a copy). Elsewhere: temp name + rename.
PUBLISH_ON_CLOSE = {"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss"}


def _fs(path: str):
    fs, stripped = fsspec.core.url_to_fs(path)
    return fs, stripped


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _protocol(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else "file"


def local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return os.path.join(local_path(base), *parts)
    return "/".join([base.rstrip("/"), *parts])


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def dirname(path: str) -> str:
    if is_local(path):
        return os.path.dirname(local_path(path))
    return path.rstrip("/").rsplit("/", 1)[0]


def abspath(path: str) -> str:
    """Absolute local path; URLs unchanged."""
    return os.path.abspath(local_path(path)) if is_local(path) else path


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(local_path(path))
    fs, p = _fs(path)
    return fs.exists(p)


def isdir(path: str) -> bool:
    if is_local(path):
        return os.path.isdir(local_path(path))
    fs, p = _fs(path)
    return fs.isdir(p)


def isfile(path: str) -> bool:
    if is_local(path):
        return os.path.isfile(local_path(path))
    fs, p = _fs(path)
    return fs.isfile(p)


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(local_path(path), exist_ok=True)
        return
    fs, p = _fs(path)
    fs.makedirs(p, exist_ok=True)  # a no-op on object stores, where folders are key prefixes


def remove(path: str) -> None:
    """Delete a file or a whole folder."""
    if is_local(path):
        p = local_path(path)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        return
    fs, p = _fs(path)
    fs.rm(p, recursive=True)


def has_wildcard(path: str) -> bool:
    """Whether ``path`` is a glob pattern (``*``, ``?`` or ``[``), as ``glob`` reads it."""
    return any(c in path for c in "*?[")


def glob(pattern: str) -> list[str]:
    """Sorted matches, as paths of the same kind as ``pattern`` (URLs keep their scheme)."""
    if is_local(pattern):
        return sorted(local_glob.glob(local_path(pattern)))
    fs, p = _fs(pattern)
    return sorted(fs.unstrip_protocol(m) for m in fs.glob(p))


def walk_files(root: str) -> list[str]:
    """Every file under ``root`` (recursively), as paths of the same kind as ``root``."""
    if is_local(root):
        return [os.path.join(d, n) for d, _dirs, files in os.walk(local_path(root)) for n in files]
    fs, p = _fs(root)
    return [fs.unstrip_protocol(f) for f in fs.find(p)]


def open(path: str, mode: str = "rb"):  # noqa: A001 - the module's one opener, shadowing on purpose
    """A binary file object for reading (or writing without the atomic guarantee)."""
    if is_local(path):
        return builtins.open(local_path(path), mode)
    fs, p = _fs(path)
    return fs.open(p, mode)


def size(path: str) -> int:
    """A file's size in bytes."""
    filesystem, stripped = _fs(path)
    return int(filesystem.size(stripped))


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sha256(path: str) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (a large file is never held whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def temp_name(path: str) -> str:
    """The name a file is written under before it is renamed onto ``path``."""
    parent, name = (os.path.split(local_path(path)) if is_local(path) else path.rsplit("/", 1))
    tmp = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    return os.path.join(parent or ".", tmp) if is_local(path) else f"{parent}/{tmp}"


@contextlib.contextmanager
def atomic_write(path: str):
    """Yield a binary file object; its content appears under ``path`` only if the block succeeds.

    A killed run therefore never leaves a truncated file under a final name: locally (and on HDFS)
    by writing a temp name and renaming it; on object stores by the upload itself, which publishes
    the object only when it completes.
    """
    if _protocol(path) in PUBLISH_ON_CLOSE:
        fs, p = _fs(path)
        f = fs.open(p, "wb")
        try:
            yield f
        except BaseException:
            if hasattr(f, "discard"):  # abort the upload: nothing is published
                f.discard()
            raise
        f.close()
        return
    tmp = temp_name(path)
    try:
        if is_local(path):
            with builtins.open(tmp, "wb") as f:
                yield f
            os.replace(tmp, local_path(path))
        else:
            fs, p = _fs(path)
            with fs.open(_fs(tmp)[1], "wb") as f:
                yield f
            fs.mv(_fs(tmp)[1], p)
    finally:
        if exists(tmp):
            remove(tmp)
