"""Command line: ``python -m curate.run --pipeline NAME [options] [Beam pipeline options]``.

Everything the CLI does not know itself (``--runner``, ``--direct_num_workers``, ``--project`` ...)
goes to Beam unchanged. Without ``--runner`` the pipeline runs on Beam's FnApiRunner, the local
runner that needs no network (Beam's default first tries to download the Prism runner).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from curate import config as config_lib
from curate import fs
from curate.io import dumps_json, write_bytes

log = logging.getLogger("curate")

PIPELINES = {"laion_filter": "pipelines.laion_filter", "score": "pipelines.score", "export": "pipelines.export",
             "ingest": "pipelines.ingest"}
DEFAULT_RUNNER = "FnApiRunner"
# What a run writes under its output folder; --overwrite removes exactly these, nothing else.
RUN_OUTPUTS = ("shards", "decisions", "embeddings", "report.json", "exports", "raw",
               "contrastive", "flava", "chameleon", "llava", "blip2")  # the last five: export's folders
RUN_MARKER = ".curate_run.json"  # the settings of the run that owns the folder
# Config keys that do not change what a run produces: the same folder resumes with either value.
NOT_SETTINGS = ("output", "ingest.retry_failed")
TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")  # what curate.io.atomic_path writes before renaming


class UsageError(Exception):
    """A problem found before any work; printed as one line."""


def _pipeline_module(name: str):
    if name not in PIPELINES:
        raise UsageError(f"unknown pipeline {name!r}; choose one of: {', '.join(sorted(PIPELINES))}")
    return importlib.import_module(PIPELINES[name])


def _description(module: str) -> str:
    try:
        return importlib.import_module(module).DESCRIPTION
    except ImportError as e:  # one pipeline's missing dependency must not break the others
        return f"(unavailable here: {e})"


def _epilog() -> str:
    lines = ["pipelines (default config in configs/NAME.yaml):"]
    for name, module in sorted(PIPELINES.items()):
        lines.append(f"  {name:<14} {_description(module)}")
        lines.append(f"  {'':<14} config: {config_lib.CONFIG_DIR / (name + '.yaml')}")
    lines.append("Any other --flag is a Beam pipeline option, e.g. --runner=DirectRunner "
                 "--direct_running_mode=multi_processing --direct_num_workers=2.")
    return "\n".join(lines)


def parse_args(argv):
    # The epilog imports every pipeline module: build it only when help is shown.
    seen = sys.argv[1:] if argv is None else argv
    wants_help = not seen or "-h" in seen or "--help" in seen
    ap = argparse.ArgumentParser(prog="python -m curate.run", description=__doc__.split("\n")[0],
                                 epilog=_epilog() if wants_help else None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", required=True, help="which pipeline to run (listed below)")
    ap.add_argument("--config", help="YAML file overriding the pipeline's default config")
    ap.add_argument("--input", help="raw shards: a folder, a glob or one .tar, .tar.gz or .tgz (default: the built-in "
                    "sample corpus); ingest and laion_filter also take a URL table (.parquet, .csv, .tsv, .jsonl, "
                    "or a folder)")
    ap.add_argument("--output", help="output folder (default from the config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key, e.g. --set select.clip_threshold=0.3 (repeatable)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the outputs of an earlier run in the output folder")
    return ap.parse_known_args(argv)


def prepare_output(out: str, overwrite: bool, run_id: bytes = b"{}") -> bool:
    """Make ``out`` ready for this run; return True when it resumes an interrupted identical run.

    A folder holding another run is refused unless ``overwrite``; a folder holding the same run
    (same pipeline, same settings: ``run_id``) is resumed: leftover temp files go, and the rerun
    rewrites every output with the same bytes (outputs are deterministic, writes atomic).
    Never touches anything but this run's own output names.
    """
    try:
        fs.makedirs(out)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out!r}: {e.strerror or e}") from None
    if fs.is_local(out) and not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out!r} is not writable")
    marker = fs.join(out, RUN_MARKER)
    existing = [name for name in RUN_OUTPUTS if fs.exists(fs.join(out, name))]
    resume = bool(existing) and not overwrite and fs.exists(marker) and fs.read_bytes(marker) == run_id
    if existing and not (overwrite or resume):
        raise UsageError(f"output folder {out!r} already holds a run with other settings "
                         f"({', '.join(existing)}); pass --overwrite to replace it, or choose another --output")
    if resume:
        for path in fs.walk_files(out):
            if TEMP_NAME.match(fs.basename(path)):
                fs.remove(path)
    else:
        for name in existing:
            fs.remove(fs.join(out, name))
    fs.makedirs(fs.join(out, "decisions"))
    write_bytes(marker, run_id)
    return resume


def sample_corpus(out: str, cfg: dict) -> str:
    """Generate the built-in corpus inside the output folder (reused when the settings match)."""
    from curate import synth

    corpus = fs.join(out, "sample_corpus")
    settings = config_lib.section(cfg, "sample_corpus")
    marker = fs.join(corpus, "corpus.json")
    if fs.exists(marker) and fs.read_bytes(marker) == dumps_json(settings):
        log.info("using the built-in sample corpus in %s", corpus)
        return corpus
    if fs.exists(corpus):
        fs.remove(corpus)
    log.info("writing the built-in sample corpus (%d samples, seed %d) to %s",
             settings["samples"], settings["seed"], corpus)
    generate = dict(samples=settings["samples"], seed=settings["seed"], noise=settings["noise"],
                    processes=os.cpu_count() or 1)
    if fs.is_local(corpus):
        synth.generate(corpus, **generate)
    else:  # the generator writes local files: make them in a scratch folder, then upload
        with tempfile.TemporaryDirectory() as scratch:
            synth.generate(scratch, **generate)
            for name in sorted(os.listdir(scratch)):
                write_bytes(fs.join(corpus, name), Path(scratch, name).read_bytes())
    write_bytes(marker, dumps_json(settings))
    return corpus


@contextlib.contextmanager
def _local_worker_log_levels(out: str, options):
    """Give local multi-process workers the log levels of ``options``.

    FnApiRunner starts them with empty pipeline options, so they would log every gRPC step at
    INFO and bury the progress lines; they do read PIPELINE_OPTIONS_FILE at start-up.
    """
    from apache_beam.options.pipeline_options import DirectOptions, WorkerOptions

    if (options.view_as(DirectOptions).direct_running_mode != "multi_processing"
            or "PIPELINE_OPTIONS_FILE" in os.environ):
        yield
        return
    w = options.view_as(WorkerOptions)
    # Beside the outputs when local; a remote output folder is no path a local process can open.
    path = (os.path.join(out, ".worker_options.json") if fs.is_local(out)
            else tempfile.mkstemp(prefix="curate-worker-options-", suffix=".json")[1])
    with open(path, "w") as f:
        json.dump({"options": {"default_sdk_harness_log_level": w.default_sdk_harness_log_level,
                               "sdk_harness_log_level_overrides": w.sdk_harness_log_level_overrides}}, f)
    os.environ["PIPELINE_OPTIONS_FILE"] = path
    try:
        yield
    finally:
        del os.environ["PIPELINE_OPTIONS_FILE"]
        os.remove(path)


def beam_options(beam_args: list[str]):
    """Beam's options from the remaining flags, with curate's offline-safe, quiet defaults."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, WorkerOptions

    if any("DaskRunner" in a for a in beam_args) and not any(
            a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in beam_args):
        # Dask puts 128 created elements in one partition by default; curate creates one element per
        # input shard, and each must be its own task for the workers to share the shards.
        beam_args = [*beam_args, "--dask_partition_size=1"]
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or DEFAULT_RUNNER
    harness = options.view_as(WorkerOptions)
    if harness.default_sdk_harness_log_level is None:
        # Worker processes log every gRPC step at INFO; keep curate's own progress lines.
        harness.default_sdk_harness_log_level = "WARNING"
        harness.sdk_harness_log_level_overrides = harness.sdk_harness_log_level_overrides or {"curate": "INFO"}
    return options


