"""laion_filter: raw shards -> CLIP scores -> basic filters -> [balancing] -> score selection -> dedup -> shards.

The recipe of LAION-5B (CLIP cosine threshold) with DataComp's basic filter and top-fraction mode,
and duplicate removal behind, as one Beam graph. Scores come from the model, or from a previous
score run's stored embeddings (``scores``), in which case no model is loaded and selection with
other thresholds costs minutes, not GPU hours. Every input sample ends as exactly one row of the
decisions table.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import apache_beam as beam
from curate.filters import decontaminate, select
from curate.filters.sample import BasicFilterParams, basic_filter
from curate.pipelines import balance as balance_steps
from curate.pipelines import dedup as dedup_steps
from curate.pipelines import export, score
from curate.pipelines import lists as list_steps
from curate.pipelines import probes as probe_steps
from curate.pipelines.specs import PIPELINES

from curate import coverage, fs
from curate.config import ConfigError, section
from curate.decisions import WriteDecisions
from curate.embeddings import stored_hashes
from curate.gather import CountOncePerSample, GatherSmall
from curate.outputs import DECISIONS, MAIN, done, split
from curate.raw_shards import list_input_shards
from curate.records import BASIC_FILTER, CLIP_SCORE, Sample, decision
from curate.scoring import cpu_threads_per_worker
from curate.shards import UniqueKeys, WriteCuratedShards

SCHEMA = PIPELINES["laion_filter"].schema  # pipelines/specs.py

scorer_spec = score.scorer_spec
WRITES_SHARDS = True


def validate(cfg: dict) -> None:
    """Check the requested exports before any work; their resolved settings join the run's config.
    Stored scores written before perceptual hashes existed cannot feed a hash-based near dedup."""
    cfg["exports_settings"] = export.laion_filter_settings(cfg)
    if cfg["scores"]:
        list_steps.validate(cfg, list_steps.STORED_KINDS,
                            "the stored scores hold the sha256 of each image, not its bytes: apply md5 and sha1 "
                            "lists in the score run, or curate the raw shards")
    else:
        list_steps.validate(cfg)
    probe_steps.validate(cfg)
    dedup_steps.Decontaminate.from_config(cfg)  # decontaminate.eval_set must exist
    balance_steps.MatchMetadata.from_config(cfg)  # balance.metadata must hold lists
    if cfg["decontaminate.eval_set"] is not None:
        try:
            decontaminate.check_eval_set(cfg["decontaminate.eval_set"])
        except decontaminate.EvalSetError as e:
            raise ConfigError(f"config error: decontaminate.eval_set: {e}") from None
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
    only for stored scores that hold none (into the decision row). A passing sample goes on as a
    copy that carries its threshold (``clip_threshold``) into the rows of later steps."""

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
            yield MAIN, dataclasses.replace(sample, clip_threshold=threshold)


TIED = "tied"


class TopFractionFn(beam.DoFn):
    """A scored sample against its group's top-fraction cut (side inputs, ``select.in_top_fraction``):
    kept (main, a copy that carries the cut score as its ``clip_threshold``) or dropped (a decision
    row); a sample tied at the cut score while ``last_ties`` is not known yet goes on under 'tied'."""

    def __init__(self, by_language: bool = False, detect: bool = False):
        self._by_language, self._detect = by_language, detect

    def process(self, sample, cuts, last_ties=None):
        group = select.fraction_group(sample, self._by_language, self._detect)
        cut = cuts.get(group, select.FractionCut(None))
        keep = select.in_top_fraction(sample, cut, None if last_ties is None else last_ties.get(group))
        if keep is None:
            yield TIED, sample
        elif keep:
            yield MAIN, dataclasses.replace(sample, clip_threshold=cut.score)
        else:
            # the language only where it chose the cut: rows of the global mode stay as they were
            language = {"language": group or None} if self._by_language else {}
            yield DECISIONS, decision(sample, False, CLIP_SCORE, select.OUTSIDE_TOP_FRACTION,
                                      clip_threshold=cut.score, **language)


def _tie_key(sample: Sample, cuts: dict, group):
    """(group, (key, input order)) of a sample tied at its group's cut score when only some ties are kept."""
    g = group(sample)
    if select.in_top_fraction(sample, cuts.get(g, select.FractionCut(None))) is None:
        yield g, (sample.key, sample.order)


