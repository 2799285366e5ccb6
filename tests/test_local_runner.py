"""curate.local_runner: the local runner hands grouped data to workers in chunks of whole elements,
with the same bytes, in the same order, to the same workers as Beam's own partition; its workers
run curate.local_worker, which drops each finished bundle's output stream."""
import os
import sys

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.runners.portability.fn_api_runner import execution
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, window

from curate import local_runner

PRE = coders.WindowedValueCoder(coders.TupleCoder([coders.VarIntCoder(), coders.BytesCoder()]),
                                coders.GlobalWindowCoder())
POST = coders.WindowedValueCoder(coders.TupleCoder([coders.VarIntCoder(), coders.IterableCoder(coders.BytesCoder())]),
                                 coders.GlobalWindowCoder())
VALUE = 5000  # bytes per value; 30 values per key: 150 kB per grouped element


def grouping_buffer(keys: int) -> execution.GroupingBuffer:
    buffer = execution.GroupingBuffer(PRE, POST, core.Windowing(window.GlobalWindows()))
    out = create_OutputStream()
    for i in range(keys * 30):
        PRE.get_impl().encode_to_stream(window.GlobalWindows.windowed_value((i % keys, bytes([i % 251]) * VALUE)),
                                        out, True)
    buffer.append(out.get())
    return buffer


def decoded(chunk: bytes) -> list:
    stream, out = create_InputStream(chunk), []
    while stream.size() > 0:
        out.append(POST.get_impl().decode_from_stream(stream, True).value)
    return out


def test_chunks_hold_whole_elements_and_join_to_beams_own_partition():
    partition = execution.GroupingBuffer.partition
    beams = getattr(partition, "__wrapped__", partition)  # another test's CLI run may have patched it
    original = beams(grouping_buffer(200), 2)
    local_runner.stream_to_workers()
    local_runner.stream_to_workers()  # a second call changes nothing
    chunked = grouping_buffer(200).partition(2)
    assert [len(p) for p in original] == [1, 1]  # Beam: one message per worker, 15 MB each here
    for beam_part, part in zip(original, chunked, strict=True):
        assert b"".join(part) == beam_part[0]
        assert len(part) > 1
        element = max(len(chunk) for chunk in part) - local_runner.CHUNK_BYTES
        assert element <= 30 * (VALUE + 8)  # a chunk ends with the element that took it past CHUNK_BYTES
        for chunk in part:  # each chunk decodes on its own: the worker decodes message by message
            assert all(len(values) == 30 for _, values in decoded(chunk))


def test_an_empty_share_is_one_empty_stream_as_in_beam():
    local_runner.stream_to_workers()
    assert grouping_buffer(1).partition(3)[1:] == [[b""], [b""]]


def test_a_pipeline_groups_the_same_through_chunks():
    """Groups bigger than a chunk, more of them than fit in one: each key's values arrive whole."""
    local_runner.stream_to_workers()
    with beam.Pipeline(runner="FnApiRunner") as p:
        counts = (p | beam.Create([(i % 40, b"x" * 20_000) for i in range(1200)])
                  | beam.GroupByKey()
                  | beam.MapTuple(lambda k, vs: (k, sum(len(v) for v in vs))))
        assert_that(counts, equal_to([(k, 30 * 20_000) for k in range(40)]))


def test_a_stage_input_goes_to_a_worker_in_messages_of_a_few_megabytes():
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.worker.data_plane import (
        SizeBasedBufferingClosableOutputStream,
    )

    local_runner.stream_to_workers()
    sent = []

    class Conn:
        def output_stream(self, bundle, transform):
            return SizeBasedBufferingClosableOutputStream(close_callback=sent.append, flush_callback=sent.append)

    class Handler:
        data_conn = Conn()

    class Manager:
        _worker_handler = Handler()

    parts = [bytes([i]) * 3_000_000 for i in range(20)]  # 60 MB in parts of whole elements
    fn_runner.BundleManager._send_input_to_worker(Manager(), "bundle", "read", parts)
    assert b"".join(sent) == b"".join(parts)
    assert len(sent) > 4 and max(map(len, sent)) <= local_runner.CHUNK_BYTES + 3_000_000


