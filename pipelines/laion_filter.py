"""laion_filter: raw shards -> basic filters -> CLIP score threshold -> exact and near dedup -> curated shards.

The recipe of LAION-5B (CLIP cosine threshold) with DataComp's basic filter in front and
duplicate removal behind, as one Beam graph. Every input sample ends as exactly one row of the
decisions table.
"""
from __future__ import annotations

import os
import time

import apache_beam as beam

from curate.config import Option, Schema, section
from curate.models.clip import ScorerSpec
from curate.records import CLIP_SCORE, EXACT_DEDUP, NEAR_DEDUP, decision
from curate.scoring import ScoreWithClip, cpu_threads_per_worker
from curate.shards import ReadRawShards, WriteCuratedShards, WriteDecisions, list_input_shards
from filters import basic, dedup
from filters.sample import BasicFilterParams, check_sample

DESCRIPTION = "basic filters, CLIP score threshold, exact and near-duplicate removal, curated shards"

SCHEMA: Schema = {
    "input": Option(str, "raw shards: a folder, a glob or a .tar; null = the built-in sample corpus", nullable=True),
    "output": Option(str, "output folder"),
    "sample_corpus.samples": Option(int, "size of the built-in sample corpus", min=1),
    "sample_corpus.seed": Option(int, "seed of the built-in sample corpus"),
    "sample_corpus.noise": Option(float, "fraction of noisy samples in the built-in corpus", min=0, max=1),
    "filters.min_image_size": Option(int, "drop images whose shorter side is below this (px)", min=0),
    "filters.max_aspect_ratio": Option(float, "drop images whose long/short side ratio exceeds this", min=1),
    "filters.min_caption_words": Option(int, "drop captions with fewer words", min=0),
    "filters.min_caption_chars": Option(int, "drop captions with fewer characters", min=0),
    "filters.boilerplate_captions": Option(bool, "drop file-name and web-boilerplate captions"),
    "filters.max_image_pixels": Option(int, "refuse images with more pixels (decompression bombs)", min=1),
    "scorer.model": Option(str, "open_clip model name (open_clip.list_models()) or curate-demo-64"),
    "scorer.pretrained": Option(str, "'demo', an open_clip pretrained tag, a local checkpoint path, or 'random'"),
    "scorer.batch_size": Option(int, "images per model call", min=1),
    "scorer.device": Option(str, "auto picks CUDA when available", choices=("auto", "cpu", "cuda")),
    "scorer.precision": Option(str, "autocast on GPU; CPU runs fp32", choices=("auto", "fp32", "fp16", "bf16")),
    "select.clip_threshold": Option(float, "drop pairs whose image-text cosine is below this", min=-1, max=1),
    "dedup.exact": Option(bool, "drop samples whose image bytes repeat (sha256)"),
    "dedup.near": Option(bool, "drop near-duplicate images (CLIP image-embedding cosine)"),
    "dedup.near_threshold": Option(float, "image cosine at or above which two images are near duplicates",
                                   min=0, max=1),
    "shards.samples_per_shard": Option(int, "samples per curated tar (the last may hold fewer)", min=1),
}


def scorer_spec(config: dict) -> ScorerSpec:
    s = section(config, "scorer")
    return ScorerSpec(model=s["model"], pretrained=s["pretrained"], device=s["device"], precision=s["precision"])


class CheckSamples(beam.DoFn):
    """RawSample -> (Sample, image) for samples that pass; a decision row (tag 'decisions') otherwise."""

    def __init__(self, params: BasicFilterParams):
        self._params = params

    def process(self, raw):
        t0 = time.perf_counter()
        verdict = check_sample(raw, self._params)
        beam.metrics.Metrics.counter("curate.time_ms", "decode_and_filter").inc(
            int((time.perf_counter() - t0) * 1000))
        if verdict.reason:
            yield beam.pvalue.TaggedOutput("decisions", decision(
                verdict.sample, False, verdict.stage, verdict.reason, detail=verdict.detail))
        else:
            yield verdict.sample, verdict.image


class ApplyThreshold(beam.DoFn):
    def __init__(self, threshold: float):
        self._threshold = threshold

    def process(self, sample):
        reason = basic.low_clip_score(sample.clip_score, self._threshold)
        if reason:
            yield beam.pvalue.TaggedOutput("decisions", decision(
                sample, False, CLIP_SCORE, reason, clip_threshold=self._threshold))
        else:
            yield sample


def _duplicate_decision(d: dedup.Duplicate, stage: str, reason: str) -> dict:
    return decision(d.sample, False, stage, reason, dup_group=d.group, kept_instead=d.kept.key,
                    dup_similarity=d.similarity)


