"""Command line: ``python -m curate.run --pipeline NAME [options] [Beam pipeline options]``.

Everything the CLI does not know itself (``--runner``, ``--direct_num_workers``, ``--project`` ...)
goes to Beam unchanged. Without ``--runner`` the pipeline runs on Beam's FnApiRunner, the local
runner that needs no network (Beam's default first tries to download the Prism runner).

The command and the config are checked against the pipeline's spec (pipelines/specs.py) before
Beam, torch or open_clip is imported, so a mistake costs a fraction of a second; everything else
that can be checked is checked before the output folder is touched.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from curate import config as config_lib
from curate import fs, progress
from curate.pipelines.specs import ALL_OUTPUTS, PIPELINES, RAW, PipelineSpec

log = logging.getLogger("curate")

DEFAULT_RUNNER = "FnApiRunner"
RUN_MARKER = ".curate_run.json"  # the pipeline and settings of the run that owns the folder
REPORT = "report.json"  # written last: a folder holding it holds a completed run
# What prepare_output found: no run of these settings, an interrupted one, a completed one.
NEW, RESUME, RERUN = "new", "resume", "rerun"
# Config keys that do not change what a run produces: the same folder resumes with either value.
NOT_SETTINGS = ("output", "ingest.retry_failed")
TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")  # what curate.io.atomic_path writes before renaming


class UsageError(Exception):
    """A problem found before any work; printed as one line."""


class Interrupted(Exception):
    """Ctrl-C once the run had started; the message says how to resume."""


def _spec(name: str) -> PipelineSpec:
    if name not in PIPELINES:
        raise UsageError(f"unknown pipeline {name!r}; choose one of: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[name]


def _epilog() -> str:
    lines = ["pipelines (default config in configs/NAME.yaml):"]
    for name, spec in sorted(PIPELINES.items()):
        lines.append(f"  {name:<14} {spec.description}")
        lines.append(f"  {'':<14} config: {config_lib.CONFIG_DIR / (name + '.yaml')}")
    lines.append("Any other --flag is a Beam pipeline option, e.g. --runner=DirectRunner "
                 "--direct_running_mode=multi_processing --direct_num_workers=2.")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m curate.run", description=__doc__.split("\n")[0],
                                 epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", required=True, help="which pipeline to run (listed below)")
    ap.add_argument("--config", help="YAML file overriding the pipeline's default config")
    ap.add_argument("--input", help="raw shards: a folder, a glob or one .tar, .tar.gz or .tgz (default: the built-in "
                    "sample corpus); ingest and laion_filter also take a URL table (.parquet, .csv, .tsv, .jsonl, "
                    "or a folder)")
    ap.add_argument("--output", help="output folder (default from the config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key, e.g. --set select.clip_threshold=0.3 (repeatable)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run of this pipeline in the output folder: removes only what this "
                    "pipeline writes there, never what the run reads, nor what a run of another pipeline wrote")
    ap.add_argument("--overwrite-also", default="", metavar="NAME[,NAME]",
                    help="with --overwrite: also remove these, although a run of another pipeline wrote them "
                    f"({', '.join(ALL_OUTPUTS)})")
    return ap.parse_known_args(argv)


def check_command(args, cfg: dict) -> tuple[str, ...]:
    """The flags and keys that only make sense together, before any import or work; returns the
    names given to --overwrite-also."""
    if not cfg["output"].strip():
        raise UsageError(f"--output is empty: it would write into the current folder; name a folder, "
                         f"e.g. --output curate-out/{args.pipeline}")
    if cfg.get("input") is not None and not cfg["input"].strip():
        raise UsageError("--input is empty: name a folder, a glob or a file")
    if cfg.get("scores") and cfg.get("input") is not None:
        raise UsageError(f"input and scores both name what to curate: a run on stored scores curates the samples "
                         f"that {cfg['scores']!r} scored (their shards are recorded there); drop --input, or scores")
    also = tuple(name.strip() for name in args.overwrite_also.split(",") if name.strip())
    if also and not args.overwrite:
        raise UsageError("--overwrite-also names what --overwrite may remove besides; pass --overwrite too")
    unknown = [name for name in also if name not in ALL_OUTPUTS]
    if unknown:
        raise UsageError(f"--overwrite-also takes names that curate writes in an output folder "
                         f"({', '.join(ALL_OUTPUTS)}), got {', '.join(unknown)}")
    return also


def _overlap(a: str, b: str) -> bool:
    """Whether one path lies in the other (or they are the same); a glob counts from its fixed part."""
    def fixed(path: str) -> str:
        head = re.split(r"[*?[]", path, maxsplit=1)[0]
        path = fs.dirname(head) if head != path else path
        return (os.path.realpath(fs.local_path(path)) if fs.is_local(path) else path).rstrip("/")
    a, b = fixed(a), fixed(b)
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _free_folder(out: str) -> str:
    """A folder beside ``out`` that does not exist yet, to suggest instead."""
    n = 2
    while fs.exists(f"{out.rstrip('/')}-{n}") and n < 100:
        n += 1
    return f"{out.rstrip('/')}-{n}"


def _owner(marker: bytes | None) -> str | None:
    """The pipeline of the run that owns a folder, from its marker (None: no or unreadable marker)."""
    try:
        return json.loads(marker).get("pipeline") if marker else None
    except (ValueError, AttributeError):
        return None


def _identity(marker: bytes | None) -> dict:
    try:
        return json.loads(marker) if marker else {}
    except ValueError:
        return {}


def _same_but_input(run_id: bytes, previous: bytes | None) -> bool:
    """Whether two runs differ only in their input shards (a tar added, removed or changed)."""
    a, b = _identity(run_id), _identity(previous)
    return bool(b) and a.get("input_shards") != b.get("input_shards") and (
        {k: v for k, v in a.items() if k != "input_shards"} == {k: v for k, v in b.items() if k != "input_shards"})


def _shard_count(marker: bytes | None) -> str:
    shards = _identity(marker).get("input_shards")
    return "unknown" if shards is None else f"{len(shards)} shards"


def prepare_output(out: str, overwrite: bool, run_id: bytes = b"{}", writes: tuple[str, ...] = ALL_OUTPUTS,
                   reads: dict[str, str] | None = None, also: tuple[str, ...] = ()) -> str:
    """Make ``out`` ready for this run; return NEW, RESUME (an interrupted identical run) or RERUN
    (a completed identical run).

    ``writes``: what this run writes in ``out``; ``reads``: config key -> path, what it reads.
    A folder holding the same run (same pipeline and settings: ``run_id``) is resumed: leftover temp
    files go, the scoring stage skips every input shard it checkpointed (curate.resume; kept only
    for RESUME), and the rerun rewrites every other output with the same bytes (outputs are
    deterministic, writes atomic). Any other run's outputs among ``writes`` are refused unless
    ``overwrite``; then they are removed, except what a run of another pipeline wrote (unless named
    in ``also``), and never a path this run reads: both are refused with a one-line message that
    suggests a safe command. Nothing else in the folder is touched, and nothing at all before every check passed.
    """
    from curate.io import write_bytes

    marker = fs.join(out, RUN_MARKER)
    found = [name for name in writes if fs.exists(fs.join(out, name))]
    previous = fs.read_bytes(marker) if fs.exists(marker) else None
    if found and not overwrite and previous == run_id:
        for path in fs.walk_files(out):
            if TEMP_NAME.match(fs.basename(path)):
                fs.remove(path)
        fs.makedirs(fs.join(out, "decisions"))
        if not fs.exists(fs.join(out, REPORT)):
            return RESUME
        _drop_checkpoint(out)  # a completed run is redone whole (ingest.retry_failed may change its input)
        return RERUN
    if fs.exists(out) and fs.is_local(out) and not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out!r} is not writable")
    remove = found + [name for name in also if name not in found and fs.exists(fs.join(out, name))]
    if remove:
        _check_overwrite(out, overwrite, run_id, previous, found, remove, reads or {}, also)
    for name in remove:
        fs.remove(fs.join(out, name))
    kept = [name for name in ALL_OUTPUTS if name not in remove and fs.exists(fs.join(out, name))]
    if remove and kept:
        log.info("--overwrite removed %s and kept %s (not written by this run)", ", ".join(remove), ", ".join(kept))
    try:
        fs.makedirs(out)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out!r}: {e.strerror or e}") from None
    if fs.is_local(out) and not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out!r} is not writable")
    fs.makedirs(fs.join(out, "decisions"))
    _drop_checkpoint(out)  # checkpointed by a run of other settings, or one that is started over
    write_bytes(marker, run_id)
    return NEW


def _drop_checkpoint(out: str) -> None:
    """Remove the per-shard checkpoint of the scoring stage (curate.resume): only the interrupted run
    that wrote it may reuse it, and a completed run needs it no more."""
    from curate import resume

    if fs.exists(resume.folder(out)):
        fs.remove(resume.folder(out))


def _check_overwrite(out: str, overwrite: bool, run_id: bytes, previous: bytes | None, found: list[str],
                     remove: list[str], reads: dict[str, str], also: tuple[str, ...]) -> None:
    """Refuse what prepare_output must not remove, with a command that is safe instead."""
    pipeline, owner = _owner(run_id), _owner(previous)
    elsewhere = f"choose another folder, e.g. --output {_free_folder(out)}"
    held = [(name, key) for name in remove for key, path in reads.items() if _overlap(fs.join(out, name), path)]
    if held:
        name, key = held[0]
        raise UsageError(f"output folder {out!r} holds {name}, which this run reads ({key}={reads[key]}), and "
                         f"{'--overwrite' if overwrite else 'this run'} would replace it: {elsewhere}")
    holder = (f"{'an' if owner[0] in 'aeiou' else 'a'} {owner} run") if owner else "a run"
    foreign = [name for name in found if owner and pipeline and owner != pipeline and name not in also]
    if foreign:
        raise UsageError(f"output folder {out!r} holds {holder} ({', '.join(found)}); --overwrite replaces only "
                         f"an earlier {pipeline} run: {elsewhere}, or pass --overwrite --overwrite-also {','.join(foreign)} "
                         f"to replace what the {owner} run wrote there")
    if not overwrite and _same_but_input(run_id, previous):
        raise UsageError(f"output folder {out!r} holds {holder} with these settings over other input shards "
                         f"({_shard_count(previous)} then, {_shard_count(run_id)} now); pass --overwrite to start "
                         f"over (nothing else there is touched), or {elsewhere}")
    if not overwrite:
        raise UsageError(f"output folder {out!r} already holds {holder} with other settings ({', '.join(found)}); "
                         f"pass --overwrite to replace {'it' if len(found) == 1 else 'them'} (only what that "
                         f"run wrote is replaced), or {elsewhere}")


def read_paths(spec: PipelineSpec, cfg: dict) -> dict[str, str]:
    """Config key -> path of everything the run reads (``spec.reads``); a list of mappings (the
    block lists, the probes) gives one entry per item, ``KEY[i]`` -> its ``path``."""
    reads = {}
    for key in spec.reads:
        value = cfg.get(key)
        if isinstance(value, list):
            reads |= {f"{key}[{i}]": fs.abspath(item["path"]) for i, item in enumerate(value)
                      if isinstance(item, dict) and item.get("path")}
        elif value:
            reads[key] = fs.abspath(value)
    return reads


def missing_files(spec: PipelineSpec, cfg: dict) -> None:
    """A list or head file (``KEY[i]`` of ``read_paths``), or an input path that is no glob, that does
    not exist: an error before the pipeline's imports, which take seconds (what is inside each is
    checked later: the input's shards by ``list_input_shards``, a file by the pipeline's validate)."""
    for key, path in read_paths(spec, cfg).items():
        if "[" in key and not fs.exists(path):
            raise config_lib.ConfigError(f"config error: {key}: {path} does not exist")
        if key == "input" and not fs.has_wildcard(path) and not fs.exists(path):
            raise UsageError(f"input {path!r} does not exist")


def check_sample_corpus_folder(out: str) -> None:
    """OUT/sample_corpus is replaced when its settings change: refuse, before any work, a folder of
    that name that curate did not write (no corpus.json), so no user file is ever deleted."""
    corpus = fs.join(out, "sample_corpus")
    if fs.exists(corpus) and not fs.exists(fs.join(corpus, "corpus.json")):
        raise UsageError(f"{corpus!r} holds files that are not curate's built-in sample corpus; move them, "
                         "or choose another --output")


def sample_corpus(out: str, cfg: dict) -> str:
    """Generate the built-in corpus inside the output folder (reused when the settings match)."""
    from curate import synth
    from curate.io import dumps_json, write_bytes

    corpus = fs.join(out, "sample_corpus")
    settings = config_lib.section(cfg, "sample_corpus")
    marker = fs.join(corpus, "corpus.json")
    if fs.exists(marker) and fs.read_bytes(marker) == dumps_json(settings):
        log.info("using the built-in sample corpus in %s", corpus)
        return corpus
    if fs.exists(corpus):
        check_sample_corpus_folder(out)
        fs.remove(corpus)
    log.info("writing the built-in sample corpus (%d samples, seed %d) to %s",
             settings["samples"], settings["seed"], corpus)
    generate = dict(samples=settings["samples"], seed=settings["seed"], noise=settings["noise"],
                    mix=settings["mix"], stamped=settings.get("stamped", 0.0), processes=os.cpu_count() or 1)
    if fs.is_local(corpus):
        synth.generate(corpus, **generate)
    else:  # the generator writes local files: make them in a scratch folder, then upload
        with tempfile.TemporaryDirectory() as scratch:
            synth.generate(scratch, **generate)
            for name in sorted(os.listdir(scratch)):
                write_bytes(fs.join(corpus, name), Path(scratch, name).read_bytes())
    write_bytes(marker, dumps_json(settings))
    return corpus


def beam_options(beam_args: list[str]):
    """Beam's options from the remaining flags, with curate's offline-safe, quiet defaults."""
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        StandardOptions,
        WorkerOptions,
    )

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


@contextlib.contextmanager
def _ctrl_c_exits(message: str, local_workers: bool = False):
    """Ctrl-C prints ``message`` and ends the process at once, exit status 130.

    Beam turns a KeyboardInterrupt raised inside a DoFn into a RuntimeError and logs it in full
    (about 200 lines) before the CLI could catch it. Ending here is as safe as a kill: every write
    is atomic, and the rerun removes the temp files and resumes (tests/test_resume.py).
    ``local_workers``: worker processes inherit this process's stderr, and print tracebacks when a
    terminal's Ctrl-C reaches them or when this process ends; their stderr is then a pipe that a
    thread copies to the real one until Ctrl-C, and nothing after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = threading.Event()
    stderr = 2
    if local_workers:
        stderr, (read_end, write_end) = os.dup(2), os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)

        def forward():  # until the last writer is gone: this process's fd 2 (restored below) and the workers
            while chunk := os.read(read_end, 1 << 16):
                if not stopping.is_set():
                    with contextlib.suppress(OSError):
                        os.write(stderr, chunk)
            os.close(read_end)
            os.close(stderr)

        threading.Thread(target=forward, name="stderr", daemon=True).start()

    def stop(_signum, _frame):
        stopping.set()
        os.write(stderr, f"interrupted: {message}\n".encode())
        os._exit(130)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if local_workers:
            os.dup2(stderr, 2)


