"""laion_filter: raw shards -> CLIP scores -> basic filters -> score selection -> exact and near dedup -> shards.

The recipe of LAION-5B (CLIP cosine threshold) with DataComp's basic filter and top-fraction mode,
and duplicate removal behind, as one Beam graph. Scores come from the model, or from a previous
score run's stored embeddings (``scores``), in which case no model is loaded and selection with
other thresholds costs minutes, not GPU hours. Every input sample ends as exactly one row of the
decisions table.
"""
from __future__ import annotations

import apache_beam as beam

from curate import fs
from curate.config import ConfigError, Option, Schema, section
from curate.embeddings import ReadStoredScores, WriteEmbeddings, stored_hashes
from curate.outputs import DECISIONS, MAIN, done, split
from curate.records import BASIC_FILTER, CLIP_SCORE, decision
from curate.scoring import cpu_threads_per_worker
from curate.shards import UniqueKeys, WriteCuratedShards, WriteDecisions, list_input_shards
from filters import select
from filters.sample import BasicFilterParams, basic_filter
from pipelines import dedup as dedup_steps
from pipelines import export, ingest, score

DESCRIPTION = "basic filters, CLIP score selection, exact and near-duplicate removal, curated shards"

SCHEMA: Schema = {
    **score.INPUT_SCHEMA,
    "scores": Option(str, "reuse the stored scores of this score/laion_filter output folder: no model is "
                     "loaded; null = score now", nullable=True),
    "save_embeddings": Option(bool, "write OUT/embeddings (clip-retrieval layout) for later re-selection"),
    "filters.min_image_size": Option(int, "drop images whose shorter side is below this (px)", min=0),
    "filters.max_aspect_ratio": Option(float, "drop images whose long/short side ratio exceeds this", min=1),
    "filters.min_caption_words": Option(int, "drop captions with fewer words (scripts without spaces: "
                                      "letters per word, see filters/basic.py)", min=0),
    "filters.min_caption_chars": Option(int, "drop captions with fewer characters", min=0),
    "filters.boilerplate_captions": Option(bool, "drop file-name and web-boilerplate captions"),
    **score.SCORER_SCHEMA,
    "select.mode": Option(str, "threshold: absolute cosine (LAION); language: per-language thresholds; "
                          "fraction: top fraction of the corpus (DataComp)", choices=("threshold", "language", "fraction")),
    "select.clip_threshold": Option(float, "mode threshold: drop pairs whose image-text cosine is below this",
                                    min=-1, max=1),
    "select.language_thresholds": Option(dict, "mode language: threshold per language code; 'default' for "
                                         "the others and for unknown languages", min=-1, max=1),
    "select.fraction": Option(float, "mode fraction: keep this share of the scored, filtered corpus",
                              min=0, max=1),
    "dedup.exact": Option(bool, "drop samples whose image bytes repeat (sha256)"),
    "dedup.near": Option(bool, "drop near-duplicate images (by dedup.near_method)"),
    "dedup.near_threshold": Option(float, "image cosine at or above which two images are near duplicates "
                                   "(near_method clip, both, either)",
                                   min=0, max=1),
    **dedup_steps.SCHEMA,
    "shards.samples_per_shard": Option(int, "samples per curated tar (the last may hold fewer)", min=1),
    "exports": Option(list, "family exports of the curated shards, each into OUT/exports/<format> "
                      "(settings: configs/export.yaml)", choices=tuple(export.FORMATS)),
    "exports_config": Option(str, "YAML overriding configs/export.yaml's per-format settings for `exports`", nullable=True),
    **ingest.INGEST_SCHEMA,  # used when input is a URL table: downloaded into OUT/raw first
}

scorer_spec = score.scorer_spec
WRITES_SHARDS = True


def validate(cfg: dict) -> None:
    """Check the requested exports before any work; their resolved settings join the run's config.
    Stored scores written before perceptual hashes existed cannot feed a hash-based near dedup."""
    cfg["exports_settings"] = export.laion_filter_settings(cfg)
    rule = dedup_steps.DedupParams.from_config(cfg).near_rule
    if cfg["scores"] and cfg["dedup.near"] and rule.method != "clip" and not stored_hashes(cfg["scores"]):
        raise ConfigError(f"config error: the stored scores in {cfg['scores']!r} hold no perceptual hashes "
                          f"(dedup.near_method {rule.method} needs them): score again, or set dedup.near_method=clip")


class BasicFilters(beam.DoFn):
    """DataComp's basic filter on a scored sample's metadata; a decision row (tag 'decisions') on failure."""

    def __init__(self, params: BasicFilterParams):
        self._params = params

    def process(self, sample):
        reason = basic_filter(sample, self._params)
        if reason:
            yield DECISIONS, decision(sample, False, BASIC_FILTER, reason)
        else:
            yield MAIN, sample


