"""Concurrency and rate limits: the limiter's rules, the options and settings that
declare limits, and limits that hold across worker processes."""

from __future__ import annotations

import threading
import time
from typing import Any

import baton
import pytest
from baton import InvalidOptionsError, LimitError, State, StateType, flow, task
from baton._limits import LocalLimiter
from baton._limitspec import parse_rate
from baton.testing._suite_limits import most_at_once
from baton.testing._tasks_limits import LIMIT_TAG, busy_interval, concurrency_block

# -- the limiter ------------------------------------------------------------------------


def test_slots_are_granted_in_order_as_they_free() -> None:
    limiter = LocalLimiter({"db": 2}, {})
    granted: list[str] = []
    assert limiter.acquire({"db": 1}, lambda: granted.append("a")) is None
    assert limiter.acquire({"db": 1}, lambda: granted.append("b")) is None
    third = limiter.acquire({"db": 1}, lambda: granted.append("c"))
    fourth = limiter.acquire({"db": 2}, lambda: granted.append("d"))
    assert third is not None and fourth is not None and granted == []
    limiter.release({"db": 1})
    assert granted == ["c"]
    limiter.release({"db": 1})
    assert granted == ["c"]  # d needs both slots
    limiter.release({"db": 1})
    assert granted == ["c", "d"] and limiter.in_use("db") == 2


def test_racing_takers_never_exceed_a_limit_and_every_request_is_granted() -> None:
    limiter = LocalLimiter({"db": 2, "gpu": 1}, {})
    inside = {"db": 0, "gpu": 0}
    most = {"db": 0, "gpu": 0}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(1500):
                slots = {"db": 1, "gpu": 1} if (index + round_) % 5 == 0 else {"db": 1}
                granted = threading.Event()
                if limiter.acquire(slots, granted.set) is not None:
                    assert granted.wait(20), "a queued request was never granted"
                with lock:
                    for name in slots:
                        inside[name] += 1
                        most[name] = max(most[name], inside[name])
                with lock:
                    for name in slots:
                        inside[name] -= 1
                limiter.release(slots)
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert most["db"] <= 2 and most["gpu"] <= 1
    assert limiter.in_use("db") == 0 and limiter.in_use("gpu") == 0


def test_a_request_for_another_limit_does_not_queue_behind() -> None:
    limiter = LocalLimiter({"db": 1, "gpu": 1}, {})
    assert limiter.acquire({"db": 1}, lambda: None) is None
    assert limiter.acquire({"db": 1}, lambda: None) is not None
    assert limiter.acquire({"gpu": 1}, lambda: None) is None


def test_a_cancelled_request_is_never_granted() -> None:
    limiter = LocalLimiter({"db": 1}, {})
    granted: list[str] = []
    limiter.acquire({"db": 1}, lambda: None)
    ticket = limiter.acquire({"db": 1}, lambda: granted.append("late"))
    assert limiter.cancel(ticket)
    limiter.release({"db": 1})
    assert granted == [] and limiter.in_use("db") == 0
    assert not limiter.cancel(ticket)


def test_a_rate_lets_n_calls_through_in_any_period() -> None:
    now = [100.0]
    limiter = LocalLimiter({}, {"api": "3/s"}, clock=lambda: now[0])
    assert [limiter.reserve("api") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.reserve("api") == pytest.approx(1.0)
    now[0] += 0.5
    assert limiter.reserve("api") == pytest.approx(0.5)  # booked at 101.0, as the 2nd slot frees
    now[0] += 10
    assert limiter.reserve("api", occupy=3) == 0.0
    assert limiter.reserve("api") == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/s", (10, 1.0)),
        ("600/m", (600, 60.0)),
        ("1/h", (1, 3600.0)),
        ("5/10s", (5, 10.0)),
        ("2 / 0.5 second", (2, 0.5)),
        ("100/day", (100, 86400.0)),
    ],
)
def test_rates_are_read_in_their_forms(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


# -- declaring limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"concurrency_limits": {"db": 0}},
            "the limit of 'db' must be a whole number of slots >= 1",
        ),
        ({"concurrency_limits": {"db": -1}}, "must be a whole number of slots >= 1"),
        ({"concurrency_limits": {"db": 1.5}}, "must be a whole number of slots >= 1"),
        ({"concurrency_limits": {"db": True}}, "must be a whole number of slots >= 1"),
        ({"concurrency_limits": ["db"]}, "expected a mapping of limit names to slots"),
        ({"rate_limits": {"api": "10 per second"}}, "rate limit 'api': a rate is written as"),
        ({"rate_limits": {"api": "0/s"}}, "at least 1 call per period"),
        ({"rate_limits": {"api": "10/fortnight"}}, "units: s, m, h, d"),
    ],
)
def test_malformed_limits_fail_at_decoration(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOptionsError, match="Invalid options for a flow") as raised:
        flow(**options)
    assert message in str(raised.value)


