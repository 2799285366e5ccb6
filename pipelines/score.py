"""score: raw shards -> CLIP image and text embeddings plus per-sample metadata, computed once.

The costly half of curation. Its output folder feeds laion_filter's ``scores`` setting, which then
re-selects with any thresholds without loading the model again.
"""
from __future__ import annotations

from types import SimpleNamespace

import apache_beam as beam
from curate.filters.sample import decode_sample
from curate.pipelines.specs import PIPELINES

from curate import fs
from curate.config import section
from curate.decisions import WriteDecisions
from curate.embeddings import WriteEmbeddings
from curate.models.clip import ScorerSpec
from curate.outputs import DECISIONS, MAIN, done, split
from curate.raw_shards import list_input_shards, read_shard
from curate.records import decision
from curate.scoring import (
    ClipPreprocessor,
    ScoreWithClip,
    cpu_threads_per_worker,
    stack,
)
from curate.timing import timed

SCHEMA = PIPELINES["score"].schema  # pipelines/specs.py


def scorer_spec(config: dict) -> ScorerSpec:
    s = section(config, "scorer")
    return ScorerSpec(model=s["model"], pretrained=s["pretrained"], device=s["device"], precision=s["precision"])


class ShardToClipBatches(beam.DoFn):
    """(shard index, path) -> ClipBatches of the shard's decodable samples (MAIN), rows for the rest.

    A batch holds ``batch_size`` consecutive samples of one shard, the shard's last batch fewer. On
    CPU a score's last bits depend on the batch it is computed in; built inside one process() call,
    batches have the same content on every runner, bundling and worker count, and so do the scores
    and every output behind them. Decoding and preprocessing run here, on CPU, before batching.
    """

    def __init__(self, spec: ScorerSpec, batch_size: int, max_image_pixels: int, total_shards: int,
                 detect_language: bool = True):
        self._spec, self._n, self._max_pixels, self._total = spec, batch_size, max_image_pixels, total_shards
        self._detect_language = detect_language

    def setup(self):
        self._preprocess = ClipPreprocessor(self._spec)

    def process(self, element):
        batch = []
        for tag, value in read_shard(*element, self._total):
            if tag != MAIN:
                yield tag, value
                continue
            with timed("decode"):
                verdict = decode_sample(value, self._max_pixels, detect_language=self._detect_language)
            if verdict.reason:
                yield DECISIONS, decision(verdict.sample, False, verdict.stage, verdict.reason, detail=verdict.detail)
                continue
            batch.append((verdict.sample, self._preprocess(verdict.image, verdict.sample.caption)))
            if len(batch) == self._n:
                yield MAIN, stack(batch)
                batch = []
        if batch:
            yield MAIN, stack(batch)


class ScoreRawShards(beam.PTransform):
    """Raw shards -> .samples (scored Samples) and .decisions (rows for what could not be scored)."""

    def __init__(self, config: dict, shard_paths: list[str], cpu_threads: int = 0):
        super().__init__()
        self._cfg, self._paths, self._threads = config, shard_paths, cpu_threads

    def expand(self, pbegin):
        cfg, spec = self._cfg, scorer_spec(self._cfg)
        prepared = split(
            pbegin
            | "ListShards" >> beam.Create(list(enumerate(self._paths)))
            | "Spread" >> beam.Reshuffle()
            | "ReadDecodePreprocess" >> beam.ParDo(ShardToClipBatches(
                spec, cfg["scorer.batch_size"], cfg["filters.max_image_pixels"], len(self._paths),
                detect_language=cfg["select.detect_language"])),
            "ReadDecodePreprocess", "batches")
        scored = prepared.batches | "ClipScore" >> ScoreWithClip(spec, self._threads)
        return SimpleNamespace(samples=scored, decisions=prepared.decisions)


class Score(beam.PTransform):
    def __init__(self, config: dict, shard_paths: list[str], cpu_threads: int = 0):
        super().__init__()
        self._cfg, self._paths, self._threads = config, shard_paths, cpu_threads

    def expand(self, pbegin):
        out = self._cfg["output"]
        scored = pbegin | "ScoreRawShards" >> ScoreRawShards(self._cfg, self._paths, self._threads)
        embeddings = scored.samples | "WriteEmbeddings" >> WriteEmbeddings(fs.join(out, "embeddings"))
        rows = scored.samples | "ScoredRows" >> beam.Map(lambda s: decision(s, True, "clip_score"))
        decisions = ((rows, scored.decisions) | "AllDecisions" >> beam.Flatten()
                     | "WriteDecisions" >> WriteDecisions(fs.join(out, "decisions")))
        return done((embeddings, decisions))


def build(pipeline: beam.Pipeline, config: dict) -> None:
    pipeline | "Score" >> Score(config, list_input_shards(config["input"]), cpu_threads_per_worker(pipeline.options))
