"""Beam's local runner (FnApiRunner), made to keep its workers' memory flat as the corpus grows.

Beam 2.77's FnApiRunner encodes a worker's whole share of a GroupByKey's output as ONE bytes
object (``execution.GroupingBuffer.partition``), and sends a worker its whole input for a stage
as one gRPC message (``BundleManager._send_input_to_worker`` writes every part without the flush
the data plane's own writers do once 10 MB are buffered). A worker then holds about three copies
of its share of a stage's input at once (gRPC's receive buffer, the bytes, the parsed message), so
its memory grows with the corpus whatever the pipeline does (benchmarks/runner_memory.py
measures it), and a share over 2 GB fails gRPC's message limit. ``stream_to_workers`` cuts each
grouped share into chunks of whole elements of about ``CHUNK_BYTES`` and sends a message once that
much is written, so a worker receives messages of 4-8 MB, of which its receive queue holds at most
five. The bytes, their order and each worker's share are unchanged. Nothing in Beam can be set to
do this, so the two methods are replaced; runners other than the local one never call them.

``curate_workers`` has the runner start its worker processes as ``python -m curate.local_worker``
(Beam's worker with its finished bundles' output buffers released), and ``worker_environment``
gives them bounded malloc arenas and the run's log levels; ``prepared`` is the three together,
what ``python -m curate.run`` does around its runs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

log = logging.getLogger("curate")

CHUNK_BYTES = 4 << 20  # a chunk and a message (the data plane's own writers flush at 10 MB)

_PATCHED = "_curate_patched"

BEAM_WORKER = "apache_beam.runners.worker.sdk_worker_main"  # FnApiRunner's multi_processing command
CURATE_WORKER = "curate.local_worker"
OPTIONS_ENV = "CURATE_WORKER_OPTIONS"  # the run's worker options, for curate.local_worker

# glibc's malloc in local worker processes: 2 arenas, not 8 per core, and blocks of 1 MiB or more
# always mapped (so returned when freed), not a threshold that rises with the largest block freed.
# Without them a worker keeps the peak of every stage's temporaries (measured: README "Memory as the
# corpus grows").
WORKER_MALLOC = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


@contextlib.contextmanager
def prepared(options=None):
    """Beam's local runner as curate runs it, for the block's duration: grouped input streamed to the
    workers, curate's worker processes, their environment (``worker_environment``)."""
    stream_to_workers()
    curate_workers()
    with worker_environment(options):
        yield


def curate_workers() -> None:
    """Start local worker processes as ``python -m curate.local_worker`` where the runner would start
    Beam's own worker module (FnApiRunner's multi_processing mode); any other command is kept."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    handler = worker_handlers.SubprocessSdkWorkerHandler
    original = handler.__init__
    if getattr(original, _PATCHED, False):
        return
    beams, curates = (f"{sys.executable} -m {module}".encode() for module in (BEAM_WORKER, CURATE_WORKER))

    def __init__(self, worker_command_line, *args, **kwargs):
        original(self, curates if worker_command_line == beams else worker_command_line, *args, **kwargs)

    setattr(__init__, _PATCHED, True)
    __init__.__wrapped__ = original
    handler.__init__ = __init__


@contextlib.contextmanager
def worker_environment(options=None):
    """The environment the runner starts its worker processes with, for the block's duration (a value
    the user set wins): WORKER_MALLOC (glibc reads it at a process's start: this process is
    unaffected), and ``options``' worker log levels under OPTIONS_ENV, which curate.local_worker
    hands to Beam's worker: FnApiRunner starts its workers with empty pipeline options, so they
    would log every gRPC step at INFO and bury the progress lines."""
    added = {k: v for k, v in {**WORKER_MALLOC, **_log_levels(options)}.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _log_levels(options) -> dict[str, str]:
    """{OPTIONS_ENV: the pipeline options JSON Beam's worker reads, holding ``options``' log levels}."""
    if options is None:
        return {}
    from apache_beam.options.pipeline_options import WorkerOptions

    w = options.view_as(WorkerOptions)
    return {OPTIONS_ENV: json.dumps({"options": {
        "default_sdk_harness_log_level": w.default_sdk_harness_log_level,
        "sdk_harness_log_level_overrides": w.sdk_harness_log_level_overrides}})}


def stream_to_workers() -> None:
    """Replace GroupingBuffer.partition with ``_partition_in_chunks`` and BundleManager's
    _send_input_to_worker with ``_send_in_messages`` (once per process)."""
    from apache_beam.runners.portability.fn_api_runner import execution, fn_runner

    buffer, manager = execution.GroupingBuffer, fn_runner.BundleManager
    if getattr(buffer.partition, _PATCHED, False):
        return
    if not (all(hasattr(execution, name) for name in ("create_OutputStream", "GlobalWindows", "GlobalWindow"))
            and hasattr(manager, "_send_input_to_worker")):
        log.warning("this Beam's local runner is not the one curate knows: a worker gets its input for a "
                    "stage in one message (worker memory grows with the corpus)")
        return
    setattr(_send_in_messages, _PATCHED, True)
    _send_in_messages.__wrapped__ = manager._send_input_to_worker
    manager._send_input_to_worker = _send_in_messages
    original = buffer.partition

    def partition(self, n: int) -> list[list[bytes]]:
        if self._grouped_output or not self._windowing.is_default():
            return original(self, n)  # already cut, or windowed (curate groups in the global window)
        self._grouped_output = _partition_in_chunks(self, n, execution)
        self._table.clear()
        return self._grouped_output

    setattr(partition, _PATCHED, True)
    partition.__wrapped__ = original
    buffer.partition = partition


def _partition_in_chunks(buffer, n: int, execution) -> list[list[bytes]]:
    """Beam's GroupingBuffer.partition for the global window (key i goes to worker i mod n, each
    (key, values) encoded as Beam encodes it), with each worker's stream cut after the element
    that takes it past CHUNK_BYTES."""
    from apache_beam.utils import windowed_value

    pane = windowed_value.PaneInfo(is_first=True, is_last=True, timing=windowed_value.PaneInfoTiming.ON_TIME,
                                   index=0, nonspeculative_index=0)
    in_window = execution.GlobalWindows.windowed_value(None, timestamp=execution.GlobalWindow().max_timestamp(),
                                                        pane_info=pane).with_value
    coder_impl = buffer._post_grouped_coder.get_impl()
    key_coder_impl = buffer._key_coder.get_impl()
    chunks: list[list[bytes]] = [[] for _ in range(n)]
    streams = [execution.create_OutputStream() for _ in range(n)]
    for idx, (encoded_key, values) in enumerate(buffer._table.items()):
        part = idx % n
        coder_impl.encode_to_stream(in_window((key_coder_impl.decode(encoded_key), values)), streams[part], True)
        if streams[part].size() >= CHUNK_BYTES:
            chunks[part].append(streams[part].get())
            streams[part] = execution.create_OutputStream()
    for part, stream in enumerate(streams):
        if stream.size() or not chunks[part]:
            chunks[part].append(stream.get())  # as Beam: an empty share is one empty stream
    return chunks


def _send_in_messages(self, process_bundle_id: str, read_transform_id: str, byte_streams) -> None:
    """BundleManager._send_input_to_worker, sending a message once CHUNK_BYTES are written (each
    part holds whole elements, so every message does)."""
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)
    for byte_stream in byte_streams or []:
        data_out.write(byte_stream)
        if data_out.size() >= CHUNK_BYTES:
            data_out.flush()
    data_out.close()
