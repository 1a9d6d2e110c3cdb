"""Interruption: Ctrl-C (SIGINT) reaches a flow script in the middle of a long map. The
script exits promptly, says what happened, cancels the runs that had not started, and
leaves no process behind (its worker processes, and a cluster it started, are gone).

Ctrl-C in a terminal signals the script's whole process group, workers of a local
cluster included: then too the script says what happened once, with no traceback or
log of the workers or of the engine underneath.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from reliability_support import Report, runners, subprocess_env

RUNS = 5_000
# From SIGINT to exit: generous, "promptly" on a loaded CI machine; a script that started
# a cluster stops it first.
EXIT_SECONDS = {"thread": 20.0, "sync": 20.0, "process": 20.0, "dask": 60.0, "ray": 60.0}
START_SECONDS = 180.0  # until the map is under way (a cluster starts first)
GONE_SECONDS = 30.0  # for the processes the script started to be gone after it exits

SCRIPT = textwrap.dedent(
    """
    import faulthandler, signal, sys, time
    from baton import flow, get_runner, task

    # The test asks for every thread's stack with SIGUSR1 if the script does not exit.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    name, marker = sys.argv[1], sys.argv[2]

    def make_runner():
        if name == "process":
            return get_runner("process", max_workers=2)
        if name == "dask":
            return get_runner("dask", cluster_kwargs={
                "n_workers": 2, "threads_per_worker": 1, "processes": True,
                "host": "127.0.0.1", "dashboard_address": ":0",
            })
        if name == "ray":
            return get_runner("ray", init_kwargs={
                "num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
                "object_store_memory": 300 * 2**20,
            })
        return get_runner(name)

    @task
    def item(i):
        if i == 3:
            # The map is under way: the test may interrupt it now.
            with open(marker, "w") as f:
                f.write("started")
        time.sleep(0.05)
        return i

    @flow
    def long_map(n):
        return item.map(range(n)).result()

    if __name__ == "__main__":
        long_map.with_options(task_runner=make_runner())(int(sys.argv[3]))
        print("the map finished: it was never interrupted")
    """
)

# A log line of Dask (distributed) or Ray, or a worker process's own traceback.
ENGINE_NOISE = re.compile(r"- distributed\.[\w.]+ - |\(raylet\)|^Process .*:$", re.MULTILINE)

INTERRUPTED = re.compile(
    r"Flow run '[^']+' was interrupted by KeyboardInterrupt; (\d+) task run\(s\) that had "
    r"not started were cancelled\."
)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


CASES = [(name, False) for name in runners()] + [
    (name, True) for name in runners("thread", "process", "dask")
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runner_name", "whole_group"),
    CASES,
    scope="module",
    ids=[f"{name}-{'group' if group else 'script'}" for name, group in CASES],
)
def test_sigint_mid_map_exits_promptly_cancels_the_rest_and_leaves_no_process(
    tmp_path: Path, runner_name: str, whole_group: bool, report: Report
) -> None:
    script = tmp_path / "long_map.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "under-way"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    # Files, not pipes: the workers a script starts inherit its output, and a pipe held
    # open by one of them would look like a script that did not exit.
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), runner_name, str(marker), str(RUNS)],
            stdout=stdout_file,
            stderr=stderr_file,
            env={**subprocess_env(), "BATON_LOG_LEVEL": "WARNING"},
            cwd=tmp_path,
            # A group of its own, to signal it whole as a terminal does.
            start_new_session=whole_group,
        )
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_SECONDS
        while not marker.exists():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the map did not get under way"
            time.sleep(0.02)
        started = _descendants(proc.pid)
        sent = time.monotonic()
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(EXIT_SECONDS[runner_name])
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            text = err.read_text()
            shown = text if len(text) <= 12000 else f"{text[:4000]}\n[...]\n{text[-8000:]}"
            pytest.fail(
                f"the script was still running {EXIT_SECONDS[runner_name]:g} s after SIGINT; "
                f"its stderr (the start, and the end with its threads' stacks):\n{shown}"
            )
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            for child in _descendants(proc.pid):
                child.kill()
            proc.kill()
            proc.wait()
    _, left = psutil.wait_procs(started, timeout=GONE_SECONDS)
    for process in left:
        process.kill()
    assert not left, f"processes left running after the script exited: {left}"

    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode != 0, stdout
    assert "the map finished" not in stdout
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr[-2000:]
    found = INTERRUPTED.search(stderr)
    assert found, stderr[-2000:]
    cancelled = int(found[1])
    if runner_name != "sync":
        # The sync runner runs each run as .map submits it: nothing waits to be cancelled.
        assert cancelled > 0
    if whole_group:
        assert stderr.count("Traceback") == 1, stderr[-4000:]
        assert not ENGINE_NOISE.search(stderr), stderr[-4000:]
    report.record(
        "SIGINT to the process group mid-map" if whole_group else "SIGINT mid-map",
        runner_name,
        runs=RUNS,
        cancelled=cancelled,
        seconds_to_exit=round(took, 1),
        processes_started=len(started),
        processes_left=len(left),
    )
