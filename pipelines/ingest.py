"""ingest: URL + caption tables -> raw WebDataset shards in img2dataset's layout, one status row per input row.

img2dataset's own Downloader, Resizer and writer do each shard's work (curate/ingest/shard.py);
Beam distributes the shards. A rerun skips finished shards and redoes unfinished ones;
``ingest.retry_failed`` downloads again only the rows that failed, merging them into their shards.
Input tables and the output folder may be local paths or fsspec URLs (every path goes through curate.fs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import urllib.parse
import uuid

import apache_beam as beam
import pyarrow as pa
from curate.pipelines import lists as list_steps
from curate.pipelines.specs import PIPELINES
from pyarrow import feather

from curate import fs, progress
from curate.decisions import InputCount, write_decision_file
from curate.ingest import guard, polite, table
from curate.ingest.shard import Settings, ShardTask, is_finished, retryable, shard_name
from curate.io import read_parquet, write_bytes
from curate.outputs import done
from curate.records import DECISION_SCHEMA

log = logging.getLogger("curate")

INGEST = "ingest"  # the stage named in decision rows
RAW = "raw"        # OUT/raw holds the raw shards
DEFAULT_DIRECTIVES = "noai, noimageai, noindex, noimageindex"

SCHEMA = PIPELINES["ingest"].schema  # pipelines/specs.py, with INGEST_SCHEMA


def reads_table(pipeline_module, spec: str | None) -> bool:
    """Whether a run starts from URL tables: always for ingest; for a pipeline whose schema holds
    the ingest keys (laion_filter), when given one."""
    return pipeline_module.SCHEMA is SCHEMA or ("ingest.url_col" in pipeline_module.SCHEMA and table.is_url_table(spec))


def settings(cfg: dict) -> Settings:
    directives = tuple(d.strip().lower() for d in cfg["ingest.disallowed_header_directives"].split(",") if d.strip())
    token = cfg["ingest.user_agent_token"]
    return Settings(
        samples_per_shard=cfg["ingest.samples_per_shard"], thread_count=cfg["ingest.thread_count"],
        timeout=cfg["ingest.timeout"], image_size=cfg["ingest.image_size"],
        resize_mode=cfg["ingest.resize_mode"], resize_only_if_bigger=cfg["ingest.resize_only_if_bigger"],
        min_image_size=cfg["ingest.min_image_size"], max_aspect_ratio=cfg["ingest.max_aspect_ratio"],
        max_image_pixels=cfg["ingest.max_image_pixels"], encode_format=cfg["ingest.encode_format"],
        encode_quality=cfg["ingest.encode_quality"], compute_hash=cfg["ingest.compute_hash"],
        extract_exif=cfg["ingest.extract_exif"], user_agent_token=token.strip().lower() if token else None,
        reduced_decode=cfg["ingest.reduced_decode"],
        disallowed_header_directives=directives,
        policy=guard.Policy.from_config(cfg["ingest.max_image_bytes"], cfg["ingest.deadline_seconds"],
                                        cfg["ingest.allow_networks"], cfg["ingest.check_content_type"]),
        limits=polite.Limits.from_config(cfg),
        # URL and domain lists before any request, hash lists on the downloaded bytes (polite.Session)
        lists=list_steps.from_config(cfg) or None)


# What ingest can apply itself; phash and term lists need the decoded image and the caption's language.
INGEST_LIST_KINDS = ("url", "domain", "md5", "sha1", "sha256")


def validate(cfg: dict) -> None:
    """The block and opt-out lists, before any work (pipelines/lists.py)."""
    list_steps.validate(cfg, INGEST_LIST_KINDS, "ingest applies url, domain and hash lists; phash and term lists "
                        "apply where images are decoded: give them to laion_filter or score")


def report_sections(cfg: dict) -> dict:
    """report.json's per-list match counts (pipelines/lists.py)."""
    return list_steps.report_section(cfg)


def check_input(cfg: dict) -> None:
    """Everything that can be checked before any work; raises ValueError with one line.

    Every table is read here (a parquet file's url and caption columns only), so a table that
    cannot be ingested (not UTF-8, a jsonl column changing type, a caption column of numbers ...)
    stops the run before the output folder is touched, naming the table, even when it is the last
    of a folder. The launcher reads the tables again to plan the shards.
    """
    if cfg["input"] is None:
        raise ValueError("ingest needs --input: a URL table (.parquet, .csv, .tsv, .jsonl, optionally .gz) or a folder of them")
    guard.parse_networks(cfg["ingest.allow_networks"])
    paths = table.list_tables(cfg["input"])
    for path in paths:  # header only: a wrong column name is reported at once
        table.check_columns(path, cfg["ingest.url_col"], cfg["ingest.caption_col"])
    if cfg["ingest.encode_format"] == "png" and cfg["ingest.encode_quality"] > 9:
        raise ValueError("ingest.encode_quality is png's compression level for encode_format png: 0-9")
    for path in paths:
        table.read_table(path, cfg["ingest.url_col"], cfg["ingest.caption_col"], check_only=True)


