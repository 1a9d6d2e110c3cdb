"""Property: random task graphs with random failures and retries end, on every runner, in
the states and results of a sequential reference.

The graphs are the conformance kit's (nested futures, `allow_failure`, `wait_for`,
runs that fail); here each run also fails its first few attempts, and has a random
number of retries. A run whose transient failures outnumber its retries fails; the
reference then treats it like a run that fails on purpose. The number of attempts
each run made is checked too: a run that did not start made none.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

import pytest
from baton import Future, State, StateType, TaskRunner, allow_failure, flow
from baton.testing._rendezvous import Rendezvous
from baton.testing._suite_runner import (
    Node,
    _graphs,
    _nest,
    _reference,
    _runner_threads_may_use_random,
)
from baton.testing._tasks import KitError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import runners, selected_runners
from reliability_tasks import TransientError, flaky_combine

# Clusters add milliseconds per run: fewer examples there, the same graphs' shapes.
EXAMPLES = 15 if {"dask", "ray"} & set(selected_runners()) else 60


@st.composite
def graphs_with_retries(draw: st.DrawFn) -> tuple[list[Node], list[tuple[int, int]]]:
    """A random graph, and per node (transient failures, retries)."""
    nodes = draw(_graphs())
    flakiness = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in nodes]
    return nodes, flakiness


@pytest.mark.slow
@pytest.mark.parametrize("runner_name", runners(), indirect=True, scope="module")
@_runner_threads_may_use_random
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.differing_executors,
    ],
)
@given(graph=graphs_with_retries())
def test_random_graphs_with_failures_and_retries_match_a_sequential_reference(
    runner: TaskRunner, graph: tuple[list[Node], list[tuple[int, int]]]
) -> None:
    nodes, flakiness = graph
    # A run whose transient failures outlast its retries fails, like a node that fails.
    effective = [
        dataclasses.replace(node, op="fail") if transient > retries else node
        for node, (transient, retries) in zip(nodes, flakiness, strict=True)
    ]
    expected = _reference(effective)

    with tempfile.TemporaryDirectory(prefix="baton-dag-") as directory:
        rv = Rendezvous(directory)

        @flow(task_runner=runner)
        def graph_run() -> list[tuple[str, State]]:
            futures: list[Future[int]] = []
            for index, (node, (transient, retries)) in enumerate(
                zip(nodes, flakiness, strict=True)
            ):
                items: list[Any] = [
                    allow_failure(futures[p]) if ok else futures[p]
                    for p, ok in zip(node.parents, node.allowed, strict=True)
                ]
                futures.append(
                    flaky_combine.with_options(retries=retries).submit(
                        rv,
                        f"n{index}",
                        transient,
                        node.op,
                        node.const,
                        _nest(node.shape, items),
                        wait_for=[futures[a] for a in node.after],
                    )
                )
            for future in futures:
                future.wait()
            return [(f.name, f.state) for f in futures]

        runs = graph_run()
        attempts = [len(rv.records(f"attempt-n{i}")) for i in range(len(nodes))]

    for index, ((kind, value), (_, state)) in enumerate(zip(expected, runs, strict=True)):
        transient, retries = flakiness[index]
        where = f"node {index} (transient={transient}, retries={retries}) of {nodes}"
        assert state.is_final(), where
        if kind == "completed":
            assert state.type is StateType.COMPLETED, f"{state!r} at {where}"
            assert state.result() == value, f"{state!r} at {where}"
            assert attempts[index] == transient + 1, where
        elif kind == "failed":
            assert state.type is StateType.FAILED and state.name != "UpstreamFailed", where
            # Every attempt failed: the transient ones, then (if any) the ones failing on purpose.
            cause = TransientError if transient > retries else KitError
            assert isinstance(state.error, cause), f"{state!r} at {where}"
            assert attempts[index] == retries + 1, where
        else:
            assert state.name == "UpstreamFailed", f"{state!r} at {where}"
            upstream = [runs[p][0] for p in value]
            assert any(name in str(state.message) for name in upstream), where
            assert attempts[index] == 0, where