class ThresholdFn(beam.DoFn):
    """Absolute threshold, or a threshold per language: the language set when decoding, detected here
    only for stored scores that hold none (into the decision row; the sample is not changed)."""

    def __init__(self, threshold: float, language_thresholds: dict | None = None, detect: bool = False):
        self._threshold, self._by_language, self._detect = threshold, language_thresholds, detect

    def process(self, sample):
        threshold, language = self._threshold, sample.language
        if self._by_language is not None:
            language = select.language_of(sample, self._detect)
            threshold = select.language_threshold(language, self._by_language)
        reason = select.below_threshold(sample, threshold)
        if reason:
            yield DECISIONS, decision(sample, False, CLIP_SCORE, reason, clip_threshold=threshold, language=language)
        else:
            yield MAIN, sample


class TopFractionFn(beam.DoFn):
    def __init__(self, fraction: float):
        self._fraction = fraction

    def process(self, element):
        _, samples = element
        kept, dropped, cutoff = select.top_fraction(list(samples), self._fraction)
        for s in kept:
            yield MAIN, s
        for s in dropped:
            yield DECISIONS, decision(s, False, CLIP_SCORE, select.OUTSIDE_TOP_FRACTION, clip_threshold=cutoff)


class SelectByScore(beam.PTransform):
    """One of the three selection modes; returns the passing samples (main) and 'decisions'."""

    def __init__(self, cfg: dict):
        super().__init__()
        self._cfg = cfg

    def expand(self, samples):
        cfg, mode = self._cfg, self._cfg["select.mode"]
        if mode == "fraction":
            return split(samples
                         | "All" >> beam.Map(lambda s: (0, s))
                         | "GatherScores" >> beam.GroupByKey()
                         | "TopFraction" >> beam.ParDo(TopFractionFn(cfg["select.fraction"])), "TopFraction", "passed")
        by_language = cfg["select.language_thresholds"] if mode == "language" else None
        return split(samples | "Threshold" >> beam.ParDo(ThresholdFn(
            cfg["select.clip_threshold"], by_language, cfg["select.detect_language"])), "Threshold", "passed")


class LaionFilter(beam.PTransform):
    """The whole pipeline; ``expand`` reads as its description."""

    def __init__(self, config: dict, shard_paths: list[str], cpu_threads: int = 0):
        super().__init__()
        self._cfg = config
        self._paths = shard_paths
        self._cpu_threads = cpu_threads

    def expand(self, pbegin):
        cfg, out = self._cfg, self._cfg["output"]
        writes = []
        if cfg["scores"]:
            scored = pbegin | "ReadStoredScores" >> ReadStoredScores(cfg["scores"])
        else:
            scored = pbegin | "ScoreRawShards" >> score.ScoreRawShards(cfg, self._paths, self._cpu_threads)
            if cfg["save_embeddings"]:
                writes.append(scored.samples | "SaveEmbeddings" >> WriteEmbeddings(fs.join(out, "embeddings")))
        filtered = split(scored.samples | "BasicFilters" >> beam.ParDo(
            BasicFilters(BasicFilterParams(**section(cfg, "filters", exclude=("max_image_pixels",))))),
            "BasicFilters", "passed")
        selected = filtered.passed | "SelectByScore" >> SelectByScore(cfg)
        decontaminated = selected.passed | "Decontaminate" >> dedup_steps.Decontaminate.from_config(cfg)
        unique = decontaminated.clean | "UniqueKeys" >> UniqueKeys()
        deduped = unique.unique | "Deduplicate" >> dedup_steps.Deduplicate(dedup_steps.DedupParams.from_config(cfg))
        written = deduped["kept"] | "WriteCuratedShards" >> WriteCuratedShards(
            fs.join(out, "shards"), cfg["shards.samples_per_shard"])
        all_decisions = [scored.decisions, filtered.decisions, selected.decisions, decontaminated.decisions,
                         unique.decisions, deduped["decisions"],
                         written["decisions"]]
        writes.append(all_decisions | "AllDecisions" >> beam.Flatten()
                      | "WriteDecisions" >> WriteDecisions(fs.join(out, "decisions")))
        writes.append(written["sizes"])
        if cfg.get("exports_settings"):  # after every write above: the exports read shards and decisions
            writes.append(writes | "AllCuratedWrites" >> beam.Flatten()
                          | "Exports" >> export.ExportAfterWrites(cfg["exports_settings"]))
        return done(writes)


def build(pipeline: beam.Pipeline, config: dict) -> None:
    """Add laion_filter to ``pipeline`` (the CLI prepares input and output folders first)."""
    paths = [] if config["scores"] else list_input_shards(config["input"])
    pipeline | "LaionFilter" >> LaionFilter(config, paths, cpu_threads_per_worker(pipeline.options))