def test_the_settings_declare_limits_and_the_flow_wins_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_CONCURRENCY_LIMITS", '{"db": 1, "gpu": 3}')
    monkeypatch.setenv("BATON_RATE_LIMITS", '{"api": "10/s"}')

    @flow(concurrency_limits={"db": 2})
    def limits() -> Any:
        limiter = baton._limits.current_limiter()
        assert limiter is not None
        return dict(limiter.concurrency_limits), dict(limiter.rate_limits)

    assert limits() == ({"db": 2, "gpu": 3}, {"api": "10/s"})


def test_malformed_limits_in_the_settings_say_which(monkeypatch: pytest.MonkeyPatch) -> None:
    from baton._settings import get_settings

    monkeypatch.setenv("BATON_CONCURRENCY_LIMITS", '{"db": 0}')
    with pytest.raises(ValueError, match="the limit of 'db' must be a whole number"):
        get_settings()


def test_a_flow_without_limits_has_no_limiter_and_its_runs_no_admission() -> None:
    @task(tags=[LIMIT_TAG])
    def tagged() -> Any:
        run = baton.current_task_run()
        assert run is not None
        return run.limits, baton._limits.current_limiter()

    @flow
    def plain() -> Any:
        return tagged.submit().result()

    assert plain() == (None, None)


# -- using limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: baton.concurrency("nope").__enter__(), "No concurrency limit named 'nope'"),
        (
            lambda: baton.concurrency("api").__enter__(),
            "'api' is a rate limit: use baton.rate_limit",
        ),
        (
            lambda: baton.concurrency("db", occupy=3).__enter__(),
            "more slots than the limit has (2)",
        ),
        (lambda: baton.concurrency("db", occupy=0), "occupy must be a whole number >= 1"),
        (lambda: baton.rate_limit("db"), "'db' is a concurrency limit: use baton.concurrency"),
        (lambda: baton.rate_limit("api", occupy=20), "occupy at most 10"),
    ],
)
def test_limits_used_wrongly_say_what_to_do(call: Any, message: str) -> None:
    @task
    def use() -> None:
        call()

    @flow(concurrency_limits={"db": 2}, rate_limits={"api": "10/s"})
    def misuse() -> State:
        return use(return_state=True)  # type: ignore[no-any-return]

    state = misuse(return_state=True)
    assert state.type is StateType.FAILED
    assert isinstance(state.error, LimitError)
    assert message in str(state.error)


def test_limits_outside_a_flow_with_limits_say_how_to_declare_them() -> None:
    with pytest.raises(LimitError, match=r"@flow\(concurrency_limits=\{'db': 2\}\)"):
        with baton.concurrency("db"):
            pass


def test_a_block_inside_a_run_holding_the_limit_takes_no_second_slot() -> None:
    @task(tags=["db"])
    def inside() -> int:
        limiter = baton._limits.current_limiter()
        assert isinstance(limiter, LocalLimiter)
        with baton.concurrency("db"):
            with baton.concurrency("db"):
                return limiter.in_use("db")

    @flow(concurrency_limits={"db": 1})
    def nested_blocks() -> int:
        return inside.submit().result()

    assert nested_blocks() == 1


def test_async_blocks_hold_slots_too() -> None:
    import asyncio

    inside = 0
    most = 0
    lock = threading.Lock()

    @task
    async def use(i: int) -> int:
        nonlocal inside, most
        async with baton.concurrency("db"):
            with lock:
                inside += 1
                most = max(most, inside)
            await asyncio.sleep(0.01)
            with lock:
                inside -= 1
        await baton.rate_limit_async("api")
        return i

    @flow(concurrency_limits={"db": 2}, rate_limits={"api": "100/s"})
    def many() -> list[int]:
        return use.map(range(8)).result()

    assert many() == list(range(8))
    assert most <= 2


