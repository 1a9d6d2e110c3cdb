"""Ctrl-C of a flow script: what had not started is cancelled and the script exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from baton import flow, task

    @task
    def work(i):
        if i == 0 and sys.argv[1] == "sync":
            print("running", flush=True)
        time.sleep(0.05)
        return i

    @flow(task_runner=sys.argv[1])
    def long_map():
        futures = work.map(range(10_000))
        print("running", flush=True)
        return futures.result()

    long_map()
    """
)


@pytest.mark.parametrize("runner", ["thread", "sync"])
def test_sigint_mid_map_cancels_the_rest_and_exits(tmp_path: Path, runner: str) -> None:
    script = tmp_path / "flow_script.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), runner],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert "was interrupted by KeyboardInterrupt" in stderr
    if runner == "thread":
        # 10,000 runs of 50 ms on a handful of threads: most had not started
        cancelled = int(stderr.split("interrupted by KeyboardInterrupt; ")[1].split()[0])
        assert cancelled > 1_000


SWALLOWING_SCRIPT = textwrap.dedent(
    """
    import gc, sys, time
    from baton import flow, get_runner, task

    def slow_gc_callback(phase, info):
        # As libraries' gc callbacks do; a Ctrl-C that arrives in here is swallowed by
        # Python ("Exception ignored in ...").
        if phase == "start" and armed:
            print("in the gc callback", flush=True)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                pass

    armed = False
    gc.callbacks.append(slow_gc_callback)

    @task
    def work(i):
        time.sleep(0.05)
        return i

    @flow(task_runner=get_runner("thread", max_workers=2))
    def long_map():
        global armed
        futures = work.map(range(2_000))  # 50 s of work on two threads
        armed = True
        gc.collect()
        armed = False
        print("after the gc callback", flush=True)
        return futures.result()

    long_map()
    """
)


def test_a_ctrl_c_swallowed_in_a_gc_callback_still_interrupts_the_flow(tmp_path: Path) -> None:
    script = tmp_path / "swallowing.py"
    script.write_text(SWALLOWING_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in the gc callback"
        proc.send_signal(signal.SIGINT)
        # Without redelivery the flow would run its 50 s of work to the end.
        out, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.strip() == "after the gc callback"
    assert "Exception ignored in" in stderr  # Python's own report of the swallowed one
    assert "was interrupted by KeyboardInterrupt" in stderr
    cancelled = int(stderr.split("interrupted by KeyboardInterrupt; ")[1].split()[0])
    assert cancelled > 1_000
    assert proc.returncode != 0
