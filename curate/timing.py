"""Wall time and CPU time per stage as Beam counters (microseconds, summed over workers), read back
for report.json.

Two clocks per stage, because they answer different questions: wall time (``time.perf_counter``)
is how long the stage held its thread; CPU time is the work it did. The CPU clock is the calling
thread's (``time.thread_time``), exact for a stage whose work runs in that thread. A stage that runs
multi-threaded native code (torch's forward, FAISS, BLAS matrix products: ``PROCESS_CLOCK_STAGES``)
does most of its work on threads the calling thread does not see, so it is charged the whole
process's CPU time (``time.process_time``) while it ran, which also counts any other thread of
the process that was busy at the same time: an upper bound, never an undercount.
"""
from __future__ import annotations

import contextlib
import resource
import time

import apache_beam as beam

from curate.records import DECONTAMINATE, NEAR_DEDUP, SEMDEDUP

WALL = "curate.wall_us"
CPU = "curate.cpu_us"

# Stages whose work runs on native thread pools (torch, FAISS, BLAS): charged the process's CPU time.
PROCESS_CLOCK_STAGES = frozenset({
    "clip_encode",           # curate/scoring.py: the CLIP forward (torch intra-op threads)
    "train_centroids",       # pipelines/dedup.py: k-means (FAISS)
    NEAR_DEDUP,              # pipelines/dedup.py: pairwise cosines within a cluster (BLAS)
    SEMDEDUP,                # pipelines/dedup.py: SemDeDup's cosines within a cluster (BLAS)
    DECONTAMINATE,           # pipelines/dedup.py: cosines to the evaluation set (BLAS)
    "export_chameleon_vq",   # curate/exports/chameleon.py: the VQ encoder (torch)
    "export_flava",          # curate/exports/flava.py: the image codebook (torch), when enabled
})


def cpu_clock(stage: str):
    """The CPU clock ``stage`` is charged with: the process's for PROCESS_CLOCK_STAGES, else the thread's."""
    return time.process_time if stage in PROCESS_CLOCK_STAGES else time.thread_time


@contextlib.contextmanager
def timed(stage: str):
    """Charge the block's wall time and CPU time (clock: ``cpu_clock``) to ``stage``."""
    clock = cpu_clock(stage)
    wall0, cpu0 = time.perf_counter(), clock()
    try:
        yield
    finally:
        beam.metrics.Metrics.counter(WALL, stage).inc(int((time.perf_counter() - wall0) * 1e6))
        beam.metrics.Metrics.counter(CPU, stage).inc(int((clock() - cpu0) * 1e6))


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its child processes that have ended and been
    waited for (``getrusage`` RUSAGE_SELF + RUSAGE_CHILDREN): local Beam worker processes count once
    they exit; workers on other machines (Dask, Dataflow) never do."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_seconds(result) -> dict[str, dict[str, float]]:
    """{"wall": {stage: seconds}, "cpu": {stage: seconds}} from a finished pipeline; empty for
    runners without metrics (Dask)."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, dict[str, float]] = {"wall": {}, "cpu": {}}
    for clock, namespace in (("wall", WALL), ("cpu", CPU)):
        try:
            counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
        except Exception:  # noqa: BLE001 - a runner without metrics: no figures, not a failed run
            return {"wall": {}, "cpu": {}}
        for c in counters:
            name = c.key.metric.name
            totals[clock][name] = totals[clock].get(name, 0) + (c.committed or c.attempted or 0) / 1e6
    return totals
