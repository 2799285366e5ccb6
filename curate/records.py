"""Sample and decision records: what flows between stages and what the decisions table holds."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

# Stages, in pipeline order; a decision row names the stage that made it. PROBE: learned filters on
# the stored embeddings (pipelines/probes.py), between balancing and CLIP-score selection.
STAGES = (READ, DECODE, BASIC_FILTER, BALANCE, PROBE, CLIP_SCORE, DECONTAMINATE, UNIQUE_KEYS, EXACT_DEDUP,
          NEAR_DEDUP, SEMDEDUP, WRITE) = (
    "read", "decode", "basic_filter", "balance", "probe", "clip_score", "decontaminate", "unique_keys",
    "exact_dedup", "near_dedup", "semdedup", "write")


# Scores and similarities are kept to 4 decimals, which makes them short to store and a small grid
# (select.fraction_cut counts at most 20,001 scores). Rounding does NOT make a score independent of
# the batch it was computed in: the last bits of a float32 cosine change with the batch and the
# thread count, and adjacent float32 values can round apart (0.96004999 -> 0.96, 0.96005005 -> 0.9601).
# What holds: decisions are a deterministic function of the stored scores and the config; a stored
# score reads back as the same number; a score is reproducible for a fixed batch plan, thread count,
# hardware and library versions, and the batch plan is fixed (pipelines/score.py batches each input
# shard alone, in input order, whatever the worker count). Byte-identical output across worker
# counts and runners is tested on this machine, not proven for other hardware or thread counts.
# tests/test_select.py checks the rounding boundary.
SCORE_DECIMALS = 4


def stable(value: float) -> float:
    """A score or similarity as stored and compared everywhere (``SCORE_DECIMALS``)."""
    return round(float(value), SCORE_DECIMALS)


@dataclass(frozen=True)
class RawSample:
    """One sample as read from a raw shard: its members' bytes, keyed by extension."""
    key: str
    shard_index: int
    shard_path: str
    member_index: int
    fields: dict[str, bytes]

    @property
    def order(self) -> tuple[int, int]:
        return (self.shard_index, self.member_index)


@dataclass(frozen=True)
class Sample:
    """A sample's metadata once decoded: no image bytes, so it is cheap to group and shuffle."""
    key: str
    shard_index: int
    shard_path: str
    member_index: int
    image_ext: str | None = None
    caption: str | None = None
    language: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    clip_score: float | None = None
    image_embedding: np.ndarray | None = field(default=None, repr=False)
    text_embedding: np.ndarray | None = field(default=None, repr=False)
    url: str | None = None  # the input json's url (exact dedup on url + caption)
    phash: str | None = None  # perceptual hash of the image, 16 hex digits (filters.phash)
    # the score threshold the sample passed (select.clip_threshold, its language's, or the top-fraction
    # cut); set by selection on a copy, so the rows of later steps record it
    clip_threshold: float | None = None
    image_format: str | None = None  # Pillow's format name (JPEG, PNG, WEBP, AVIF, ...), from the bytes
    # the metadata entries the caption names (filters.metadata), sorted; None = not matched, () = none
    metadata_entries: tuple[str, ...] | None = None
    # (head name, score) of each probe (pipelines/probes.py), in config order; None = no probe ran
    probe_scores: tuple[tuple[str, float], ...] | None = None

    @property
    def order(self) -> tuple[int, int]:
        """Input order: where the sample sat in the input, independent of processing order."""
        return (self.shard_index, self.member_index)


DECISION_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source_shard", pa.string()),
    ("source_index", pa.int64()),
    ("kept", pa.bool_()),
    ("reason", pa.string()),          # null when kept
    ("stage", pa.string()),
    ("detail", pa.string()),          # e.g. the decoder's error message
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("image_format", pa.string()),    # Pillow's format name of the image bytes (JPEG, PNG, WEBP, AVIF, ...)
    ("language", pa.string()),
    ("caption_chars", pa.int32()),
    ("sha256", pa.string()),
    ("phash", pa.string()),           # perceptual hash of the image (16 hex digits)
    ("clip_score", pa.float32()),
    ("clip_threshold", pa.float32()),
    ("dup_group", pa.string()),       # "sha256:<hex>", "url_caption:<hash>", "near:<kept key>", "semdedup:<kept key>", "eval:<item>"
    ("kept_instead", pa.string()),    # for a dropped duplicate: the key kept in its place
    ("dup_similarity", pa.float32()),  # image-embedding cosine to the kept sample (duplicates)
    ("dup_hash_distance", pa.int32()),  # perceptual-hash distance to the kept sample (duplicates)
    ("metadata_entries", pa.list_(pa.string())),  # the metadata entries the caption names (balancing, coverage)
    ("balance_cap", pa.float64()),    # the cap t of the sample's language where balancing decided
    ("attempts", pa.int32()),         # ingest: requests started for the row's URL (retries included)
    ("probe_scores", pa.map_(pa.string(), pa.float32())),  # head name -> score, where probes ran (probes:)
])


def decision(sample: Sample | RawSample, kept: bool, stage: str, reason: str | None = None,
             **values) -> dict:
    """A decisions-table row for ``sample``; ``values`` fill the columns behind the decision."""
    row = {name: None for name in DECISION_SCHEMA.names}
    row.update(key=sample.key, source_shard=sample.shard_path, source_index=sample.member_index,
               kept=kept, reason=reason, stage=stage)
    if isinstance(sample, Sample):
        row.update(width=sample.width, height=sample.height, image_format=sample.image_format,
                   language=sample.language,
                   # stripped, as the caption rule counts (filters.basic.caption_too_short)
                   caption_chars=None if sample.caption is None else len(sample.caption.strip()),
                   sha256=sample.sha256, phash=sample.phash, clip_score=sample.clip_score,
                   clip_threshold=sample.clip_threshold,
                   metadata_entries=None if sample.metadata_entries is None else list(sample.metadata_entries),
                   probe_scores=None if sample.probe_scores is None else dict(sample.probe_scores))
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"not decision columns: {sorted(unknown)}")
    row.update(values)
    row["_shard_index"] = sample.shard_index  # routing only; not written
    return row