def plan(cfg: dict, write: bool = True) -> list[ShardTask]:
    """Cut the tables into shards (img2dataset's numbering: consecutive across files, none spanning
    two) and write the rows of each shard still to do under OUT/raw/.pending.

    Finished shards are skipped; with retry_failed their retryable failed rows are planned instead.
    ``write=False`` (a dry run): the same tasks, and nothing written or removed anywhere.
    """
    raw = fs.join(cfg["output"], RAW)
    pending = fs.join(raw, ".pending")
    if not write:
        return _plan_shards(cfg, raw, pending, write=False)
    if fs.is_local(raw):
        shutil.rmtree(pending, ignore_errors=True)  # rows planned by an earlier, interrupted run
        os.makedirs(pending)
        for leftover in fs.glob(fs.join(raw, ".*.tmp-*")):  # work folders of a killed run
            shutil.rmtree(leftover, ignore_errors=True)
    else:  # the same on a remote folder (work folders are local there; temp names of killed uploads)
        for leftover in [pending, *fs.glob(fs.join(raw, ".*.tmp-*"))]:
            if fs.exists(leftover):
                fs.remove(leftover)
        fs.makedirs(pending)
    try:
        tasks = _plan_shards(cfg, raw, pending)
    except BaseException:  # a table that changed since check_input, an interrupt: no rows left planned
        with contextlib.suppress(OSError):
            fs.remove(pending)
        raise
    if not tasks:
        _remove_if_empty(pending)
    return tasks


def host_order(urls: list) -> list[int]:
    """Row positions sorted by the URL's host name (lower-cased; a URL without one sorts first), in
    table order within a host: cut into shards, one host's URLs land in as few shards, and so in as
    few worker processes at once, as their count allows (ingest.group_by_host)."""
    def host(url):
        try:
            return (urllib.parse.urlsplit(url.strip()).hostname or "") if isinstance(url, str) else ""
        except ValueError:
            return ""
    return sorted(range(len(urls)), key=lambda i: (host(urls[i]), i))


def _plan_shards(cfg: dict, raw: str, pending: str, write: bool = True) -> list[ShardTask]:
    n, tasks, shard_id = cfg["ingest.samples_per_shard"], [], 0
    for path in table.list_tables(cfg["input"]):
        rows = table.read_table(path, cfg["ingest.url_col"], cfg["ingest.caption_col"])
        order = None
        if cfg["ingest.group_by_host"]:
            order = host_order(rows.column("url").to_pylist())
            rows = rows.take(order)
        # img2dataset's column order: carried columns, caption, url
        columns = [c for c in rows.column_names if c not in ("caption", "url")] + [
            c for c in ("caption", "url") if c in rows.column_names]
        for start in range(0, rows.num_rows, n):
            todo = None
            if not is_finished(raw, shard_id):
                todo = rows.slice(start, n).select(columns)
            elif cfg["ingest.retry_failed"]:
                todo = _failed_rows(fs.join(raw, shard_name(shard_id) + ".parquet"), columns)
            if todo is not None and todo.num_rows:
                target = fs.join(pending, f"{shard_name(shard_id)}.feather")
                if write:
                    _write_rows(target, todo)
                tasks.append(ShardTask(shard_id, target, path, start, table_rows=min(n, rows.num_rows - start),
                                       shards=0, retry=is_finished(raw, shard_id),
                                       source_rows=None if order is None else tuple(order[start:start + n])))
            shard_id += 1
    return [dataclasses.replace(t, shards=shard_id) for t in tasks]  # the total is known only now


def _write_rows(target: str, rows: pa.Table) -> None:
    """A shard's planned rows as an uncompressed Arrow IPC (feather) file, atomically (local or remote)."""
    buf = pa.BufferOutputStream()
    feather.write_feather(rows, buf, compression="uncompressed")
    write_bytes(target, buf.getvalue().to_pybytes())


def _remove_if_empty(folder: str) -> None:
    """Remove ``folder`` once nothing is left in it (object stores have no empty folders to remove)."""
    with contextlib.suppress(OSError):  # not empty (another shard still pending), or already gone
        if fs.is_local(folder):
            os.rmdir(folder)
        elif not fs.glob(fs.join(folder, "*")):
            fs.remove(folder)


def _failed_rows(parquet: str, columns: list[str]) -> pa.Table:
    rows = read_parquet(parquet)
    mask = pa.array([retryable(r) for r in rows.column("reason").to_pylist()], pa.bool_())
    return rows.filter(mask).select([*columns, "key"])