def run(argv=None, ctrl_c_exits: bool = False) -> dict:
    """Validate everything, run the pipeline, write report.json, print the summary.

    ``ctrl_c_exits`` (the CLI): once the work has started, Ctrl-C ends the process with one line."""
    args, beam_args = parse_args(argv)
    spec = _spec(args.pipeline)
    cfg = config_lib.load(args.pipeline, spec.schema, args.config, args.set,
                          {"input": args.input, "output": args.output})
    also = check_command(args, cfg)
    missing_files(spec, cfg)
    # Only now Beam, torch, open_clip: the checks above report a mistake in a fraction of a second.
    from apache_beam.options.pipeline_options import DirectOptions, TestOptions

    from curate.embeddings import check_store
    from curate.io import dumps_json
    from curate.pipelines import ingest
    from curate.raw_shards import list_input_shards

    module = importlib.import_module(spec.module)
    reuse = cfg.get("scores")
    if reuse:
        try:
            check_store(reuse)
        except ValueError as e:
            raise UsageError(str(e)) from None
        cfg["scores"] = fs.abspath(reuse)
    elif hasattr(module, "scorer_spec"):
        from curate.models.clip import (
            fetch_weights,  # torch + open_clip: only for pipelines that score
        )

        fetch_weights(module.scorer_spec(cfg))
    options = beam_options(beam_args)
    reads_table = ingest.reads_table(module, cfg["input"]) and not reuse
    if reads_table:
        try:
            ingest.check_input(cfg)
        except ValueError as e:
            raise UsageError(str(e)) from None
    input_shards = None
    if cfg["input"] is not None and not reads_table and not reuse:
        try:
            input_shards = list_input_shards(cfg["input"])
        except ValueError as e:
            raise UsageError(str(e)) from None
    out = cfg["output"] = fs.abspath(cfg["output"])
    if cfg["input"] is not None:
        cfg["input"] = fs.abspath(cfg["input"])
    if hasattr(module, "validate"):  # the pipeline's own checks, before any work
        module.validate(cfg)
    if options.view_as(TestOptions).dry_run:
        return dry_run(module, cfg, options)
    if cfg["input"] is None and not reuse:
        check_sample_corpus_folder(out)
    identity = {"pipeline": args.pipeline, "config": {k: v for k, v in cfg.items() if k not in NOT_SETTINGS}}
    if input_shards is not None:
        # the input's shards (path, size) belong to the run too: a folder resumed or rerun over other
        # shards would mix the old shards' outputs with the new ones'
        identity["input_shards"] = [[p, fs.size(p)] for p in input_shards]
    run_id = dumps_json(identity)
    writes = tuple(name for name in spec.outputs if name != RAW or reads_table)  # raw/: only when it ingests
    reads = read_paths(spec, cfg)
    again = "the same command without --overwrite" if args.overwrite else "the same command"
    stopped = (f"the {args.pipeline} run in {out} stopped before it finished; run {again} to resume it "
               "(what was written is kept, the rest is redone)")
    try:
        state = prepare_output(out, args.overwrite, run_id, writes, reads, also)
        if state == RESUME:
            log.info("resuming the interrupted run in %s", out)
        elif state == RERUN and cfg.get("ingest.retry_failed"):
            log.info("retrying the failed rows of the completed run in %s", out)
        elif state == RERUN:
            log.info("rerunning a completed run in %s: outputs are rewritten with the same bytes", out)
        log.info("output folder: %s", out)
        local_workers = options.view_as(DirectOptions).direct_running_mode == "multi_processing"
        with _ctrl_c_exits(stopped, local_workers) if ctrl_c_exits else contextlib.nullcontext():
            report = _execute(args.pipeline, module, cfg, options, reads_table,
                              builtin_input=cfg["input"] is None and not reuse)
        _drop_checkpoint(out)  # after report.json: until then the run can still be resumed
        return report
    except KeyboardInterrupt:
        raise Interrupted(stopped) from None