def test_cancelled_runs_waiting_for_a_slot_give_it_back() -> None:
    gate = threading.Event()

    @task(tags=["db"])
    def hold(_: int = 0) -> str:
        gate.wait(10)
        return "held"

    @flow(concurrency_limits={"db": 1})
    def cancelling() -> Any:
        first = hold.submit()
        waiting = hold.map(range(3))
        cancelled = [future.cancel() for future in waiting]
        gate.set()
        limiter = baton._limits.current_limiter()
        return first.result(), cancelled, [f.state.type for f in waiting], limiter

    first, cancelled, states, limiter = cancelling()
    assert first == "held" and cancelled == [True] * 3
    assert states == [StateType.CANCELLED] * 3
    assert limiter.in_use("db") == 0


def test_a_failing_flow_cancels_the_runs_waiting_for_a_slot() -> None:
    futures: list[Any] = []
    mapped = threading.Event()

    @task(tags=["db"])
    def hold(index: int) -> str:
        if index == 0:
            # Holds the only slot until the flow has cancelled the runs waiting for it.
            mapped.wait(10)
            baton.wait(futures[1:], timeout=10)
        return "held"

    @flow(concurrency_limits={"db": 1})
    def failing() -> None:
        futures.extend(hold.map(range(3)))
        mapped.set()
        raise RuntimeError("the flow gave up")

    state = failing(return_state=True)
    assert state.type is StateType.FAILED
    assert [f.state.type for f in futures] == [StateType.COMPLETED] + [StateType.CANCELLED] * 2


def test_a_direct_call_of_a_tagged_task_waits_for_its_slot() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    @task(tags=["db"])
    def step(i: int) -> int:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        threading.Event().wait(0.01)
        with lock:
            inside -= 1
        return i

    @task
    def caller(i: int) -> int:
        return step(i)  # a direct call inside a task: a run of its own, under the limit

    @flow(concurrency_limits={"db": 1})
    def calls() -> list[int]:
        return caller.map(range(6)).result()

    assert calls() == list(range(6))
    assert most == 1


def test_concurrency_blocks_hold_across_worker_processes() -> None:
    from baton._runners.process import ProcessRunner

    @flow(concurrency_limits={"db": 2}, task_runner=ProcessRunner(max_workers=4))
    def spread() -> list[Any]:
        return concurrency_block.map("db", range(8), 0.2).result()

    runs = spread()
    assert len({pid for _, _, pid in runs}) >= 2
    assert most_at_once([(start, end) for start, end, _ in runs]) <= 2


def test_tagged_runs_limited_on_the_process_runner_from_flow_and_workers() -> None:
    from baton._runners.process import ProcessRunner
    from baton.testing._tasks_limits import map_limited

    @flow(concurrency_limits={LIMIT_TAG: 2}, task_runner=ProcessRunner(max_workers=3))
    def both() -> list[Any]:
        here = busy_interval.map(range(4), 0.2)
        there = map_limited.map([3, 3], 0.2)
        return here.result() + [i for runs in there.result() for i in runs]

    intervals = both()
    assert len(intervals) == 10
    assert most_at_once(intervals) <= 2


def test_a_warm_worker_keeps_no_limits_of_a_flow_run_for_the_next_one() -> None:
    # The worker keeps the scope of the runs a task submits from one run to the next:
    # what one flow run's limits set on it must not carry over to another's runs.
    runner = baton.get_runner("process", max_workers=1)

    @flow(concurrency_limits={"db": 2}, task_runner=runner)
    def limited() -> list[Any]:
        return concurrency_block.map("db", range(2), 0.0).result()

    @flow(task_runner=runner)
    def unlimited() -> list[State]:
        runs = concurrency_block.map("db", range(2), 0.0)
        runs.wait()
        return [run.state for run in runs]

    [(_, _, worker), *_] = limited()
    states = unlimited()
    assert all(state.type is StateType.FAILED for state in states)
    assert all(isinstance(state.error, LimitError) for state in states)
    assert "concurrency_limits={'db': 2}" in str(states[0].error)
    assert limited()[0][2] == worker  # the same warm worker served all three