def decision_rows(task: ShardTask, s: Settings, rows: pa.Table, successes: bool) -> list[dict]:
    """One decisions-table row per input row (only failures when ``successes`` is False: then a
    later stage decides about the downloaded samples), with its ``attempts`` (requests started for
    the URL; the shard parquet's ``attempts`` column has them for every row)."""
    out = []
    names = ["key", "status", "reason", "error_message", "url", "width", "height"]
    for r in rows.select([*names, *(["attempts"] if "attempts" in rows.column_names else [])]).to_pylist():
        if r["reason"] is None and not successes:
            continue
        row = dict.fromkeys(DECISION_SCHEMA.names)
        row.update(key=r["key"], source_shard=task.source, source_index=task.source_index(s.index(task.shard_id, r["key"])),
                   kept=r["reason"] is None, reason=r["reason"], stage=INGEST, width=r["width"], height=r["height"],
                   attempts=r.get("attempts"),
                   detail=None if r["reason"] is None else f"{r['error_message']}; url {str(r['url'])[:500]}")
        out.append(row)
    return out


class DownloadShardFn(beam.DoFn):
    """ShardTask -> the shard in OUT/raw (img2dataset's files) and its rows in OUT/decisions."""

    def __init__(self, s: Settings, out: str, successes: bool, run_id: str):
        self._s, self._out, self._successes, self._run_id = s, out, successes, run_id

    def setup(self):
        # img2dataset takes seconds to import: once per worker, before its first shard, not in the CLI.
        from curate.ingest.download import download_shard

        self._download_shard = download_shard
        # Per-host limits, robots.txt and DNS caches: one per worker process for this run.
        self._session = polite.session(self._run_id, self._s)

    def process(self, task: ShardTask):
        folder = fs.join(self._out, "decisions")

        def write_decisions(rows):
            fs.makedirs(folder)
            # Counted from the URL table; without successes, the downloaded rows go on to the raw shard
            # and are counted again where it is read.
            downloaded = None if self._successes else sum(r is None for r in rows.column("reason").to_pylist())
            write_decision_file(fs.join(folder, f"{INGEST}-{shard_name(task.shard_id)}.parquet"),
                                decision_rows(task, self._s, rows, self._successes),
                                InputCount(task.shard_id, task.table_rows, task.shards, downloaded))

        t0 = time.perf_counter()
        if not progress.advance("ingest", 0, " rows", status=f"downloading {shard_name(task.shard_id)}"):
            log.info("downloading shard %s%s", shard_name(task.shard_id), " (retrying its failed rows)" if task.retry else "")
        rows = self._download_shard(task, self._s, fs.join(self._out, RAW), on_rows=write_decisions,
                                    session=self._session)
        _remove_if_empty(fs.join(self._out, RAW, ".pending"))  # the last shard done leaves none behind
        ok = sum(r is None for r in rows.column("reason").to_pylist())
        seconds = time.perf_counter() - t0
        if not progress.advance("ingest", rows.num_rows, " rows", status=f"{shard_name(task.shard_id)}: {ok} downloaded"):
            log.info("ingested shard %s: %d of %d rows downloaded in %.1fs (%.0f rows/s)", shard_name(task.shard_id),
                     ok, rows.num_rows, seconds, rows.num_rows / max(seconds, 1e-9))
        beam.metrics.Metrics.counter("curate", "ingest_rows").inc(rows.num_rows)
        beam.metrics.Metrics.counter("curate", "ingest_successes").inc(ok)
        yield shard_name(task.shard_id), rows.num_rows, ok


class Ingest(beam.PTransform):
    """Planned shards -> raw shards + status rows; ``expand`` reads as the stage's description."""

    def __init__(self, cfg: dict, tasks: list[ShardTask], successes: bool = True):
        super().__init__()
        self._cfg, self._tasks, self._successes = cfg, tasks, successes

    def expand(self, pbegin):
        written = (pbegin
                   | "PlannedShards" >> beam.Create(self._tasks)
                   | "Spread" >> beam.Reshuffle()
                   | "DownloadShard" >> beam.ParDo(DownloadShardFn(settings(self._cfg), self._cfg["output"],
                                                                   self._successes, uuid.uuid4().hex)))
        return done([written])


def build(pipeline: beam.Pipeline, config: dict, successes: bool = True) -> None:
    """Add ingest to ``pipeline``; with ``--dry_run=True`` the shards are planned without writing
    their rows (the job is built, never run)."""
    from apache_beam.options.pipeline_options import TestOptions

    dry_run = bool(pipeline.options.view_as(TestOptions).dry_run)
    pipeline | "Ingest" >> Ingest(config, plan(config, write=not dry_run), successes)


def ingest_first(cfg: dict, options) -> dict:
    """For a pipeline given a URL table: ingest into OUT/raw (failures become its decision rows),
    then return the config that reads OUT/raw as its raw shards."""
    pipeline = beam.Pipeline(options=options)
    build(pipeline, cfg, successes=False)
    pipeline.run().wait_until_finish()
    return {**cfg, "input": fs.join(cfg["output"], RAW)}


def describe_outputs(cfg: dict) -> str:
    """Where the closing summary points (the CLI's hook)."""
    return (f"raw shards in {fs.join(cfg['output'], RAW)} (status of every row in each NNNNN.parquet, "
            f"column reason)")
