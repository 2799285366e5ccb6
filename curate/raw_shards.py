"""Reading raw shards: list the input's tars and read each one as webdataset groups its members.

A sample that cannot be taken as read gets its own reason; a broken tar ends as one row after the
samples read before the damage, never as a crash.
"""
from __future__ import annotations

import logging

import apache_beam as beam

from curate import fs, progress
from curate.decisions import InputCount
from curate.io import (
    IMAGE_EXTS,
    TarGroup,
    TarReadError,
    canonical_key,
    is_safe_key,
    is_shard_name,
    iter_tar_groups,
    iter_tar_samples,
)
from curate.outputs import DECISIONS, MAIN
from curate.records import READ, RawSample, decision
from curate.timing import timed

log = logging.getLogger("curate")

UNREADABLE_TAR = "unreadable_tar"
UNSAFE_KEY = "unsafe_key"
# Shapes webdataset itself refuses or splits (see curate.io.TarGroup): refused with their own reason,
# never silently merged or counted twice.
DUPLICATE_MEMBER = "duplicate_member"  # a member name occurs twice in one sample
SPLIT_SAMPLE = "split_sample"          # a key's members come back after other keys' members: the later part


def list_input_shards(spec: str) -> list[str]:
    """A folder, a glob or a single shard (local or gs://, s3://, ...) -> tar paths sorted by path;
    ``.tar``, ``.tar.gz`` and ``.tgz`` may be mixed. Raises ValueError if none match."""
    if fs.isdir(spec):
        paths = [p for p in fs.glob(fs.join(spec, "*")) if is_shard_name(p)]
    else:
        paths = [p for p in fs.glob(spec) if is_shard_name(p)] if fs.has_wildcard(spec) else (
            [spec] if fs.isfile(spec) else [])
    if not paths:
        raise ValueError(f"no .tar, .tar.gz or .tgz shards found at {spec!r}")
    return sorted(fs.abspath(p) for p in paths)


def is_whole_sample(fields: dict) -> bool:
    """An image member and a caption: a sample that stands on its own."""
    return "txt" in fields and any(ext in fields for ext in IMAGE_EXTS)


def read_problem(group: TarGroup) -> tuple[str, str] | None:
    """(reason, detail) when a sample of a raw tar cannot be taken as it was read, else None.

    A key that comes back after other keys' members is read as webdataset reads it, as a second
    sample: a whole one (image and caption) goes on, and ``UniqueKeys`` keeps one of the two
    (``duplicate_key``); a part (a stray caption, image or json) is refused as ``split_sample``.
    Two spellings of one path (``./a`` and ``a``) are two samples, as in webdataset, with one
    canonical key (``read_shard``): ``UniqueKeys`` keeps one of them the same way.
    """
    if not is_safe_key(group.key):
        return UNSAFE_KEY, f"member name {group.key!r}"
    if group.earlier_index is not None and not is_whole_sample(group.fields):
        return SPLIT_SAMPLE, (f"key {group.key!r} was read at source_index {group.earlier_index} (members "
                              f"{', '.join(group.earlier_members) or 'none'}) and comes back here, after other keys "
                              f"(members {', '.join(sorted(group.fields)) or 'none'}): a sample's members must be "
                              "adjacent; webdataset reads the parts as separate samples")
    if group.repeated:
        return DUPLICATE_MEMBER, (f"member name repeated in one sample: {', '.join(sorted(set(group.repeated)))} "
                                  "(webdataset refuses it: duplicate file name)")
    return None


def read_shard(shard_index: int, path: str, total: int):
    """(MAIN, RawSample) per sample of one raw shard, in order, as webdataset groups members; a sample
    that cannot be taken as read (``read_problem``) is one (DECISIONS, row), and a broken tar ends as
    one (DECISIONS, row) after the samples read before the damage, never as a crash. Last comes
    (DECISIONS, InputCount): the samples read, which the shard's decision rows must number."""
    count = 0
    if not progress.advance("read", 0, " shards", total, f"reading {fs.basename(path)}"):
        log.info("reading shard %d/%d %s", shard_index + 1, total, fs.basename(path))
    samples = iter_tar_groups(path)
    try:
        while True:
            with timed(READ):  # only the tar reading: downstream work runs inside the yield
                item = next(samples, None)
            if item is None:
                break
            count += 1
            problem = read_problem(item)
            # an unsafe key's row shows it as written; any other sample goes on under its canonical key
            key = item.key if problem and problem[0] == UNSAFE_KEY else canonical_key(item.key)
            raw = RawSample(key, shard_index, path, count - 1, item.fields)
            if problem is None:
                yield MAIN, raw
            else:
                yield DECISIONS, decision(raw, False, READ, problem[0], detail=problem[1])
    except TarReadError as e:
        log.warning("shard %s: %s (kept the %d samples before the error)", path, e, count)
        stub = RawSample("", shard_index, path, -1, {})
        yield DECISIONS, decision(stub, False, READ, UNREADABLE_TAR, detail=str(e))
    beam.metrics.Metrics.counter("curate", "shards_read").inc()
    beam.metrics.Metrics.counter("curate", "samples_read").inc(count)
    yield DECISIONS, InputCount(shard_index, count, total)
    if not progress.advance("read", 1, " shards", total, f"{fs.basename(path)}: {count} samples"):
        log.info("done with shard %d/%d %s: %d samples", shard_index + 1, total, fs.basename(path), count)


def read_members(path: str, indices: set[int]) -> dict[tuple[str, int], dict]:
    """The members of the samples at ``indices`` of one raw shard, reading no further than the last.

    A shard damaged past its last wanted sample (``unreadable_tar`` at read time) still gives the
    samples before the damage: reading stops before it, and a read error after them is not theirs.
    """
    found: dict[tuple[str, int], dict] = {}
    try:
        for index, (_key, fields) in enumerate(iter_tar_samples(path)):
            if index in indices:
                found[(path, index)] = fields
                if len(found) == len(indices):
                    break
    except TarReadError:
        if len(found) < len(indices):  # a sample read before now cannot be read: the shard changed
            raise
    return found


# What trainers read as they are: open_clip's WebDataset loader takes jpg;png;jpeg;webp members.
