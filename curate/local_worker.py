"""The worker process Beam's local runner starts under curate: Beam's own SDK worker
(``apache_beam.runners.worker.sdk_worker_main``) with its finished bundles' output buffers released
and curate's log lines printed.

    python -m curate.local_worker        (started by the runner: curate.local_runner.curate_workers)

A Beam 2.77 worker keeps the bundle processor of every stage it ran for reuse, and with it each
output's last stream, whose buffer grew to the data plane's 10 MB flush threshold and never
shrinks (``coders.stream.OutputStream``). A pipeline of dozens of stages therefore holds ~10 MB per
stage output once shares pass 10 MB: memory that grows with the corpus up to a few hundred MB
(measured: README "Memory as the corpus grows"). ``release_output_streams`` drops a stream once
its bundle has sent it; the next bundle of the stage gets a new one from Beam as it always does.
Nothing in Beam can be set to do this, so the method is wrapped; the worker is otherwise Beam's.

Beam sends a worker's log records to the runner, whose job service logs each as a one-line
protobuf dump; ``log_to_stderr`` prints curate's (the progress lines: one per shard, one per
1,000 samples scored) on the worker's stderr, the CLI's, as the CLI prints them in one process.
``use_run_options`` gives the worker the run's log levels, which FnApiRunner does not pass.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("curate")

_PATCHED = "_curate_releases_output_stream"


def release_output_streams() -> None:
    """Wrap DataOutputOperation.finish to drop the output stream it just closed (once per process)."""
    from apache_beam.runners.worker import bundle_processor

    operation = bundle_processor.DataOutputOperation
    original = operation.finish
    if getattr(original, _PATCHED, False):
        return

    def finish(self) -> None:
        original(self)
        # Beam sets a fresh stream at the start of every bundle (set_output_stream): nothing reads it after
        self.output_stream = None

    setattr(finish, _PATCHED, True)
    finish.__wrapped__ = original
    operation.finish = finish


def log_to_stderr() -> None:
    """curate's log records on this process's stderr, as the CLI formats them, and not also sent
    to the runner (curate.run keeps the job service's repeats of worker records to errors)."""
    from curate import progress

    log.addHandler(progress.line_handler(sys.stderr))
    log.propagate = False


def use_run_options() -> None:
    """The run's worker options (OPTIONS_ENV, from curate.local_runner.worker_environment) as the
    pipeline options Beam's worker reads, where the runner gave it none ('{}') and no options file."""
    from curate.local_runner import OPTIONS_ENV

    given = os.environ.get(OPTIONS_ENV)
    if given and "PIPELINE_OPTIONS_FILE" not in os.environ and os.environ.get("PIPELINE_OPTIONS", "{}") in ("", "{}"):
        os.environ["PIPELINE_OPTIONS"] = given


def main() -> None:
    release_output_streams()
    log_to_stderr()
    use_run_options()
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
