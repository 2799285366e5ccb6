"""Stage timing reports wall time and CPU time, each labelled as what it is (issue 14 item 3)."""
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest

from curate import timing
from curate.report import write_report


@pytest.fixture
def counters(monkeypatch):
    """What ``timed`` adds to Beam's counters, outside a pipeline: read(clock, stage) -> seconds."""
    totals = {}

    class Counter:
        def __init__(self, namespace, name):
            self._key = (namespace, name)

        def inc(self, n):
            totals[self._key] = totals.get(self._key, 0) + n

    monkeypatch.setattr(timing.beam.metrics.Metrics, "counter", Counter)
    return lambda clock, stage: totals.get(({"wall": timing.WALL, "cpu": timing.CPU}[clock], stage), 0) / 1e6


def burn(cpu_seconds: float) -> None:
    """Spin until this thread has used ``cpu_seconds`` of CPU (not of wall time: the machine is shared)."""
    start = time.thread_time()
    while time.thread_time() - start < cpu_seconds:
        pass


def test_waiting_is_wall_time_not_cpu_time(counters):
    with timing.timed("decode"):
        time.sleep(0.2)
    assert counters("wall", "decode") >= 0.2 and counters("cpu", "decode") < 0.05


def test_work_in_the_calling_thread_is_cpu_time(counters):
    with timing.timed("decode"):
        burn(0.2)
    # wall >= cpu up to the clocks' resolutions (each call's times are kept in whole microseconds)
    assert counters("cpu", "decode") >= 0.2 and counters("wall", "decode") >= counters("cpu", "decode") - 1e-3


def test_native_thread_pools_are_charged_to_process_clock_stages(counters):
    """The CLIP forward runs on torch's threads, not the caller's: its stage uses the process clock,
    so the work of the other threads counts; the thread clock would see none of it."""
    assert "clip_encode" in timing.PROCESS_CLOCK_STAGES and "decode" not in timing.PROCESS_CLOCK_STAGES
    for stage in ("clip_encode", "decode"):
        with timing.timed(stage):
            worker = threading.Thread(target=burn, args=(0.2,))
            worker.start()
            worker.join()
    assert counters("cpu", "clip_encode") >= 0.2 and counters("cpu", "decode") < 0.05


def test_run_cpu_counts_worker_processes_once_they_end():
    before = timing.process_cpu_seconds()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
                   check=True)
    assert timing.process_cpu_seconds() - before >= 0.3


def test_a_pipeline_reports_both_clocks_per_stage(tmp_path):
    def work(x):
        with timing.timed("decode"):
            burn(0.05)
        return x

    with beam.Pipeline(runner="FnApiRunner") as p:
        p | beam.Create([1, 2]) | beam.Map(work)
    stages = timing.stage_seconds(p.result)
    # wall >= cpu up to the clocks' resolutions (each call's times are kept in whole microseconds)
    assert stages["cpu"]["decode"] >= 0.1 and stages["wall"]["decode"] >= stages["cpu"]["decode"] - 1e-3
    counts = {"input": 2}
    report = write_report(str(tmp_path), "t", {}, counts, 1.0, stages, None, "FnApiRunner", cpu_seconds=0.5)
    assert report["time"]["cpu_seconds"] == 0.5
    assert report["time"]["stage_wall_seconds"]["decode"] >= report["time"]["stage_cpu_seconds"]["decode"] >= 0.1