def dry_run(module, cfg: dict, options) -> dict:
    """``--dry_run=True``: build the job and hand it to the runner without running it (DataflowRunner
    builds and validates the job request, then stops before submitting). Nothing is written."""
    import apache_beam as beam

    if cfg["input"] is None:
        raise UsageError("a dry run needs --input: the built-in sample corpus is written only by a real run")
    pipeline = beam.Pipeline(options=options)
    module.build(pipeline, cfg)
    result = pipeline.run()
    print(f"dry run: {type(pipeline.runner).__name__} built the job; nothing was run or written")
    return {"dry_run": True, "state": str(result.state), "job": getattr(result, "job", None)}


def run(argv=None) -> dict:
    """Validate everything, run the pipeline, write report.json, print the summary."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions, TestOptions

    from curate.embeddings import check_store
    from curate import guard_rails
    from curate.report import count_decisions, summary, write_report
    from curate.timing import stage_seconds
    from curate.shards import list_input_shards, write_sizes
    from pipelines import ingest

    args, beam_args = parse_args(argv)
    module = _pipeline_module(args.pipeline)
    cfg = config_lib.load(args.pipeline, module.SCHEMA, args.config, args.set,
                          {"input": args.input, "output": args.output})
    reuse = cfg.get("scores")
    if reuse:
        try:
            check_store(reuse)
        except ValueError as e:
            raise UsageError(str(e)) from None
        cfg["scores"] = fs.abspath(reuse)
    elif hasattr(module, "scorer_spec"):
        from curate.models.clip import fetch_weights  # torch + open_clip: only for pipelines that score

        fetch_weights(module.scorer_spec(cfg))
    options = beam_options(beam_args)
    if ingest.reads_table(module, cfg["input"]) and not reuse:
        try:
            ingest.check_input(cfg)
        except ValueError as e:
            raise UsageError(str(e)) from None
    elif cfg["input"] is not None and not reuse:
        try:
            list_input_shards(cfg["input"])
        except ValueError as e:
            raise UsageError(str(e)) from None
    out = cfg["output"] = fs.abspath(cfg["output"])
    if cfg["input"] is not None:
        cfg["input"] = fs.abspath(cfg["input"])
    if hasattr(module, "validate"):  # the pipeline's own checks, before any work
        module.validate(cfg)
    if options.view_as(TestOptions).dry_run:
        return dry_run(module, cfg, options)
    run_id = dumps_json({"pipeline": args.pipeline, "config": {k: v for k, v in cfg.items() if k not in NOT_SETTINGS}})
    if prepare_output(out, args.overwrite, run_id):
        log.info("resuming the interrupted run in %s", out)
    log.info("output folder: %s", out)
    builtin_input = cfg["input"] is None and not reuse
    if builtin_input:
        cfg["input"] = sample_corpus(out, cfg)

    t0 = time.time()
    build_cfg = cfg
    if args.pipeline != "ingest" and ingest.reads_table(module, cfg["input"]):
        with _local_worker_log_levels(out, options):  # URL table: download into OUT/raw first
            build_cfg = ingest.ingest_first(cfg, options)
    pipeline = beam.Pipeline(options=options)
    module.build(pipeline, build_cfg)
    with _local_worker_log_levels(out, options):
        result = pipeline.run()
        result.wait_until_finish()
        if getattr(result, "client", None) is not None:  # Beam's DaskRunner leaves its client open
            result.client.close()
    wall = time.time() - t0

    shards = None
    if getattr(module, "WRITES_SHARDS", False):
        shard_dir = fs.join(out, "shards")
        fs.makedirs(shard_dir)
        if not fs.exists(fs.join(shard_dir, "sizes.json")):  # nothing kept: no element reached it
            write_sizes(shard_dir, {})
        shards = json.loads(fs.read_bytes(fs.join(shard_dir, "sizes.json")))
    counts = count_decisions(fs.join(out, "decisions"))
    synthetic = guard_rails.synthetic_input(cfg, builtin_input)
    report = write_report(out, args.pipeline, cfg, counts, wall, stage_seconds(result), shards,
                          options.view_as(StandardOptions).runner, guard_rails.warnings(counts, cfg, synthetic),
                          synthetic)
    print(summary(report, out, module.describe_outputs(cfg) if hasattr(module, "describe_outputs") else None))
    return report


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("curate").setLevel(logging.INFO)
    # Beam warns about optional GCP client libraries at import; irrelevant unless on Dataflow.
    logging.getLogger().addFilter(lambda record: "apitools" not in record.getMessage())
    # Local workers print their own log lines; the job service would repeat each one.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    try:
        run(argv)
    except (UsageError, config_lib.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # The model loader is imported only by pipelines that score (it pulls in torch + open_clip).
        clip = sys.modules.get("curate.models.clip")
        if clip is None or not isinstance(e, clip.ModelLoadError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
