"""export: curated shards -> the files each VLM family's trainer reads (one folder per format).

``python -m curate.run --pipeline export --input OUT/shards --output EXPORT_DIR`` writes
EXPORT_DIR/<format>/ for every name in ``formats``; laion_filter runs the same transforms on the
shards it has just written when its ``exports`` list is not empty. Each format is a PTransform in
curate/exports/<format>.py taking curated shard paths and returning its writes; its config keys
(prefixed with the format's name, listed in curate/exports/formats.py) are part of this pipeline's config.
"""
from __future__ import annotations

import importlib

import apache_beam as beam
from curate.pipelines.specs import PIPELINES

from curate import config as config_lib
from curate import fs
from curate.config import ConfigError
from curate.decisions import InputCount, WriteDecisions
from curate.exports.formats import FORMATS
from curate.exports.writing import EXPORT, CheckedShard, check_shard
from curate.outputs import done
from curate.raw_shards import UNREADABLE_TAR, list_input_shards
from curate.records import RawSample, decision

# FORMATS: name -> (module, class). Imported lazily: a format whose module is missing or broken is
# reported when asked for, and the others still work.
_loaded: dict[str, type | str] = {}


def _load(name: str):
    """The format's PTransform class, or the reason it cannot be imported (a one-line string)."""
    if name not in _loaded:
        module, cls = FORMATS[name]
        try:
            _loaded[name] = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as e:
            _loaded[name] = f"{type(e).__name__}: {e}"
    return _loaded[name]


def export_class(name: str) -> type:
    found = _load(name)
    if isinstance(found, str):
        raise ConfigError(f"config error: export format {name!r} is not available here ({found})")
    return found


SCHEMA = PIPELINES["export"].schema  # pipelines/specs.py, with each format's keys


def _check_formats(cfg: dict, run_dir: str | None, run_must_exist: bool) -> None:
    """Formats available, their own checks, and FLAVA's unimodal source (a laion_filter run folder)."""
    for name in cfg["formats"]:
        cls = export_class(name)
        if name == "flava" and cfg["flava.unimodal"]:
            run_dir = fs.abspath(cfg["flava.run_dir"] or run_dir or "")
            if run_must_exist and not (fs.isdir(fs.join(run_dir, "decisions"))
                                       and fs.isfile(fs.join(run_dir, ".curate_run.json"))):
                raise ConfigError(f"config error: flava.unimodal reads laion_filter's decisions, but {run_dir!r} "
                                  "holds no laion_filter run (decisions/ and .curate_run.json); set flava.run_dir "
                                  "to that run's output folder, or flava.unimodal=false")
            cfg["flava.run_dir"] = run_dir
        if hasattr(cls, "check"):
            cls.check(cfg)


def validate(cfg: dict) -> None:
    """Called by the CLI before any work."""
    if not cfg["formats"]:
        raise ConfigError(f"config error: formats is empty; choose from {', '.join(FORMATS)}")
    shards = cfg["input"] if fs.isdir(cfg["input"]) else fs.dirname(cfg["input"])
    _check_formats(cfg, fs.dirname(fs.abspath(shards)), run_must_exist=True)


def laion_filter_settings(cfg: dict) -> dict | None:
    """laion_filter's ``exports`` list + ``exports_config`` file -> checked export settings (None: no exports).

    The per-format settings are configs/export.yaml's, overridden by ``exports_config``; the input is
    the run's own shards, the output OUT/exports, FLAVA's unimodal streams read the run's decisions.
    """
    if not cfg.get("exports"):
        return None
    out = cfg["output"]
    settings = config_lib.load("export", SCHEMA, cfg.get("exports_config"), [], {
        "input": fs.join(out, "shards"), "output": fs.join(out, "exports"), "formats": cfg["exports"]})
    _check_formats(settings, out, run_must_exist=False)
    return settings


def describe_outputs(cfg: dict) -> str:
    return "exports in " + ", ".join(fs.join(cfg["output"], name) for name in cfg["formats"])


def check_rows(checked: CheckedShard, shard_index: dict[str, int]):
    """Decision rows for one checked curated shard: kept when every format can export the sample (its
    image decodes), else the decoder's reason; a tar that breaks off adds an unreadable_tar row."""
    path = checked.path
    index = shard_index[path]
    for c in checked.checks:
        yield decision(RawSample(c.key, index, path, c.index, {}), c.reason is None, EXPORT, c.reason,
                       detail=c.detail, width=c.width, height=c.height)
    if checked.error is not None:
        yield decision(RawSample("", index, path, -1, {}), False, EXPORT, UNREADABLE_TAR, detail=checked.error)
    # counted where read: report.py checks the rows against it
    yield InputCount(index, len(checked.checks), len(shard_index))


class CheckShards(beam.PTransform):
    """Curated shard paths -> CheckedShards: each image decoded once, here, for the export's decisions
    and every format (writing.check_shard); a format decodes again only for pixels it needs."""

    def expand(self, shards):
        return shards | "DecodeOnce" >> beam.Map(check_shard)


class ExportFormats(beam.PTransform):
    """Checked curated shards (CheckShards) -> every requested format under OUT_DIR/<format>; returns
    all their writes."""

    def __init__(self, cfg: dict, out_dir: str):
        super().__init__()
        self._cfg, self._out_dir = cfg, out_dir

    def expand(self, checked):
        writes = [checked | f"Export:{name}" >> export_class(name)(self._cfg, fs.join(self._out_dir, name))
                  for name in self._cfg["formats"]]
        return writes | "ExportWrites" >> beam.Flatten()


def _curated_tars(shards_dir: str) -> list[str]:
    return fs.glob(fs.join(shards_dir, "*.tar")) if fs.isdir(shards_dir) else []


class ExportAfterWrites(beam.PTransform):
    """laion_filter's exports: once every write of the run is done, its curated shards -> the formats.

    Takes the run's writes, flattened into one PCollection, and waits for all of them (one
    GroupByKey), so the shards and the decisions table are complete before any export reads them.
    """

    def __init__(self, settings: dict):
        super().__init__()
        self._s = settings

    def expand(self, writes):
        shards = (writes
                  | "Once" >> beam.Map(lambda _: (0, None))
                  | "WaitForWrites" >> beam.GroupByKey()
                  | "ListCuratedShards" >> beam.FlatMap(lambda _kv, d: _curated_tars(d), self._s["input"]))
        return (shards | "CheckShards" >> CheckShards()
                | "ExportFormats" >> ExportFormats(self._s, self._s["output"]))


class Export(beam.PTransform):
    """The export pipeline: list the shards, record what can be exported, write every format."""

    def __init__(self, cfg: dict, shard_paths: list[str]):
        super().__init__()
        self._cfg, self._paths = cfg, shard_paths

    def expand(self, pbegin):
        out = self._cfg["output"]
        checked = (pbegin | "ListShards" >> beam.Create(self._paths) | "Spread" >> beam.Reshuffle()
                   | "CheckShards" >> CheckShards())
        decisions = (checked
                     | "CheckSamples" >> beam.FlatMap(check_rows, {p: i for i, p in enumerate(self._paths)})
                     | "WriteDecisions" >> WriteDecisions(fs.join(out, "decisions")))
        exported = checked | "ExportFormats" >> ExportFormats(self._cfg, out)
        return done([decisions, exported])


def build(pipeline: beam.Pipeline, config: dict) -> None:
    pipeline | "Export" >> Export(config, list_input_shards(config["input"]))
