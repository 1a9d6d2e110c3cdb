"""A result left in the object store of a Ray the runner started, and shut down with
the flow: reading it afterwards says so."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import pytest
import ray_tasks as rt
from baton import Future, RunnerClosedError, flow
from baton_ray import RayTaskRunner
from raysetup import local_init_kwargs, ray, ray_processes


def test_reading_a_result_after_the_runner_shut_its_ray_down_says_so() -> None:
    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="bray-")
    runner = RayTaskRunner(init_kwargs=local_init_kwargs(temp_dir))
    kept: list[Future[Any]] = []

    @flow(task_runner=runner)
    def keep_one() -> None:
        future = rt.payload.submit(1)
        future.wait()
        kept.append(future)

    try:
        keep_one()
        assert not ray.is_initialized(), "the runner left the Ray it started running"
        with pytest.raises(RunnerClosedError, match=r"stayed on the Ray cluster") as raised:
            kept[0].result()
        assert kept[0].name in str(raised.value)
    finally:
        left = ray_processes()
        for process in left:
            process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