def _execute(pipeline_name: str, module, cfg: dict, options, reads_table: bool, builtin_input: bool) -> dict:
    """The work, once every check passed and the output folder is ready."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions

    from curate import guard_rails, html_report, local_runner
    from curate.pipelines import ingest
    from curate.report import check_conservation, count_decisions, summary, write_report
    from curate.shards import write_sizes
    from curate.timing import process_cpu_seconds, stage_seconds

    out = cfg["output"]
    if builtin_input:
        cfg["input"] = sample_corpus(out, cfg)
    t0, cpu0 = time.time(), process_cpu_seconds()
    build_cfg = cfg
    if pipeline_name != "ingest" and reads_table:
        with local_runner.prepared(options):  # URL table: OUT/raw first
            build_cfg = ingest.ingest_first(cfg, options)
    pipeline = beam.Pipeline(options=options)
    module.build(pipeline, build_cfg)
    with local_runner.prepared(options):
        result = pipeline.run()
        result.wait_until_finish()
        if getattr(result, "client", None) is not None:  # Beam's DaskRunner leaves its client open
            result.client.close()
    wall, cpu = time.time() - t0, process_cpu_seconds() - cpu0
    progress.close()  # the bars' last lines, before the summary

    shards = None
    if getattr(module, "WRITES_SHARDS", False):
        shard_dir = fs.join(out, "shards")
        fs.makedirs(shard_dir)
        if not fs.exists(fs.join(shard_dir, "sizes.json")):  # nothing kept: no element reached it
            write_sizes(shard_dir, {})
        shards = json.loads(fs.read_bytes(fs.join(shard_dir, "sizes.json")))
    counts = count_decisions(fs.join(out, "decisions"), None if shards is None else sum(shards.values()))
    synthetic = guard_rails.synthetic_input(cfg, builtin_input)
    # what a pipeline adds to report.json from its outputs (laion_filter: the coverage audit)
    sections = module.report_sections(cfg) if hasattr(module, "report_sections") else {}
    report = write_report(out, pipeline_name, cfg, counts, wall, stage_seconds(result), shards,
                          options.view_as(StandardOptions).runner,
                          guard_rails.warnings(counts, cfg, synthetic, sections), synthetic, cpu, sections)
    html_report.write_after_run(out, report)
    print(summary(report, out, module.describe_outputs(cfg) if hasattr(module, "describe_outputs") else None))
    check_conservation(counts)  # after the report: a failed run keeps its evidence
    return report


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format=progress.LOG_FORMAT, datefmt=progress.LOG_DATEFMT)
    logging.getLogger("curate").setLevel(logging.INFO)
    # Beam warns about optional GCP client libraries at import; irrelevant unless on Dataflow.
    logging.getLogger().addFilter(lambda record: "apitools" not in record.getMessage())
    # Local workers print their own log lines (curate.local_worker); the job service would repeat
    # each one as a protobuf dump.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    try:
        with progress.on_terminal(sys.stderr):  # bars for the long stages; log lines when not a terminal
            run(argv, ctrl_c_exits=True)
    except (UsageError, config_lib.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:
        status = _known_failure(e)
        if status is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return status
    return 0


# Failures that end a run with one line, by (module, class, exit status). The modules are imported
# only once a run needs them (the model loader pulls in torch + open_clip), so they are looked up
# where they are, never imported here.
_KNOWN_FAILURES = (("curate.models.clip", "ModelLoadError", 2),   # weights that cannot be loaded
                   ("curate.report", "ConservationError", 1))     # samples lost or mixed between runs


def _known_failure(error: Exception) -> int | None:
    for module_name, class_name, status in _KNOWN_FAILURES:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, getattr(module, class_name)):
            return status
    return None


if __name__ == "__main__":
    sys.exit(main())
