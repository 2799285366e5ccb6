"""probes: learned filters on the stored embeddings, a step of laion_filter before CLIP-score selection.

Each head of ``probes:`` (curate/probe.py: a linear or MLP head trained with ``curate.probe train``,
or LAION's improved-aesthetic-predictor layout) scores every sample that reaches the step, from the
image and/or text embedding the score stage computed (or ``scores`` stored): a few matrix products
in numpy, no CLIP model. Every head's score goes to the sample's decision row (``probe_scores``,
kept or dropped further on); the first head, in config order, on whose dropped side a sample falls
removes it with reason ``probe:<name>``. Placed after the basic filters and balancing and before
score selection, as the aesthetic and NSFW heads of LAION-5B and NeMo Curator sit beside the CLIP
score: a learned filter is one more per-sample rule on stored embeddings.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import apache_beam as beam
import numpy as np

from curate import fs, probe
from curate.config import ConfigError
from curate.io import npy_shape
from curate.outputs import DECISIONS, MAIN, split
from curate.records import PROBE, Sample, decision, stable


def load_heads(cfg: dict) -> list[probe.Head]:
    """The ``probes:`` heads, loaded (torch only to read the state dicts; scoring is numpy)."""
    heads = []
    for item in cfg.get("probes") or ():
        head = probe.load_head(item["path"], name=item.get("name"), threshold=item.get("threshold"),
                               target=item.get("target"), keep=item.get("keep"))
        # threshold: null given explicitly means "score only", not "the sidecar's" (key absent)
        heads.append(head.with_threshold(None) if "threshold" in item and item["threshold"] is None else head)
    return heads


def _stored_dims(run_dir: str) -> dict[str, int]:
    """The widths of a score run's stored embeddings, from the first part's .npy headers."""
    dims = {}
    for what, sub in (("image", "img_emb"), ("text", "text_emb")):
        names = sorted(fs.glob(fs.join(run_dir, "embeddings", sub, f"{sub}_*.npy")))
        if names:
            dims[what] = int(npy_shape(names[0])[1])
    return dims


def _scorer_dims(cfg: dict) -> dict[str, int]:
    """The scorer's embedding width from its open_clip config (no weights loaded)."""
    import open_clip

    from curate.models.clip import register_model_configs

    register_model_configs()
    width = int(open_clip.get_model_config(cfg["scorer.model"])["embed_dim"])
    return {"image": width, "text": width}


def validate(cfg: dict) -> None:
    """Every head loads, names are unique, and each takes the width of the embeddings it will meet
    (the stored ones with ``scores``, else the scorer's): a one-line ConfigError before any work.
    Paths are made absolute in ``cfg``."""
    items = cfg.get("probes") or []
    if not items:
        return
    for item in items:
        if item.get("target") not in (None, *probe.TARGETS) or item.get("keep") not in (None, "above", "below"):
            raise ConfigError(f"config error: probes: {item['path']}: target must be one of {', '.join(probe.TARGETS)}"
                              f" and keep above or below, got target={item.get('target')!r} keep={item.get('keep')!r}")
        if item.get("threshold") is not None and isinstance(item["threshold"], (bool, str)):
            raise ConfigError(f"config error: probes: {item['path']}: threshold must be a number, got {item['threshold']!r}")
    cfg["probes"] = [{**item, "path": fs.abspath(item["path"])} for item in items]
    try:
        heads = load_heads(cfg)
        dims = _stored_dims(cfg["scores"]) if cfg.get("scores") else _scorer_dims(cfg)
        for head in heads:
            probe.features(head.dims, *(np.zeros((1, dims.get(w, 0)), np.float32) for w in ("image", "text")),
                           head.source)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"config error: probes: {str(e).splitlines()[0]}") from None
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise ConfigError(f"config error: probes: two heads are named alike ({', '.join(names)}); give each a name")


class ProbeFn(beam.DoFn):
    """A sample -> a copy carrying every head's score (``Sample.probe_scores``, to 4 decimals like
    the CLIP score, and compared with the threshold as stored) and no text embedding (main), or a
    decision row ``probe:<name>`` for the first head on whose dropped side it falls."""

    def __init__(self, heads: list[probe.Head]):
        self._heads = heads  # plain numpy arrays: pickled to the workers as they are

    def process(self, sample: Sample):
        image = None if sample.image_embedding is None else sample.image_embedding[None]
        text = None if sample.text_embedding is None else sample.text_embedding[None]
        scores = tuple((h.name, stable(h.score(image if "image" in h.dims else None,
                                               text if "text" in h.dims else None)[0])) for h in self._heads)
        # the text embedding served the CLIP score and the probes; nothing later reads it
        sample = dataclasses.replace(sample, probe_scores=scores, text_embedding=None)
        for head, (_, score) in zip(self._heads, scores):
            reason = head.reason(score)
            if reason:
                side = "below" if head.keep == "above" else "above"
                yield DECISIONS, decision(sample, False, PROBE, reason,
                                          detail=f"{head.name} score {score:.4f} {side} threshold {head.threshold:.4f}")
                return
        yield MAIN, sample


class ApplyProbes(beam.PTransform):
    """Samples -> scored by each head, passed (main) and 'decisions' (``probe:<name>``); without
    ``probes:``, the samples as they are and no decisions."""

    def __init__(self, heads: list[probe.Head]):
        super().__init__()
        self._heads = heads

    @classmethod
    def from_config(cls, cfg: dict) -> ApplyProbes:
        return cls(load_heads(cfg))

    @property
    def needs_text(self) -> bool:
        """Whether a head reads the text embedding (target text or both): laion_filter then keeps it
        until this step instead of dropping it right after scoring."""
        return any("text" in h.dims for h in self._heads)

    def expand(self, samples):
        if not self._heads:
            return SimpleNamespace(passed=samples, decisions=samples.pipeline | "NoProbes" >> beam.Create([]))
        return split(samples | "Score" >> beam.ParDo(ProbeFn(self._heads)), "Score", "passed")


def report_section(cfg: dict) -> dict:
    """report.json's ``probes``: per head its name, file, kind, target, threshold, which side is
    kept, and the samples it scored and dropped in this run (counted from the decisions)."""
    heads = load_heads(cfg)
    if not heads:
        return {}
    import pyarrow.parquet as pq

    scored, dropped = dict.fromkeys((h.name for h in heads), 0), dict.fromkeys((h.name for h in heads), 0)
    for path in fs.glob(fs.join(cfg["output"], "decisions", "*.parquet")):
        with fs.open(path, "rb") as f:
            if "probe_scores" not in pq.read_schema(f).names:  # a file written before probes existed
                continue
            f.seek(0)
            table = pq.read_table(f, columns=["reason", "probe_scores"])
        for reason, values in zip(table.column("reason").to_pylist(), table.column("probe_scores").to_pylist()):
            for name, _ in values or ():
                scored[name] = scored.get(name, 0) + 1
            if reason and reason.startswith(probe.REASON_PREFIX):
                dropped[reason[len(probe.REASON_PREFIX):]] = dropped.get(reason[len(probe.REASON_PREFIX):], 0) + 1
    return {"probes": [{"name": h.name, "path": h.source, "sha256": fs.sha256(h.source), "kind": h.kind,
                        "target": h.target, "dims": h.dims, "threshold": h.threshold, "keep": h.keep,
                        "scored": scored[h.name], "dropped": dropped[h.name]} for h in heads]}
