"""The `ray` runner starting a local Ray itself: it shuts down only what it started."""

from __future__ import annotations

import os
import shutil
import tempfile

import psutil
import pytest
import ray
import ray_tasks as rt
from baton import BatonError, flow
from baton_ray import RayTaskRunner
from raysetup import local_init_kwargs, ray_processes


@pytest.fixture(autouse=True)
def no_ray_yet() -> None:
    assert not ray.is_initialized(), "these tests need a process not connected to Ray"


@pytest.mark.slow
def test_a_local_ray_started_by_runners_ends_with_the_last_of_them() -> None:
    temp_dir = tempfile.mkdtemp(prefix="bray-")
    first = RayTaskRunner(init_kwargs=local_init_kwargs(temp_dir))
    second = RayTaskRunner()
    try:
        first.start()
        second.start()  # uses the Ray the first one started
        tree = ray_processes()
        assert tree, "a local Ray runs"
        first.shutdown()
        assert ray.is_initialized(), "another runner still uses it"
        pid = flow(task_runner=second)(lambda: rt.pid.submit().result())()
        assert pid != os.getpid()
    finally:
        first.shutdown()
        second.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not ray.is_initialized()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"processes of the local Ray left running: {alive}"


def test_a_ray_that_cannot_start_is_a_clear_error() -> None:
    runner = RayTaskRunner(init_kwargs={"no_such_option": 1})
    with pytest.raises(BatonError, match=r"could not start Ray: .*no_such_option"):
        runner.start()
    assert not ray.is_initialized()
