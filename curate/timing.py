"""CPU time per stage as Beam counters (microseconds, summed over workers), read back for report.json."""
from __future__ import annotations

import contextlib
import time

import apache_beam as beam

NAMESPACE = "curate.time_us"


def add_time(stage: str, seconds: float) -> None:
    beam.metrics.Metrics.counter(NAMESPACE, stage).inc(int(seconds * 1e6))


@contextlib.contextmanager
def timed(stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        add_time(stage, time.perf_counter() - t0)


def stage_seconds(result) -> dict[str, float]:
    """{stage: seconds} from a finished pipeline; {} for runners without metrics (Dask)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:
        return {}
    totals: dict[str, float] = {}
    for c in counters:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0) / 1e6
    return totals
