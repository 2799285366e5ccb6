"""score: raw shards -> CLIP image and text embeddings plus per-sample metadata, computed once.

The costly half of curation. Its output folder feeds laion_filter's ``scores`` setting, which then
re-selects with any thresholds without loading the model again.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import uuid

import apache_beam as beam
from apache_beam.utils import shared
from curate.filters.image import decode_image
from curate.filters.sample import decode_sample
from curate.pipelines import lists as list_steps
from curate.pipelines.specs import PIPELINES

from curate import fs, gpu_decode, resume, scoring
from curate.config import section
from curate.decisions import WriteDecisions
from curate.models.clip import ScorerSpec
from curate.outputs import DECISIONS, MAIN, done, split
from curate.raw_shards import list_input_shards, read_shard
from curate.records import DECODE, decision
from curate.resume import ScoreCheckpoint
from curate.scoring import (
    MAX_ASPECT_BEFORE_RESIZE,
    ClipPreprocessor,
    DevicePreprocessor,
    Prepared,
    cpu_threads_per_worker,
    scored_samples,
    stack,
)
from curate.timing import timed

SCHEMA = PIPELINES["score"].schema  # pipelines/specs.py
log = logging.getLogger("curate")


def scorer_spec(config: dict) -> ScorerSpec:
    s = section(config, "scorer")
    return ScorerSpec(model=s["model"], pretrained=s["pretrained"], device=s["device"], precision=s["precision"])


def checkpoint_settings(cfg: dict) -> dict:
    """What decides an input shard's scores and unscored rows: a checkpointed shard is reused only
    under the same values (curate.resume)."""
    return {**dataclasses.asdict(scorer_spec(cfg)), "batch_size": cfg["scorer.batch_size"],
            "decode": cfg["scorer.decode"],
            "max_image_pixels": cfg["filters.max_image_pixels"], "detect_language": cfg["select.detect_language"],
            # the lists decide which samples are scored: a checkpoint made under others is not reused
            **({"lists": list_steps.fingerprint(cfg)} if list_steps.from_config(cfg) else {})}


class ScoreShards(beam.DoFn):
    """(shard index, path) -> the shard's scored Samples (MAIN), and (DECISIONS) rows for what could
    not be scored and the shard's InputCount.

    Each input shard is scored once per run settings: one process() call reads, decodes and scores
    the whole shard, checkpoints it (curate.resume) and only then emits it, so no shuffle stands
    between the model and the checkpoint and a crash costs only the shards in flight. A shard the
    checkpoint already holds comes back from its stored part, with no read, decode or model call;
    the model is loaded (one per worker process) on the first shard that needs it. With
    ``scorer.share_model`` the first worker that needs it starts one model process for the machine
    (Beam's MultiProcessShared, as RunInference's ``share_model_across_processes``) and every worker
    sends it its batches; the last worker to tear down shuts it down.

    A batch holds ``batch_size`` consecutive samples of one shard, the shard's last batch fewer. On
    CPU a score's last bits depend on the batch it is computed in; built inside one process() call,
    batches have the same content on every runner, bundling and worker count, and so do the scores
    and every output behind them. Decoding and preprocessing run here, on CPU, before batching
    (``scorer.decode: cpu_fast`` decodes large JPEGs at reduced size: scoring.reduced_decode_size).
    With ``scorer.decode: gpu`` the CPU decodes at a small reduced size only to validate and hash, and
    each batch's JPEGs are decoded and resized on the scorer's device (scoring.DevicePreprocessor);
    other images keep the CPU path.
    """

    def __init__(self, cfg: dict, total_shards: int, checkpoint: ScoreCheckpoint, cpu_threads: int = 0):
        self._spec, self._n = scorer_spec(cfg), cfg["scorer.batch_size"]
        self._max_pixels, self._detect_language = cfg["filters.max_image_pixels"], cfg["select.detect_language"]
        self._total, self._checkpoint = total_shards, checkpoint
        self._lists = list_steps.from_config(cfg)  # applied at read and decode (filters.sample.decode_sample)
        self._reduce_to = scoring.reduced_decode_size(self._spec, cfg["scorer.decode"])  # None: full decode
        self._on_device = cfg["scorer.decode"] == "gpu"
        if self._on_device:
            scoring.device_input_side(self._spec)  # a model the device path cannot rebuild stops the run here
        self._share = cfg["scorer.share_model"]
        # Looked up by module attribute: benchmarks/gpu_score.py puts a timestamping handler in its place.
        self._handler = scoring.OpenClipModelHandler(self._spec, cpu_threads, share_model=self._share)
        self._shared_model = shared.Shared()
        # One model process per run and machine: a tag no other run (or a stale address file) shares.
        self._shared_tag = f"curate-clip-{uuid.uuid4().hex}"
        # Its lock and address files: in the run's checkpoint folder (removed when the run completes)
        # when the output is local, as every local worker must reach them; else the temp folder.
        out = cfg["output"]
        self._shared_dir = resume.folder(out) if out and fs.is_local(out) else None

    def setup(self):
        self._model = self._preprocess = self._device_batch = self._server = None

    def teardown(self):
        """Shared model: detach, and the last worker shuts the model process down (no process outlives
        the run; the process that started it would otherwise stop it only when it exits)."""
        if self._server is None or self._model is None:
            return
        model, self._model = self._model, None
        # The model process may be gone already: the worker that started it stops it when it exits,
        # and local workers exit one after another at the end of the run. Nothing is left to release then.
        try:
            left = model.detach()
            self._server.release(model)
            if left == 0:
                self._server.unsafe_hard_delete()
        except (EOFError, OSError):  # OSError: connection refused; EOFError: it exits while answering
            pass

    def process(self, element):
        index, path = element
        stored = self._checkpoint.load(index, path)
        if stored is not None:
            log.info("shard %d/%d %s: scored before the interruption; its stored scores are reused",
                     index + 1, self._total, fs.basename(path))
            yield from stored
            return
        scored, others = [], []
        for tag, value in self._score(index, path):
            (scored if tag == MAIN else others).append(value)
        self._checkpoint.save(index, path, scored, others)
        yield from ((MAIN, s) for s in scored)
        yield from ((DECISIONS, o) for o in others)

    def _score(self, index: int, path: str):
        if self._model is None:
            self._preprocess = ClipPreprocessor(self._spec)
            if self._on_device:
                self._device_batch = DevicePreprocessor(self._spec, self._preprocess, self._max_pixels)
            self._model = self._load_model()
        for tag, value in self._batches(index, path):
            if tag != MAIN:
                yield tag, value
                continue
            for result in self._handler.run_inference([value], self._model):
                yield from ((MAIN, s) for s in scored_samples(result.example, *result.inference))

    def _load_model(self):
        """This worker's model (one per process), or a proxy of the machine's shared one."""
        if not self._share:
            return self._shared_model.acquire(self._handler.load_model, tag=repr(self._spec))
        from apache_beam.utils.multi_process_shared import MultiProcessShared

        # spawn_process: the model lives in a process of its own, not in whichever worker came first.
        extra = {}
        if self._shared_dir:
            fs.makedirs(self._shared_dir)
            extra["path"] = self._shared_dir
        self._server = MultiProcessShared(functools.partial(scoring.load_shared_encoder, self._spec),
                                          tag=self._shared_tag, always_proxy=True, spawn_process=True, **extra)
        model = self._server.acquire()
        model.attach()
        return model

    def _batches(self, index: int, path: str):
        """(MAIN, ClipBatch) per batch of the shard's decodable samples; (DECISIONS, row) for the rest."""
        batch = []
        for tag, value in read_shard(index, path, self._total):
            if tag != MAIN:
                yield tag, value
                continue
            jpeg = None
            with timed("decode"):
                verdict = decode_sample(value, self._max_pixels, detect_language=self._detect_language,
                                        reduce_to=self._reduce_to, lists=self._lists)
                if not verdict.reason and self._on_device:
                    verdict, jpeg = self._for_device(value, verdict)
            if verdict.reason:
                yield DECISIONS, decision(verdict.sample, False, verdict.stage, verdict.reason, detail=verdict.detail)
                continue
            tokens = self._preprocess.tokens(verdict.sample.caption)
            batch.append(Prepared(verdict.sample, tokens, jpeg=jpeg) if jpeg is not None else
                         Prepared(verdict.sample, tokens, image=self._preprocess.image(verdict.image)))
            if len(batch) == self._n:
                yield from self._stacked(batch)
                batch = []
        if batch:
            yield from self._stacked(batch)

    def _for_device(self, raw, verdict):
        """scorer.decode gpu, a sample the CPU's reduced decode passed: (verdict, its JPEG bytes) when
        the device decodes it (gpu_decode.device_decodable); else (verdict with the full-size image the
        cpu path scores, None), decoded again at full size if the reduced decode shrank it (a failure
        there is the cpu path's drop)."""
        sample = verdict.sample
        data = raw.fields[sample.image_ext]
        if sample.image_format in gpu_decode.DEVICE_FORMATS and gpu_decode.device_decodable(
                data, MAX_ASPECT_BEFORE_RESIZE):
            return verdict, data
        if verdict.image.size == (sample.width, sample.height):  # not reduced (not a large JPEG)
            return verdict, None
        full = decode_image(data, self._max_pixels)
        if full.reason:
            return dataclasses.replace(verdict, image=None, reason=full.reason, stage=DECODE, detail=full.detail), None
        return dataclasses.replace(verdict, image=full.image), None

    def _stacked(self, batch: list[Prepared]):
        """(MAIN, ClipBatch) of prepared samples; with scorer.decode gpu its images made on the device,
        and (DECISIONS, row) for an image that neither the device nor the CPU decodes."""
        if not self._on_device:
            yield MAIN, stack(batch)
            return
        clip_batch, failed = self._device_batch(batch)
        for sample, decoded in failed:
            yield DECISIONS, decision(sample, False, DECODE, decoded.reason, detail=decoded.detail)
        if clip_batch is not None:
            yield MAIN, clip_batch


