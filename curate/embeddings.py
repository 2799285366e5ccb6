"""Stored scores: CLIP embeddings and metadata in clip-retrieval's layout, written once, reused by selection.

    OUT/embeddings/img_emb/img_emb_P.npy     float16, L2-normalised, one row per scored sample
    OUT/embeddings/text_emb/text_emb_P.npy   float16, L2-normalised, rows aligned with img_emb
    OUT/embeddings/metadata/metadata_P.parquet  key, caption, language, sizes, sha256, phash, clip_score,
                                             where the sample sits in its input shard, its url, its
                                             image member's extension and the image's real format

P is the index of the input shard, so autofaiss and clip-retrieval can index the folders as they are.
A part is written as soon as its input shard is scored (pipelines/score.py's ScoreShards, which
checkpoints the shard for a resumed run: curate.resume).
Samples that could not be scored (unreadable tar, undecodable image) are rows of OUT/decisions with
stage 'read' or 'decode'; a selection run over stored scores carries them over.
"""
from __future__ import annotations

import io
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import fs
from curate.decisions import InputCount, recorded_count
from curate.io import read_parquet, write_bytes, write_parquet
from curate.outputs import DECISIONS, MAIN, split
from curate.records import DECISION_SCHEMA, DECODE, READ, Sample, stable

METADATA_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("language", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string()), ("phash", pa.string()), ("clip_score", pa.float32()),
    ("image_ext", pa.string()), ("shard_index", pa.int64()), ("source_shard", pa.string()),
    ("source_index", pa.int64()), ("url", pa.string()), ("image_format", pa.string()),
])


def write_part(emb_dir: str, part: int, samples: list[Sample]) -> None:
    """One input shard's scored samples, in input order, as aligned npy + parquet files."""
    samples = sorted(samples, key=lambda s: s.order)
    for sub, prefix, rows in (("img_emb", "img_emb", [s.image_embedding for s in samples]),
                              ("text_emb", "text_emb", [s.text_embedding for s in samples])):
        fs.makedirs(fs.join(emb_dir, sub))
        buf = io.BytesIO()
        np.save(buf, np.stack(rows).astype(np.float16))
        write_bytes(fs.join(emb_dir, sub, f"{prefix}_{part}.npy"), buf.getvalue())
    table = pa.Table.from_pylist([{
        "key": s.key, "caption": s.caption, "language": s.language, "width": s.width, "height": s.height,
        "sha256": s.sha256, "phash": s.phash, "clip_score": s.clip_score, "image_ext": s.image_ext, "shard_index": s.shard_index,
        "source_shard": s.shard_path, "source_index": s.member_index, "url": s.url,
        "image_format": s.image_format} for s in samples], schema=METADATA_SCHEMA)
    fs.makedirs(fs.join(emb_dir, "metadata"))
    write_parquet(fs.join(emb_dir, "metadata", f"metadata_{part}.parquet"), table)


def read_part(emb_dir: str, part: int) -> list[Sample]:
    meta_path = fs.join(emb_dir, "metadata", f"metadata_{part}.parquet")
    if not fs.exists(meta_path):
        return []  # no sample of this input shard could be scored
    meta = read_parquet(meta_path).to_pylist()
    img = _load_npy(fs.join(emb_dir, "img_emb", f"img_emb_{part}.npy"))
    txt = _load_npy(fs.join(emb_dir, "text_emb", f"text_emb_{part}.npy"))
    if not len(meta) == len(img) == len(txt):
        raise ValueError(f"{emb_dir}: part {part} has {len(meta)} metadata rows but {len(img)}/{len(txt)} embeddings")
    return [Sample(key=m["key"], shard_index=m["shard_index"], shard_path=m["source_shard"],
                   member_index=m["source_index"], image_ext=m["image_ext"], caption=m["caption"],
                   language=m["language"], width=m["width"], height=m["height"], sha256=m["sha256"], phash=m.get("phash"),
                   clip_score=None if m["clip_score"] is None else stable(m["clip_score"]), url=m.get("url"),
                   image_format=m.get("image_format"),  # stores before it lack it: the member keeps its name
                   image_embedding=img[i], text_embedding=txt[i]) for i, m in enumerate(meta)]


def _load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(fs.read_bytes(path))).astype(np.float32)


def list_parts(run_dir: str) -> list[int]:
    """Input shard indices of a run: those with stored scores or with decisions."""
    names = fs.glob(fs.join(run_dir, "embeddings", "metadata", "metadata_*.parquet"))
    parts = {int(re.search(r"metadata_(\d+)\.parquet$", n).group(1)) for n in names}
    parts |= {int(fs.basename(n)[:-8]) for n in fs.glob(fs.join(run_dir, "decisions", "[0-9]*.parquet"))}
    return sorted(parts)


def stored_hashes(run_dir: str) -> bool:
    """Whether a run's stored metadata has the perceptual-hash column (stores before it do not)."""
    names = sorted(fs.glob(fs.join(run_dir, "embeddings", "metadata", "metadata_*.parquet")))
    if not names:
        return True  # nothing stored: nothing to miss
    with fs.open(names[0], "rb") as f:
        return "phash" in pq.read_schema(f).names


def check_store(run_dir: str) -> None:
    """Raise ValueError with one line if ``run_dir`` holds no stored scores."""
    if not fs.glob(fs.join(run_dir, "embeddings", "metadata", "metadata_*.parquet")):
        raise ValueError(f"no stored scores in {run_dir!r} (expected embeddings/metadata/metadata_*.parquet "
                         "from a score or laion_filter run)")


class _ReadPart(beam.DoFn):
    """One input shard of a score run -> its stored Samples (MAIN), its unscored rows and its
    InputCount (DECISIONS): the samples the score run read from that shard when it recorded them
    (so a sample the store lost is missed, not forgotten), else those read here."""

    def __init__(self, run_dir: str):
        self._run_dir = run_dir

    def setup(self):
        self._parts = len(list_parts(self._run_dir))  # what ReadStoredScores lists: the run's input shards

    def process(self, part):
        read = 0
        for sample in read_part(fs.join(self._run_dir, "embeddings"), part):
            read += 1
            yield MAIN, sample
        path = fs.join(self._run_dir, "decisions", f"{part:05d}.parquet")
        recorded = None
        if fs.exists(path):
            recorded = recorded_count(path)
            for row in read_parquet(path, schema=DECISION_SCHEMA).to_pylist():
                if row["stage"] in (READ, DECODE):  # samples the score run could not score
                    read += row["source_index"] >= 0  # a shard-level row (unreadable tar) is no sample
                    row["_shard_index"] = part
                    yield DECISIONS, row
        yield DECISIONS, InputCount(part, read if recorded is None else recorded.samples, self._parts)


class ReadStoredScores(beam.PTransform):
    """A score run's folder -> Samples with scores and embeddings (main) and its unscored rows ('decisions')."""

    def __init__(self, run_dir: str):
        super().__init__()
        self._run_dir = run_dir

    def expand(self, pbegin):
        parts = list_parts(self._run_dir)
        return split(pbegin
                     | "ListParts" >> beam.Create(parts)
                     | "Spread" >> beam.Reshuffle()
                     | "ReadPart" >> beam.ParDo(_ReadPart(self._run_dir)), "ReadPart", "samples")
