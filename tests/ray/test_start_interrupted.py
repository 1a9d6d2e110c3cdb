"""Ctrl-C while the `ray` runner starts a local Ray: the script stops, and leaves no Ray
process behind. A Ctrl-C at a terminal reaches the whole process group, Ray's
processes included, which is what the test sends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from raysetup import RAY_ENV, import_path

# Generous bounds that tell an interrupted start from a hung one on a loaded machine.
START_SECONDS = 180.0
EXIT_SECONDS = 45.0
# Ray's agents, left behind by a start killed half-way, live on for 20 s and more.
GONE_SECONDS = 10.0

SCRIPT = textwrap.dedent(
    """
    import sys
    from baton import flow, get_runner, task


    @task
    def one():
        return 1


    @flow(task_runner=get_runner("ray", init_kwargs={
        "num_cpus": 1, "include_dashboard": False, "log_to_driver": False,
        "_temp_dir": sys.argv[1],
    }))
    def main():
        return one()


    if __name__ == "__main__":
        main()
        print("the flow finished: it was never interrupted")
    """
)


def _session(sid: int) -> list[psutil.Process]:
    """The processes of session `sid` (the script's: every process it starts is in it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != sid and os.getsid(process.pid) == sid:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _names(processes: list[psutil.Process]) -> str:
    names = []
    for process in processes:
        try:
            names.append(" ".join(process.cmdline()) or process.name())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return " ".join(names)


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_stops_the_script_and_leaves_no_process(tmp_path: Path) -> None:
    script = tmp_path / "start.py"
    script.write_text(SCRIPT)
    temp_dir = tempfile.mkdtemp(prefix="bray-")
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), temp_dir],
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            env={**os.environ, **RAY_ENV, "PYTHONPATH": import_path()},
            cwd=tmp_path,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
    try:
        # Interrupt once the raylet runs: Ray is half-way through its start.
        deadline = time.monotonic() + START_SECONDS
        while "raylet" not in _names(_session(proc.pid)):
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "Ray did not get under way"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_SECONDS:g} s after Ctrl-C: {err.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _, left = psutil.wait_procs(_session(proc.pid), timeout=GONE_SECONDS)
        for process in left:
            process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes left running after the script exited: {left}"
    stderr = err.read_text()
    assert "the flow finished" not in stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr[-2000:]
