"""Connected components of a graph whose edges are spread over workers, in a fixed number of rounds.

The near-duplicate pairs of a corpus form a graph; a duplicate group is one of its connected
components, named by its smallest node (its earliest input position). No worker gathers the edges:
``ROUNDS`` rounds of Kiveris et al.'s large-star / small-star ("Connected Components in MapReduce
and Beyond", SoCC 2014) rewire each component into a star around its smallest node, each half-round
one GroupByKey keyed by node. Both halves replace edges by edges of the same component, never add a
node or join two components, and never raise the edge count, so what meets under one key is one
node's neighbourhood: at most its component's nodes, usually far fewer.

Beam graphs are static, so the rounds are unrolled. After them every node takes as label the
smallest of itself and its neighbours; a component that became a star has one label everywhere. An
edge whose two ends still disagree belongs to a component that has not converged: only those edges,
as edges between labels, meet on one worker (``FinishUnconverged``), are joined there by the
in-memory reference (``filters.dedup.group_ids``), and each such label is mapped to its component's
smallest node, read back by every worker as a side input. The finishing step's size grows with the
edges of unconverged components only, none when every component converged; a warning names how many.
"""
from __future__ import annotations

import logging

import apache_beam as beam
from curate.filters import dedup

from curate.gather import GatherSmall
from curate.outputs import MAIN, split

log = logging.getLogger("curate")

# Rounds (one large-star and one small-star each) before the finishing step. A chain, the component
# of longest diameter, converges in about log2(n) + 1 rounds (8 for a chain of 200 nodes, 10 for
# 1,000, whatever its node order; tests/test_components.py checks 200): the guard rail already warns
# above 100 samples in one group (guard_rails.MAX_GROUP_SIZE), so the finishing step is for
# components far beyond anything a sane setting makes.
ROUNDS = 8


def large_star(node, neighbours) -> list[tuple]:
    """Large-star (Kiveris et al. 2014): every neighbour larger than ``node`` is re-linked to the
    smallest of ``node`` and its neighbours. Edges as (smaller, larger)."""
    m = min(min(neighbours), node)
    return [(m, v) for v in sorted(neighbours) if v > node]


def small_star(node, smaller) -> list[tuple]:
    """Small-star (Kiveris et al. 2014): ``node`` and its smaller neighbours are all linked to the
    smallest of them. Edges as (smaller, larger)."""
    m = min(smaller)
    return [(m, v) for v in sorted(set(smaller) | {node}) if v != m]


def both_ways(edge):
    a, b = edge
    return [(a, b), (b, a)]


def _large_star(element):
    node, neighbours = element
    return large_star(node, set(neighbours))


def _small_star(element):
    node, smaller = element
    return small_star(node, set(smaller))


def _send_label(element):
    """A node's label (the smallest of itself and its neighbours), to itself and to each neighbour."""
    node, neighbours = element
    neighbours = set(neighbours)
    label = min(min(neighbours), node)
    yield node, ("own", label)
    for v in neighbours:
        yield v, ("neighbour", label)


def _compare_labels(element):
    """(node, label) to MAIN; to 'unconverged' each (label, label) pair of an edge whose ends disagree."""
    node, items = element
    own = next(label for tag, label in items if tag == "own")
    yield MAIN, (node, own)
    for other in sorted({label for tag, label in items if tag == "neighbour" and label != own}):
        yield "unconverged", (min(own, other), max(own, other))


def _final_labels(edges: list) -> dict:
    """Label edges of the unconverged components -> label: its component's smallest label."""
    final = dedup.group_ids(edges)
    log.warning("connected components: %d label edges had not converged after %d rounds; joined on one "
                "worker", len(set(edges)), ROUNDS)
    return {label: smallest for label, smallest in final.items() if label != smallest}


def _relabel(node_label, final):
    node, label = node_label
    return node, (final or {}).get(label, label)


class LargeStar(beam.PTransform):
    def expand(self, edges):
        return (edges
                | "BothWays" >> beam.FlatMap(both_ways)
                | "Neighbourhoods" >> beam.GroupByKey()
                | "Relink" >> beam.FlatMap(_large_star))


class SmallStar(beam.PTransform):
    def expand(self, edges):
        return (edges
                | "ByLargerEnd" >> beam.Map(lambda e: (e[1], e[0]))
                | "SmallerNeighbours" >> beam.GroupByKey()
                | "Relink" >> beam.FlatMap(_small_star))


class FinishUnconverged(beam.PTransform):
    """Label edges of the components not yet converged -> one element: {label: final label} (nothing
    when every component converged). The only step where a part of the graph meets on one worker."""

    def expand(self, label_edges):
        return (label_edges
                | "Gather" >> GatherSmall()
                | "Join" >> beam.Map(_final_labels))


class ConnectedComponents(beam.PTransform):
    """Edges (a, b) between comparable nodes (duplicates allowed) -> (node, group id) for every
    node of an edge, the group id being the smallest node of its connected component."""

    def __init__(self, rounds: int = ROUNDS):
        super().__init__()
        self._rounds = rounds

    def expand(self, pairs):
        edges = pairs | "Edges" >> beam.Map(lambda p: (min(p), max(p)))
        for r in range(self._rounds):
            edges = (edges
                     | f"LargeStar{r}" >> LargeStar()
                     | f"SmallStar{r}" >> SmallStar())
        labelled = split(edges
                         | "BothWays" >> beam.FlatMap(both_ways)
                         | "Neighbourhoods" >> beam.GroupByKey()
                         | "SendLabels" >> beam.FlatMap(_send_label)
                         | "LabelsAtNode" >> beam.GroupByKey()
                         | "CompareLabels" >> beam.FlatMap(_compare_labels), "CompareLabels", "labels", "unconverged")
        final = labelled.unconverged | "FinishUnconverged" >> FinishUnconverged()
        return labelled.labels | "Relabel" >> beam.Map(_relabel, beam.pvalue.AsSingleton(final, default_value=None))