def _last_kept_ties(ties, cuts: dict) -> dict:
    """{group: select.last_kept_tie} from (group, (key, input order)) of every tied sample."""
    by_group: dict[str, list] = {}
    for group, tie in ties:
        by_group.setdefault(group, []).append(tie)
    return {group: select.last_kept_tie(t, cuts[group]) for group, t in by_group.items()}


class _Group:
    """sample -> the group its top fraction is taken in (``select.fraction_group``); picklable."""

    def __init__(self, by_language: bool, detect: bool):
        self._by_language, self._detect = by_language, detect

    def __call__(self, sample: Sample) -> str:
        return select.fraction_group(sample, self._by_language, self._detect)


class _GroupScore:
    """sample -> [(its group, its score)]: what the top-fraction histogram counts; picklable."""

    def __init__(self, group: _Group):
        self._group = group

    def __call__(self, sample: Sample) -> list:
        return [(self._group(sample), sample.clip_score)]


class TopFraction(beam.PTransform):
    """DataComp's top fraction (``select.top_fraction``), of the corpus or of each language
    (``select.top_fraction_by_language``), without gathering samples or scores.

    What meets on one worker: the score histogram (one (group, score, count) per distinct score of a
    group; scores are stored to 4 decimals, so at most 20,001 per language however large the
    corpus), and, only when a cut falls inside a run of equal scores, the (key, input order) of the
    samples scoring exactly that cut score (grows with the number of such ties, not with the
    corpus). Every sample is decided where it is, against the cuts as a side input. Returns passed
    (main) and 'decisions'.
    """

    def __init__(self, fraction: float, by_language: bool = False, detect: bool = False):
        super().__init__()
        self._fraction, self._by_language, self._detect = fraction, by_language, detect

    def expand(self, samples):
        group = _Group(self._by_language, self._detect)
        # ((group, score), count) for every distinct score; a sample counts once (a counted-twice
        # sample moved the cut on Beam 2.77's DaskRunner: tests/test_runners.py runs this mode there)
        histogram = samples | "Histogram" >> CountOncePerSample(_GroupScore(group))
        cuts = beam.pvalue.AsSingleton(histogram | "Cut" >> beam.Map(select.fraction_cuts, self._fraction),
                                       default_value={})
        decide = TopFractionFn(self._by_language, self._detect)
        first = split(samples | "AboveOrBelow" >> beam.ParDo(decide, cuts), "AboveOrBelow", "passed", DECISIONS, TIED)
        # tie keys come from the samples, not from 'tied': on Beam 2.77's DaskRunner a side input
        # built from the same ParDo as its main input (AboveOrBelow) held every tie twice
        last_ties = beam.pvalue.AsSingleton(
            samples
            | "TieKeys" >> beam.FlatMap(_tie_key, cuts, group)
            | "GatherTies" >> GatherSmall()
            | "LastKeptTie" >> beam.Map(_last_kept_ties, cuts), default_value={})
        ties = split(first.tied | "BreakTies" >> beam.ParDo(decide, cuts, last_ties), "BreakTies", "passed")
        return SimpleNamespace(passed=(first.passed, ties.passed) | "Passed" >> beam.Flatten(),
                               decisions=(first.decisions, ties.decisions) | "Decisions" >> beam.Flatten())


class SelectByScore(beam.PTransform):
    """One of the three selection modes; returns the passing samples (main) and 'decisions'."""

    def __init__(self, cfg: dict):
        super().__init__()
        self._cfg = cfg

    def expand(self, samples):
        cfg, mode = self._cfg, self._cfg["select.mode"]
        if mode in ("fraction", "language_fraction"):
            return samples | "TopFraction" >> TopFraction(cfg["select.fraction"], mode == "language_fraction",
                                                          cfg["select.detect_language"])
        by_language = cfg["select.language_thresholds"] if mode == "language" else None
        return split(samples | "Threshold" >> beam.ParDo(ThresholdFn(
            cfg["select.clip_threshold"], by_language, cfg["select.detect_language"])), "Threshold", "passed")


