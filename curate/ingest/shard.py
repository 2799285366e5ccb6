"""Raw shards' names, keys and status reasons, and the settings a shard is downloaded with.

Kept apart from download.py, which imports img2dataset (seconds at start-up), so the CLI and the
planner stay light.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from curate import fs
from curate.filters import blocklist
from curate.ingest import guard, polite

OOM_SHARD_COUNT = 5  # shard names NNNNN, as img2dataset's default
SUCCESS = "success"
# img2dataset's Resizer messages -> reasons
RESIZE_REASONS = {"image too small": "image_too_small", "image area too large": "image_too_large",
                  "aspect ratio too large": "extreme_aspect_ratio", "Image decoding error": "undecodable_image"}
DECOMPRESSION_BOMB = "decompression_bomb"
HASH_MISMATCH = "hash_mismatch"
RESIZE_ERROR = "resize_error"
# Block and opt-out lists at ingest (polite.Session.fetch_all): URL and domain lists before any
# request, hash lists on the downloaded bytes.
LIST_REASONS = frozenset({blocklist.reason(k) for k in blocklist.KINDS} | {blocklist.OPTED_OUT_LIST})


def status_reason(status: str | None, error_message: str | None) -> str | None:
    """The specific reason of one row's status: None for a success, else a short name.

    Download errors carry their reason as the message's prefix (guard.error_reason); the Resizer's
    messages are mapped by RESIZE_REASONS.
    """
    if status == SUCCESS:
        return None
    msg = error_message or ""
    if status == "failed_to_resize":
        if msg.startswith(DECOMPRESSION_BOMB + ":"):
            return DECOMPRESSION_BOMB
        return RESIZE_REASONS.get(msg, RESIZE_ERROR)
    if msg == "hash mismatch":
        return HASH_MISMATCH
    head = msg.split(":", 1)[0]
    if head in guard.REASONS or head in LIST_REASONS or (head.startswith("http_") and head[5:].isdigit()):
        return head
    return guard.DOWNLOAD_ERROR


def retryable(reason: str | None) -> bool:
    """Rows --retry-failed downloads again: failed downloads, except what the policy refused
    (a retry would be refused again) and failed resizes (the same bytes fail the same way)."""
    return reason is not None and reason not in guard.POLICY_REASONS and reason not in LIST_REASONS and reason not in (
        *RESIZE_REASONS.values(), DECOMPRESSION_BOMB, RESIZE_ERROR)


@dataclass(frozen=True)
class Settings:
    """What a shard is downloaded, resized and written with (config keys ingest.*); ``limits``: the
    per-host politeness (curate/ingest/polite.py)."""
    samples_per_shard: int
    thread_count: int
    timeout: float
    image_size: int
    resize_mode: str
    resize_only_if_bigger: bool
    min_image_size: int
    max_aspect_ratio: float | None
    max_image_pixels: int
    encode_format: str
    encode_quality: int
    compute_hash: str | None
    extract_exif: bool
    user_agent_token: str | None
    disallowed_header_directives: tuple
    policy: guard.Policy
    limits: polite.Limits
    lists: blocklist.Blocklists | None  # block and opt-out lists: URL, domain and hash lists apply at ingest
    reduced_decode: bool  # large JPEGs decoded at 1/2-1/8 scale before the resize (curate/ingest/resize.py)

    @property
    def oom_samples(self) -> int:
        return math.ceil(math.log10(self.samples_per_shard))

    def key(self, shard_id: int, index: int) -> str:
        """img2dataset's key of row ``index`` of a shard."""
        from img2dataset.downloader import compute_key

        return compute_key(index, shard_id, self.oom_samples, OOM_SHARD_COUNT)

    def index(self, shard_id: int, key: str) -> int:
        return int(key) - shard_id * 10 ** self.oom_samples


@dataclass(frozen=True)
class ShardTask:
    """One shard to download: rows (Arrow IPC file, local path or URL) of ``source`` from ``first_row`` on; ``retry``:
    the rows are the failed ones of a finished shard, merged back into it. ``table_rows``: the shard's rows in
    the URL table (all of them, also on a retry) and ``shards``: the tables' shards in all, counted when
    planning, against which the shard's decision rows are checked (curate.report). ``source_rows``: the
    table row of each position in the shard when ``ingest.group_by_host`` reordered the rows (None:
    positions are consecutive rows from ``first_row``)."""
    shard_id: int
    rows_path: str
    source: str
    first_row: int
    table_rows: int
    shards: int
    retry: bool = False
    source_rows: tuple | None = None

    def source_index(self, position: int) -> int:
        """The table row of the shard's row at ``position``."""
        return self.first_row + position if self.source_rows is None else self.source_rows[position]


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{OOM_SHARD_COUNT}d}"


def is_finished(raw_dir: str, shard_id: int) -> bool:
    return fs.exists(fs.join(raw_dir, f"{shard_name(shard_id)}_stats.json"))