def test_local_workers_start_with_the_malloc_settings_and_a_users_value_wins(monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with local_runner.worker_environment():
        with beam.Pipeline(runner="FnApiRunner", options=options) as p:
            seen = (p | beam.Create([0, 1]) | beam.Reshuffle()
                    | beam.Map(lambda _: (os.environ.get("MALLOC_ARENA_MAX"), os.environ.get("MALLOC_MMAP_THRESHOLD_"))))
            assert_that(seen, equal_to([("4", str(1 << 20))] * 2))
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ and os.environ["MALLOC_ARENA_MAX"] == "4"


def test_local_workers_run_curates_worker_module_under_prepared():
    from apache_beam.options.pipeline_options import PipelineOptions

    def worker_facts(_):
        """(the module this worker process runs as, whether it drops finished output streams, the
        level of its root logger: the run's, which FnApiRunner alone does not pass)"""
        import logging

        from apache_beam.runners.worker import bundle_processor

        spec = getattr(sys.modules["__main__"], "__spec__", None)
        return (spec and spec.name, hasattr(bundle_processor.DataOutputOperation.finish, "__wrapped__"),
                logging.getLevelName(logging.getLogger().level))

    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2",
                               "--default_sdk_harness_log_level=ERROR"])
    with local_runner.prepared(options):
        with beam.Pipeline(runner="FnApiRunner", options=options) as p:
            seen = p | beam.Create([0, 1]) | beam.Reshuffle() | beam.Map(worker_facts)
            assert_that(seen, equal_to([(local_runner.CURATE_WORKER, True, "ERROR")] * 2))
    assert local_runner.OPTIONS_ENV not in os.environ


def test_only_beams_own_worker_command_becomes_curates(monkeypatch):
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    local_runner.curate_workers()
    local_runner.curate_workers()  # a second call changes nothing
    # Beam's handler stores the command after its base class set up the gRPC server: skip the server
    monkeypatch.setattr(worker_handlers.GrpcWorkerHandler, "__init__", lambda self, *a: None)
    handler = worker_handlers.SubprocessSdkWorkerHandler

    def started(command: bytes) -> bytes:
        h = handler.__new__(handler)
        handler.__init__(h, command, None, None, None)
        return h._worker_command_line

    beams, curates = (f"{sys.executable} -m {m}".encode() for m in (local_runner.BEAM_WORKER, local_runner.CURATE_WORKER))
    assert started(beams) == curates
    assert started(b"my-worker --flag") == b"my-worker --flag"
    assert started(b"/other/python -m " + local_runner.BEAM_WORKER.encode()).startswith(b"/other/python")


def test_a_worker_drops_a_finished_bundles_output_stream():
    """What keeps a worker's memory from growing: the stream (its buffer grown to ~10 MB) goes with
    the bundle that sent it, after every byte was sent."""
    from apache_beam.runners import common
    from apache_beam.runners.worker import bundle_processor, statesampler
    from apache_beam.runners.worker.data_plane import (
        SizeBasedBufferingClosableOutputStream,
    )
    from apache_beam.utils.counters import CounterFactory

    from curate import local_worker

    local_worker.release_output_streams()
    local_worker.release_output_streams()  # a second call changes nothing
    counters = CounterFactory()
    op = bundle_processor.DataOutputOperation(
        common.NameContext("out"), "out", {}, counters, statesampler.StateSampler("s", counters),
        coders.WindowedValueCoder(coders.BytesCoder()), "t", None)
    sent = []
    for bundle in range(2):
        op.set_output_stream(SizeBasedBufferingClosableOutputStream(close_callback=sent.append,
                                                                    flush_callback=sent.append))
        op.start()
        for i in range(3):
            op.process(window.GlobalWindows.windowed_value(bytes([bundle]) * 5_000_000))
        op.finish()
        assert op.output_stream is None
    values = [v.value for chunk in sent if chunk
              for v in _decode_all(chunk, coders.WindowedValueCoder(coders.BytesCoder()))]
    assert values == [bytes([0]) * 5_000_000] * 3 + [bytes([1]) * 5_000_000] * 3


def _decode_all(chunk: bytes, coder) -> list:
    stream, out = create_InputStream(chunk), []
    while stream.size() > 0:
        out.append(coder.get_impl().decode_from_stream(stream, True))
    return out