def test_a_block_that_gets_no_slot_in_time_raises_timeout_error() -> None:
    import asyncio

    @task
    def wait_briefly() -> str:
        try:
            with baton.concurrency("db", timeout=0.01):
                return "entered"
        except TimeoutError as error:
            return str(error)

    @task
    async def wait_briefly_async() -> str:
        try:
            async with baton.concurrency("db", timeout=0.01):
                return "entered"
        except TimeoutError as error:
            return str(error)

    entered, done = threading.Event(), threading.Event()

    @task
    def hold() -> None:
        with baton.concurrency("db"):
            entered.set()
            done.wait(10)

    @flow(concurrency_limits={"db": 1})
    def blocked() -> list[str]:
        holder = hold.submit()  # holds the only slot until the others gave up
        entered.wait(10)
        got = [wait_briefly(), asyncio.run(wait_briefly_async())]
        done.set()
        holder.result()
        return got

    got = blocked()
    assert got == ["baton.concurrency('db') got no slot within 0.01 s."] * 2


def test_a_subflow_without_limits_of_its_own_shares_its_parents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_CONCURRENCY_LIMITS", '{"db": 1}')

    @flow
    def inner() -> Any:
        return baton._limits.current_limiter()

    @flow(concurrency_limits={"db": 3})
    def own() -> Any:
        return baton._limits.current_limiter()

    @flow
    def outer() -> Any:
        return baton._limits.current_limiter(), inner(), own()

    mine, inherited, separate = outer()
    assert inherited is mine
    assert separate is not mine and separate.concurrency_limits == {"db": 3}


def test_the_limits_service_closes_each_connection_once() -> None:
    # The thread serving a worker's connection and the flow run's end both close it;
    # closing it twice raised EBADF in that thread (and could close a reused descriptor).
    # The race is narrow: many rounds of connect, then end the flow run under it.
    from multiprocessing.connection import Client

    from baton import _limits_service

    _limits_service.stop(_limits_service.serve(LocalLimiter({"db": 1}, {})))  # started
    service = _limits_service._service
    assert service is not None
    errors: list[BaseException | None] = []
    before = threading.active_count()
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        for _ in range(400):
            handle = _limits_service.serve(LocalLimiter({"db": 1}, {}))
            client = Client(handle.address, family="AF_INET", authkey=handle.authkey)
            client.send(("limiter", handle.token))
            deadline = time.monotonic() + 5
            while handle.token not in service.connections.values():
                assert time.monotonic() < deadline
                time.sleep(0.0005)
            _limits_service.stop(handle)
            client.close()
        # The threads serving the connections end on their own: none is left behind.
        deadline = time.monotonic() + 10
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        threading.excepthook = previous
    assert errors == []
    assert threading.active_count() <= before
    assert not service.limiters and not service.connections


def test_flow_runs_with_limits_share_one_service_and_leave_it_as_they_end() -> None:
    # Each flow run whose runs travel adds its limiter to the process's service and
    # takes it out as it ends: no thread or socket per flow run (they cost ~0.3 ms of
    # each flow run on `process`), and a worker still speaking to an ended flow run's
    # limiter is told it is gone.
    from baton import _limits_service
    from baton._limits import current_limiter
    from baton._runners.process import ProcessRunner

    runner = ProcessRunner(max_workers=2)
    handles: list[Any] = []

    @flow(concurrency_limits={"db": 2}, task_runner=runner)
    def limited() -> Any:
        limiter: Any = current_limiter()
        handles.append(limiter.handle())
        return concurrency_block.submit("db", 0, 0.0).result()

    with runner:
        limited()
        threads = threading.active_count()
        limited()
    first, second = handles
    assert first.address == second.address and first.token != second.token
    assert threading.active_count() <= threads  # the second flow run started none
    service = _limits_service._service
    assert service is not None
    assert first.token not in service.limiters and second.token not in service.limiters
    client = _limits_service.LimiterClient(second)
    with pytest.raises(ConnectionError, match="flow run ended"):
        client.acquire({"db": 1}, lambda: None)