class ExactDedupFn(beam.DoFn):
    """Samples sharing a sha256 -> the kept one (main) and the others as Duplicates (tag 'duplicates')."""

    def process(self, element):
        _sha, group = element
        kept, dups = dedup.exact_duplicates(list(group))
        yield kept
        for d in dups:
            yield beam.pvalue.TaggedOutput("duplicates", d)


class NearDedupFn(beam.DoFn):
    """All remaining samples (and the exact Duplicates) -> kept samples and decisions for the rest."""

    def __init__(self, threshold: float):
        self._threshold = threshold

    def process(self, element):
        _, items = element
        samples = [x for x in items if not isinstance(x, dedup.Duplicate)]
        exact = [x for x in items if isinstance(x, dedup.Duplicate)]
        t0 = time.perf_counter()
        kept, near = dedup.near_duplicates(samples, self._threshold)
        beam.metrics.Metrics.counter("curate.time_ms", NEAR_DEDUP).inc(int((time.perf_counter() - t0) * 1000))
        yield from kept
        for d in near:
            yield beam.pvalue.TaggedOutput("decisions", _duplicate_decision(d, NEAR_DEDUP, dedup.NEAR_DUPLICATE))
        for d in dedup.follow_to_kept(exact, near):
            yield beam.pvalue.TaggedOutput("decisions", _duplicate_decision(d, EXACT_DEDUP, dedup.EXACT_DUPLICATE))


class Deduplicate(beam.PTransform):
    """Exact duplicates (same sha256) first, then near duplicates among what is left.

    Returns {"kept": samples, "decisions": rows}. Exact duplicates travel with the near-dedup step
    (metadata only) so that, when their kept sample is dropped there, they name the final one.
    """

    def __init__(self, exact: bool, near: bool, near_threshold: float):
        super().__init__()
        self._exact, self._near, self._threshold = exact, near, near_threshold

    def expand(self, samples):
        pipeline = samples.pipeline
        exact_dups = pipeline | "NoExactDedup" >> beam.Create([])
        if self._exact:
            exact = (samples
                     | "BySha256" >> beam.Map(lambda s: (s.sha256, s))
                     | "GroupSha256" >> beam.GroupByKey()
                     | "KeepOnePerHash" >> beam.ParDo(ExactDedupFn()).with_outputs("duplicates", main="kept"))
            samples, exact_dups = exact.kept, exact.duplicates
        if not self._near:
            return {"kept": samples, "decisions": exact_dups | "ExactDecisions" >> beam.Map(
                _duplicate_decision, EXACT_DEDUP, dedup.EXACT_DUPLICATE)}
        near = ((samples, exact_dups)
                | "SamplesAndDuplicates" >> beam.Flatten()
                | "All" >> beam.Map(lambda x: (0, x))
                | "GatherEmbeddings" >> beam.GroupByKey()
                | "KeepOnePerGroup" >> beam.ParDo(NearDedupFn(self._threshold)).with_outputs("decisions", main="kept"))
        return {"kept": near.kept, "decisions": near.decisions}


class LaionFilter(beam.PTransform):
    """The whole pipeline; ``expand`` reads as its description."""

    def __init__(self, config: dict, shard_paths: list[str], cpu_threads: int = 0):
        super().__init__()
        self._cfg = config
        self._paths = shard_paths
        self._cpu_threads = cpu_threads

    def expand(self, pbegin):
        cfg, out = self._cfg, self._cfg["output"]
        read = pbegin | "ReadRawShards" >> ReadRawShards(self._paths)
        checked = read.samples | "DecodeAndBasicFilters" >> beam.ParDo(
            CheckSamples(BasicFilterParams(**section(cfg, "filters")))).with_outputs("decisions", main="passed")
        scored = checked.passed | "ClipScore" >> ScoreWithClip(
            scorer_spec(cfg), cfg["scorer.batch_size"], self._cpu_threads)
        selected = scored | "ClipThreshold" >> beam.ParDo(
            ApplyThreshold(cfg["select.clip_threshold"])).with_outputs("decisions", main="passed")
        deduped = selected.passed | "Deduplicate" >> Deduplicate(
            cfg["dedup.exact"], cfg["dedup.near"], cfg["dedup.near_threshold"])
        written = deduped["kept"] | "WriteCuratedShards" >> WriteCuratedShards(
            os.path.join(out, "shards"), cfg["shards.samples_per_shard"])
        all_decisions = [read.decisions, checked.decisions, selected.decisions, deduped["decisions"],
                         written["decisions"]]
        return (all_decisions | "AllDecisions" >> beam.Flatten()
                | "WriteDecisions" >> WriteDecisions(os.path.join(out, "decisions")))


def build(pipeline: beam.Pipeline, config: dict) -> None:
    """Add laion_filter to ``pipeline`` (the CLI prepares input and output folders first)."""
    pipeline | "LaionFilter" >> LaionFilter(config, list_input_shards(config["input"]),
                                            cpu_threads_per_worker(pipeline.options))
