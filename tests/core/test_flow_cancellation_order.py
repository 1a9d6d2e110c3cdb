"""An exception in a flow cancels the runs that have not started, downstream ones too."""

from __future__ import annotations

import threading

from baton import Future, StateType, flow, task
from baton._runners.thread import ThreadRunner


def test_flow_exception_cancels_downstreams_of_unstarted_runs() -> None:
    gate = threading.Event()
    downstream: list[Future[int]] = []

    @task
    def hold() -> None:
        gate.wait(10)

    @task
    def step(x: int) -> int:
        return x

    def release() -> None:
        # The held worker may only go on once the flow has cancelled what had not started.
        while len(downstream) < 20 or not all(f.done() for f in downstream):
            threading.Event().wait(0.001)
        gate.set()

    @flow(task_runner=ThreadRunner(max_workers=1))
    def failing() -> None:
        hold.submit()  # takes the only worker
        for i in range(20):
            downstream.append(step.submit(step.submit(i)))  # its upstream waits in the queue
        raise RuntimeError("stop")

    threading.Thread(target=release, daemon=True).start()
    state = failing(return_state=True)
    assert state.is_failed()
    # Cancelling an upstream first would have ended its downstream UpstreamFailed instead.
    assert [f.state.type for f in downstream] == [StateType.CANCELLED] * 20