def test_workers_connect_to_the_limits_service_only_when_they_use_it() -> None:
    # Tagged runs take their slots in the flow's process: a worker needs the service
    # only for what its runs do there (a `concurrency` block, a rate limit, a subtask).
    from baton import _limits_service
    from baton._limits import current_limiter
    from baton._runners.process import ProcessRunner

    @flow(concurrency_limits={"db": 2}, task_runner=ProcessRunner(max_workers=2))
    def connections() -> tuple[int, int]:
        limiter: Any = current_limiter()
        busy_interval.with_options(tags={"db"}).map(range(4), 0.0).result()
        token = limiter.handle().token
        service: Any = _limits_service._service
        before = list(service.connections.values()).count(token)
        concurrency_block.submit("db", 0, 0.0).result()
        return before, list(service.connections.values()).count(token)

    assert connections() == (0, 1)


def test_a_worker_keeps_the_limiter_clients_of_a_bounded_number_of_flow_runs() -> None:
    # A warm worker runs flow run after flow run: each flow run with limits gave it a
    # client of that flow run's limiter, kept for ever (one more per flow run).
    from baton import _limits_service
    from baton._limits_service import LimiterHandle

    for number in range(3000):
        handle = LimiterHandle(("127.0.0.1", 9), b"k" * 32, {"db": 2}, {}, b"%d" % number)
        assert isinstance(handle.limiter(), _limits_service.LimiterClient)
        assert handle.limiter() is handle.limiter()  # one per flow run while it is kept
    assert len(_limits_service._clients) <= _limits_service._MAX_CLIENTS


def test_the_limits_that_travel_with_runs_are_pickled_once_and_unpickled_once() -> None:
    import pickle

    from baton.runners import RunLimits

    limiter = LocalLimiter({"db": 2}, {})
    try:
        limits = limiter.run_limits(frozenset({"db"}))
        first, second = pickle.dumps(limits), pickle.dumps(limits)
        assert first == second
        assert len(first) < 300  # the runs' own pickles carry it: it stays small
        loaded = pickle.loads(first)
        assert pickle.loads(second) is loaded
        assert loaded.held == frozenset({"db"})
        assert loaded.handle.address == limiter.handle().address
        assert loaded.limiter() is limiter  # in the flow's own process: the limiter itself
        # What runners send beside each run's arguments: the same bytes, the same object.
        assert limits.to_bytes() is limits.to_bytes()
        assert RunLimits.from_bytes(limits.to_bytes()) is loaded
    finally:
        limiter.close()


def test_a_worker_that_cannot_reach_the_flows_process_fails_only_runs_that_use_limits() -> None:
    # As on a worker of another machine: 127.0.0.1 there is not the flow's process.
    import socket

    from baton._limits_service import LimiterHandle
    from baton.runners import RunCall, RunLimits, run_call

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = unused.getsockname()
    handle = LimiterHandle(address, b"k" * 32, {"db": 2}, {})
    limits = RunLimits(handle, frozenset({"db"}))

    @task(tags={"db"})
    def tagged(x: int) -> int:
        return x + 1

    @task
    def guarded() -> str:
        with baton.concurrency("db", occupy=2):
            return "entered"

    done = run_call(RunCall(tagged, 1, "tagged-1", (1,), {}, limits=limits))
    assert done.state.is_completed() and done.state.result() == 2
    failed = run_call(RunCall(guarded, 2, "guarded-2", (), {}, limits=limits)).state
    assert failed.is_failed()
    error = failed.result(raise_on_failure=False)
    assert isinstance(error, ConnectionError)
    assert "could not be reached" in str(error)


def test_a_run_on_a_worker_holds_its_limits_while_it_runs_and_the_next_run_none() -> None:
    # A worker's runs share the scope their submissions go to, one after the other:
    # what one run holds is in that scope while it runs, and never in the next run's.
    from baton._admission import current_held
    from baton._limits_service import LimiterHandle
    from baton.runners import RunCall, RunLimits, run_call

    handle = LimiterHandle(("127.0.0.1", 9), b"k" * 32, {"db": 2}, {})
    limits = RunLimits(handle, frozenset({"db"}))

    @task
    def held() -> frozenset[str]:
        return current_held()

    first = run_call(RunCall(held, 1, "held-1", (), {}, limits=limits))
    assert first.state.result() == frozenset({"db"})
    second = run_call(RunCall(held, 2, "held-2", (), {}))
    assert second.state.result() == frozenset()
    assert current_held() == frozenset()
