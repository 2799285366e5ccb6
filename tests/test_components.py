"""Distributed connected components (large-star / small-star rounds, then a finishing step) give
exactly the groups of the in-memory reference (``filters.dedup.group_ids``)."""
import itertools
import logging
import random

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from curate.filters import dedup
from curate.pipelines import components


def positions(rng, n):
    """n distinct input positions (shard, index) in random order: node order is not edge order."""
    nodes = sorted({(rng.randrange(4), rng.randrange(10_000)) for _ in range(3 * n)})[:n]
    rng.shuffle(nodes)
    return nodes


def chain(nodes):
    return list(itertools.pairwise(nodes))


def star(nodes):
    return [(nodes[0], v) for v in nodes[1:]]


def graphs():
    rng = random.Random(7)
    many_small = []
    for _ in range(40):
        nodes = positions(rng, rng.randrange(2, 7))
        many_small += [tuple(rng.sample(nodes, 2)) for _ in range(len(nodes) + 2)] + chain(nodes)
    nodes = positions(rng, 600)
    mixed = (chain(nodes[:30]) + star(nodes[30:80]) + chain(nodes[80:280])   # a chain of 200 nodes
             + [(nodes[i], nodes[i + 1]) for i in range(280, 400, 2)]         # isolated pairs
             + [tuple(rng.sample(nodes[400:600], 2)) for _ in range(260)])    # a random sparse graph
    return {"chain": chain(positions(rng, 50)), "star": star(positions(rng, 40)),
            "many_small": many_small, "mixed": mixed + mixed[:20]}              # repeated edges, as found twice


def run_components(edges, rounds):
    with beam.Pipeline(runner=FnApiRunner()) as p:
        got = p | beam.Create(edges) | components.ConnectedComponents(rounds)
        assert_that(got, equal_to(sorted(dedup.group_ids(edges).items())))


@pytest.mark.parametrize("name", ["chain", "star", "many_small", "mixed"])
def test_groups_equal_the_in_memory_reference(name, caplog):
    with caplog.at_level(logging.WARNING, logger="curate"):
        run_components(graphs()[name], components.ROUNDS)
    # ROUNDS rounds converge every one of these, the chain of 200 nodes included
    assert "had not converged" not in caplog.text


def test_unconverged_components_are_finished_on_one_worker_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="curate"):
        run_components(graphs()["mixed"], 1)
    assert "label edges had not converged after" in caplog.text


def test_rounds_keep_components_and_converge_to_stars():
    """The pure round rules, iterated in memory: the components never change and a chain of 200
    nodes in random order becomes a star around its smallest node within ROUNDS rounds."""
    nodes = positions(random.Random(3), 200)
    edges = set(chain(nodes))
    for _ in range(components.ROUNDS):
        neighbours = {}
        for a, b in edges:
            neighbours.setdefault(a, set()).add(b)
            neighbours.setdefault(b, set()).add(a)
        edges = {e for u, vs in neighbours.items() for e in components.large_star(u, vs)}
        smaller = {}
        for a, b in edges:
            smaller.setdefault(b, set()).add(a)
        edges = {e for u, vs in smaller.items() for e in components.small_star(u, vs)}
        assert set(dedup.group_ids(edges).values()) == {min(nodes)}
    assert edges == {(min(nodes), v) for v in nodes if v != min(nodes)}
