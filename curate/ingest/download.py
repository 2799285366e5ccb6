"""One raw shard: img2dataset's Resizer and WebDataset writer behind a host-aware download loop, made
safe to kill and rerun.

``PoliteDownloader`` is img2dataset's Downloader with its per-shard loop replaced: rows are fetched
through curate/ingest/polite.py (per-host queues and limits, retries with backoff, robots.txt, TDM
opt-outs, cached DNS) instead of a plain thread pool in row order, and each row records its
``attempts``; each result is then resized, hashed and written exactly as img2dataset's loop does.

img2dataset writes straight to final names, in completion order, with the wall clock as tar mtime.
Here its Downloader writes into a temp folder beside the shard through a writer that orders samples
by key with a fixed mtime (so a rerun gives the same bytes), and the files are renamed into place
only once complete, the ``_stats.json`` last: a shard is finished exactly when its stats file exists.
When the raw folder is remote (gs://, s3://, ... through curate.fs), the temp folder is a local
tempfile folder and each finished file is uploaded instead of renamed, in the same order (object
stores publish an object only when its upload completes).
(curate/ingest/__init__.py, which runs before this module, turns off albumentations' update check.)
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections import Counter

import exifread
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import webdataset as wds
from img2dataset.downloader import Downloader, compute_key
from img2dataset.resizer import Resizer
from img2dataset.writer import BufferedParquetWriter, WebDatasetSampleWriter
from PIL import Image
from pyarrow import feather

from curate import fs
from curate.filters.image import allow_pil
from curate.ingest import polite
from curate.ingest.resize import ReducedDecodeResizer
from curate.ingest.shard import (
    DECOMPRESSION_BOMB,
    OOM_SHARD_COUNT,
    SUCCESS,
    Settings,
    ShardTask,
    shard_name,
    status_reason,
)
from curate.io import TAR_MTIME, iter_tar_samples, read_parquet, write_tar


class PixelLimit:
    """Refuse an image whose header declares more than ``max_pixels`` before img2dataset's Resizer
    decodes it: OpenCV would allocate the whole bitmap first. The cap is this one, not PIL's limit
    (``allow_pil``); OpenCV's decoder refuses more than 2**30 pixels itself, the most
    ``ingest.max_image_pixels`` takes."""

    def __init__(self, resizer, max_pixels: int):
        self._resizer, self._max = resizer, max_pixels

    def __call__(self, img_stream, blurring_bbox_list=None):
        allow_pil(self._max)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
                with Image.open(img_stream) as im:
                    width, height = im.size
        except Image.DecompressionBombError as e:  # more than twice PIL's limit, so more than the cap
            return None, None, None, None, None, f"{DECOMPRESSION_BOMB}: {e}"
        except Exception:  # noqa: BLE001 - not readable by PIL: the Resizer reports its own error
            width = height = 0
        if width * height > self._max:
            return None, None, None, None, None, f"{DECOMPRESSION_BOMB}: {width}x{height} > {self._max} pixels"
        img_stream.seek(0)
        return self._resizer(img_stream, blurring_bbox_list)


class OrderedShardWriter(WebDatasetSampleWriter):
    """img2dataset's WebDataset writer, reproducible: samples written in key order at close (image
    bytes spilled to a temp file meanwhile), fixed tar mtime, and ``reason`` and ``attempts`` columns
    per row.

    ``key_map`` renames keys: a retry downloads only failed rows, and they keep their first keys.
    """

    def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format,
                 key_map=None):
        super().__init__(shard_id, output_folder, save_caption, oom_shard_count,
                         schema.append(pa.field("reason", pa.string())).append(pa.field("attempts", pa.int32())),
                         encode_format)
        # Same file, nothing written yet by the writer it replaces; only the mtime differs.
        self.tarwriter = wds.TarWriter(self.tar_fd, mtime=TAR_MTIME)
        self._key_map = key_map or {}
        self._spill = tempfile.TemporaryFile(dir=output_folder)  # noqa: SIM115 - closed in close(), as img2dataset's writers
        self._rows = []

    def write(self, img_str, key, caption, meta):
        key = self._key_map.get(key, key)
        meta = {**meta, "key": key, "reason": status_reason(meta.get("status"), meta.get("error_message")),
                "attempts": meta.get("attempts")}
        span = None
        if img_str is not None:
            span = (self._spill.tell(), len(img_str))
            self._spill.write(img_str)
        self._rows.append((key, span, caption, meta))

    def close(self):
        for key, span, caption, meta in sorted(self._rows, key=lambda r: r[0]):
            img = None
            if span is not None:
                self._spill.seek(span[0])
                img = self._spill.read(span[1])
            super().write(img, key, caption, meta)
        self._spill.close()
        super().close()


def make_resizer(s: Settings) -> PixelLimit:
    """img2dataset's Resizer, large JPEGs decoded at reduced size (curate.ingest.resize) unless
    ``reduced_decode`` is off, behind the pixel cap."""
    resizer = Resizer(s.image_size, s.resize_mode, s.resize_only_if_bigger, encode_quality=s.encode_quality,
                      encode_format=s.encode_format, min_image_size=s.min_image_size,
                      max_aspect_ratio=s.max_aspect_ratio or float("inf"))
    return PixelLimit(ReducedDecodeResizer(resizer) if s.reduced_decode else resizer, s.max_image_pixels)


class PoliteDownloader(Downloader):
    """img2dataset's Downloader whose shard loop fetches through a polite.Session (see the module doc)."""

    def __init__(self, *args, session: polite.Session, **kwargs):
        super().__init__(*args, **kwargs)
        self._session = session

    def download_shard(self, row):
        """img2dataset's ``Downloader.download_shard`` (1.47) without hash verification or blurring
        (curate uses neither), rows fetched by the session; the per-row steps are its own."""
        shard_id, shard_file = row
        table = feather.read_table(shard_file, memory_map=False)
        schema = table.schema
        for name, kind in (("key", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
                           ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
                           ("original_height", pa.int32())):
            schema = schema.append(pa.field(name, kind))
        if self.extract_exif:
            schema = schema.append(pa.field("exif", pa.string()))
        if self.compute_hash is not None and self.compute_hash not in schema.names:
            schema = schema.append(pa.field(self.compute_hash, pa.string()))
        columns = table.select(self.column_list).to_pydict()
        rows = list(zip(*(columns[c] for c in self.column_list), strict=True))
        del columns, table
        url_index = self.column_list.index("url")
        caption_index = self.column_list.index("caption") if "caption" in self.column_list else None
        oom_samples = math.ceil(math.log10(self.number_sample_per_shard))
        writer = self.sample_writer_class(shard_id, self.output_folder, self.save_caption, self.oom_shard_count,
                                          schema, self.encode_format)
        for got in self._session.fetch_all([r[url_index] for r in rows], self.thread_count):
            data = rows[got.index]
            key = compute_key(got.index, shard_id, oom_samples, self.oom_shard_count)
            caption = data[caption_index] if caption_index is not None else None
            meta = {**dict(zip(self.column_list, data, strict=True)), "key": key, "status": None,
                    "error_message": got.error, "width": None, "height": None, "original_width": None,
                    "original_height": None}
            if self.extract_exif:
                meta["exif"] = None
            if self.compute_hash is not None:
                meta[self.compute_hash] = None
            meta["attempts"] = got.attempts
            if got.error is not None:
                meta["status"] = "failed_to_download"
                writer.write(None, key, caption, meta)
                continue
            stream = io.BytesIO(got.body)
            img, width, height, original_width, original_height, error = self.resizer(stream, None)
            if error is not None:
                meta.update(status="failed_to_resize", error_message=error)
                writer.write(None, key, caption, meta)
                continue
            if self.extract_exif:
                try:
                    stream.seek(0)
                    meta["exif"] = json.dumps({k: str(v).strip() for k, v in
                                               exifread.process_file(stream, details=False).items() if v is not None})
                except Exception:  # noqa: BLE001 - as img2dataset: unreadable EXIF is no EXIF
                    meta["exif"] = None
            if self.compute_hash is not None:
                meta[self.compute_hash] = getattr(hashlib, self.compute_hash)(got.body).hexdigest()
            meta.update(status=SUCCESS, width=width, height=height, original_width=original_width,
                        original_height=original_height)
            writer.write(img, key, caption, meta)
        writer.close()


def _downloader(settings: Settings, folder: str, column_list: list[str], session: polite.Session,
                key_map=None) -> Downloader:
    return PoliteDownloader(
        session=session,
        sample_writer_class=functools.partial(OrderedShardWriter, key_map=key_map),
        resizer=make_resizer(settings), thread_count=settings.thread_count, save_caption=True,
        extract_exif=settings.extract_exif, output_folder=folder, column_list=column_list,
        timeout=settings.timeout, number_sample_per_shard=settings.samples_per_shard,
        oom_shard_count=OOM_SHARD_COUNT, compute_hash=settings.compute_hash, verify_hash_type=None,
        encode_format=settings.encode_format, retries=settings.limits.retries,  # unused: polite retries
        user_agent_token=settings.user_agent_token,
        disallowed_header_directives=list(settings.disallowed_header_directives) or None)


def _stats(rows: pa.Table, start: float, end: float, retried: int = 0) -> dict:
    """img2dataset's NNNNN_stats.json fields, counted from the status rows."""
    status = Counter(rows.column("status").to_pylist())
    messages = Counter(m if s != SUCCESS else SUCCESS for s, m in zip(
        rows.column("status").to_pylist(), rows.column("error_message").to_pylist(), strict=True))
    stats = {"count": rows.num_rows, "successes": status[SUCCESS],
             "failed_to_download": status["failed_to_download"], "failed_to_resize": status["failed_to_resize"],
             "duration": end - start, "start_time": start, "end_time": end,
             "status_dict": dict(sorted(messages.items()))}
    if retried:
        stats["retried"] = retried
    return stats


def download_shard(task: ShardTask, settings: Settings, raw_dir: str, on_rows=None,
                   session: polite.Session | None = None) -> pa.Table:
    """Download ``task`` into ``raw_dir`` (local or URL); return the shard's status rows (one per input row).

    ``on_rows(rows)`` runs before the shard is marked finished (e.g. to write its decisions), so a
    finished shard never lacks them. ``session``: the worker process's polite.Session (per-host
    limits and caches shared with its other shards); a fresh one when None.
    """
    name = shard_name(task.shard_id)
    if fs.is_local(raw_dir):
        work = os.path.join(fs.local_path(raw_dir), f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        os.makedirs(work)
    else:  # local scratch for img2dataset's writer; the finished files are uploaded
        work = tempfile.mkdtemp(prefix=f".{name}.tmp-")
    try:
        start = time.time()
        rows_file = os.path.join(work, "rows.feather")
        _copy_in(task.rows_path, rows_file)  # the Downloader deletes its input when done
        planned = feather.read_table(rows_file, memory_map=False)
        columns, expected = planned.column_names, planned.num_rows
        key_map = None
        if task.retry:
            # Failed rows sit at positions 0..m-1 of the retry file; give them back their own keys.
            keys = planned.column("key").to_pylist()
            columns = [c for c in columns if c != "key"]
            key_map = {settings.key(task.shard_id, j): k for j, k in enumerate(keys)}
            feather.write_feather(planned.select(columns), rows_file, compression="uncompressed")
        del planned
        _downloader(settings, work, columns, session or polite.Session(settings), key_map).download_shard(
            (task.shard_id, rows_file))
        tar, parquet = (os.path.join(work, f"{name}.{ext}") for ext in ("tar", "parquet"))
        rows = pq.read_table(parquet)
        if task.retry:
            rows = _merge(raw_dir, name, tar, rows)
            parquet = None
        stats = _stats(rows, start, time.time(), len(key_map or {}))
        if not task.retry and rows.num_rows != expected:
            raise RuntimeError(f"shard {name}: {rows.num_rows} status rows for {expected} input rows")
        if on_rows is not None:
            on_rows(rows)
        _publish(raw_dir, name, tar, parquet, rows, stats)
        fs.remove(task.rows_path)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_in(src: str, local: str) -> None:
    """``src`` (local path or URL) copied to the local file ``local``."""
    if fs.is_local(src):
        shutil.copyfile(fs.local_path(src), local)
        return
    with fs.open(src, "rb") as f, open(local, "wb") as out:
        shutil.copyfileobj(f, out)


def _place(local: str, final: str) -> None:
    """A finished local file onto its final name: renamed on a local disk, uploaded (all or
    nothing) elsewhere."""
    if fs.is_local(final):
        os.replace(local, fs.local_path(final))
        return
    with open(local, "rb") as f, fs.atomic_write(final) as out:
        shutil.copyfileobj(f, out)


def _merge(raw_dir: str, name: str, retry_tar: str, retried: pa.Table) -> pa.Table:
    """Retried rows replace their old rows; their images join the tar (by key: never twice)."""
    old = read_parquet(fs.join(raw_dir, f"{name}.parquet"))
    retried = retried.select(old.schema.names).cast(old.schema)
    keep = pc.invert(pc.is_in(old.column("key"), value_set=retried.column("key")))
    rows = pa.concat_tables([old.filter(keep), retried]).sort_by("key")
    write_tar(retry_tar + ".merged", _merge_sorted(fs.join(raw_dir, f"{name}.tar"), retry_tar))
    os.replace(retry_tar + ".merged", retry_tar)
    return rows


def _merge_sorted(old_tar: str, new_tar: str):
    """Two tars in key order -> one stream of samples in key order, the new one's on equal keys
    (streamed: a shard's images are never all in memory)."""
    old, new = iter_tar_samples(old_tar), iter_tar_samples(new_tar)
    a, b = next(old, None), next(new, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            yield a
            a = next(old, None)
            continue
        if a is not None and a[0] == b[0]:
            a = next(old, None)
        yield b
        b = next(new, None)


def _publish(raw_dir: str, name: str, tar: str, parquet: str | None, rows: pa.Table, stats: dict) -> None:
    """Move the finished files (in the local work folder) into place: tar, parquet, then the stats
    file that marks it done."""
    work, final = os.path.dirname(tar), fs.join(raw_dir, name)
    if parquet is None:  # merged rows: written as img2dataset's writer does, so a merge equals a clean run
        parquet = os.path.join(work, f"{name}.merged.parquet")
        writer = BufferedParquetWriter(parquet, rows.schema, 100)
        for row in rows.to_pylist():
            writer.write(row)
        writer.close()
    stats_file = os.path.join(work, f"{name}_stats.json")
    with open(stats_file, "w") as f:
        json.dump(stats, f, indent=4)
    _place(tar, final + ".tar")
    _place(parquet, final + ".parquet")
    _place(stats_file, final + "_stats.json")