class ScoreRawShards(beam.PTransform):
    """Raw shards -> .samples (scored Samples) and .decisions (rows for what could not be scored, and
    each shard's InputCount); each shard's part is written to ``emb_dir`` as it is scored (a run that
    keeps no embeddings passes none: they go to the checkpoint folder, removed when the run completes)."""

    def __init__(self, config: dict, shard_paths: list[str], cpu_threads: int = 0, emb_dir: str | None = None):
        super().__init__()
        self._cfg, self._paths, self._threads = config, shard_paths, cpu_threads
        self._emb_dir = emb_dir or fs.join(resume.folder(config["output"]), "embeddings")

    def expand(self, pbegin):
        checkpoint = ScoreCheckpoint(self._cfg["output"], self._emb_dir, checkpoint_settings(self._cfg))
        scored = (pbegin
                  | "ListShards" >> beam.Create(list(enumerate(self._paths)))
                  | "Spread" >> beam.Reshuffle()
                  | "ScoreShards" >> beam.ParDo(ScoreShards(self._cfg, len(self._paths), checkpoint, self._threads)))
        return split(scored, "ScoreShards", "samples")


class Score(beam.PTransform):
    def __init__(self, config: dict, shard_paths: list[str], cpu_threads: int = 0):
        super().__init__()
        self._cfg, self._paths, self._threads = config, shard_paths, cpu_threads

    def expand(self, pbegin):
        out = self._cfg["output"]
        # The parts of OUT/embeddings are written as each shard is scored (ScoreShards).
        scored = pbegin | "ScoreRawShards" >> ScoreRawShards(self._cfg, self._paths, self._threads,
                                                             emb_dir=fs.join(out, "embeddings"))
        rows = scored.samples | "ScoredRows" >> beam.Map(lambda s: decision(s, True, "clip_score"))
        decisions = ((rows, scored.decisions) | "AllDecisions" >> beam.Flatten()
                     | "WriteDecisions" >> WriteDecisions(fs.join(out, "decisions")))
        return done((decisions,))


def validate(cfg: dict) -> None:
    """The block and opt-out lists: well formed and present, before any work."""
    list_steps.validate(cfg)


def report_sections(cfg: dict) -> dict:
    """report.json's per-list match counts (pipelines/lists.py)."""
    return list_steps.report_section(cfg)


def build(pipeline: beam.Pipeline, config: dict) -> None:
    pipeline | "Score" >> Score(config, list_input_shards(config["input"]), cpu_threads_per_worker(pipeline.options))