def drop_text_embedding(sample: Sample, keep: bool = False) -> Sample:
    """A copy without the text embedding: it served the CLIP score only, and was stored with it
    (OUT/embeddings or the resume checkpoint); every later step reads the image embedding alone.
    ``keep``: a probe reads it too, and drops it once scored (pipelines/probes.py)."""
    return sample if keep else dataclasses.replace(sample, text_embedding=None)


def drop_embeddings(sample: Sample) -> Sample:
    """A copy without image and text embeddings: after deduplication nothing reads them (the
    shard writer takes metadata; the embeddings were stored when scored), and at 512 dimensions
    they are about 4 KB of the sample's bytes in every later shuffle."""
    return dataclasses.replace(sample, image_embedding=None, text_embedding=None)


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
        probes = probe_steps.ApplyProbes.from_config(cfg)
        if cfg["scores"]:
            # the lists given now, on the stored metadata (the score run applied its own at read and decode)
            scored = pbegin | "ReadStoredScores" >> list_steps.ReadStoredScoresThroughLists(
                cfg["scores"], list_steps.from_config(cfg))
        else:
            # Writes each shard's embeddings as it is scored: OUT/embeddings, or the checkpoint folder.
            scored = pbegin | "ScoreRawShards" >> score.ScoreRawShards(
                cfg, self._paths, self._cpu_threads, emb_dir=fs.join(out, "embeddings") if cfg["save_embeddings"] else None)
        samples = (scored.samples | "DropTextEmbeddings" >> beam.Map(drop_text_embedding, probes.needs_text)
                   | "MatchMetadata" >> balance_steps.MatchMetadata.from_config(cfg))
        filtered = split(samples | "BasicFilters" >> beam.ParDo(
            BasicFilters(BasicFilterParams(**section(cfg, "filters", exclude=("max_image_pixels",))))),
            "BasicFilters", "passed")
        balanced = filtered.passed | "Balance" >> balance_steps.Balance.from_config(cfg)
        probed = balanced.passed | "Probes" >> probes
        selected = probed.passed | "SelectByScore" >> SelectByScore(cfg)
        decontaminated = selected.passed | "Decontaminate" >> dedup_steps.Decontaminate.from_config(cfg)
        unique = decontaminated.clean | "UniqueKeys" >> UniqueKeys()
        deduped = unique.unique | "Deduplicate" >> dedup_steps.Deduplicate(dedup_steps.DedupParams.from_config(cfg))
        slim = deduped["kept"] | "DropEmbeddings" >> beam.Map(drop_embeddings)
        written = slim | "WriteCuratedShards" >> WriteCuratedShards(
            fs.join(out, "shards"), cfg["shards.samples_per_shard"])
        all_decisions = [scored.decisions, filtered.decisions, balanced.decisions, probed.decisions, selected.decisions,
                         decontaminated.decisions,
                         unique.decisions, deduped["decisions"],
                         written["decisions"]]
        writes.append(all_decisions | "AllDecisions" >> beam.Flatten()
                      | "WriteDecisions" >> WriteDecisions(fs.join(out, "decisions")))
        writes.append(written["sizes"])
        if cfg.get("exports_settings"):  # after every write above: the exports read shards and decisions
            writes.append(writes | "AllCuratedWrites" >> beam.Flatten()
                          | "Exports" >> export.ExportAfterWrites(cfg["exports_settings"]))
        return done(writes)


def report_sections(cfg: dict) -> dict:
    """report.json's coverage audit (curate/coverage.py), the lists' and the probes' counts, read from
    the decisions just written."""
    params = balance_steps.BalanceParams.from_config(cfg)
    sections = {**list_steps.report_section(cfg), **probe_steps.report_section(cfg)}
    if not params.matches:
        return sections
    return {"coverage": coverage.audit(fs.join(cfg["output"], "decisions"), params.load(), params), **sections}


def build(pipeline: beam.Pipeline, config: dict) -> None:
    """Add laion_filter to ``pipeline`` (the CLI prepares input and output folders first)."""
    paths = [] if config["scores"] else list_input_shards(config["input"])
    pipeline | "LaionFilter" >> LaionFilter(config, paths, cpu_threads_per_worker(pipeline.options))
