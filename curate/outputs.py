"""Several outputs from one step, in a form every Beam runner honours.

Beam's multi-output ParDo (``with_outputs`` / ``TaggedOutput``) is the usual way, but the Dask
runner sends every element to every output. So DoFns here yield ``(tag, value)`` pairs and
``split`` fans them out with one single-output ParDo per tag.
"""
from __future__ import annotations

from types import SimpleNamespace

import apache_beam as beam

MAIN = "main"
DECISIONS = "decisions"


class _Select(beam.DoFn):
    def __init__(self, tag: str):
        self._tag = tag

    def process(self, element):
        if element[0] == self._tag:
            yield element[1]


def split(tagged: beam.PCollection, label: str, main: str, *others: str) -> SimpleNamespace:
    """(tag, value) pairs -> namespace of PCollections: ``main`` for MAIN, one per other tag
    (default: decisions)."""
    outs = {main: tagged | f"{label}:{main}" >> beam.ParDo(_Select(MAIN))}
    for tag in others or (DECISIONS,):
        outs[tag] = tagged | f"{label}:{tag}" >> beam.ParDo(_Select(tag))
    return SimpleNamespace(**outs)


def done(writes) -> beam.PCollection:
    """Join the outputs of every writing branch into one final step.

    Beam's DaskRunner computes only the graph behind the last transform it visits, so a writing
    branch that nothing consumes would never run there; ending on this step makes every write
    part of that graph. Other runners run it as a no-op.
    """
    return list(writes) | "AllWrites" >> beam.Flatten() | "Done" >> beam.Map(lambda _: None)
