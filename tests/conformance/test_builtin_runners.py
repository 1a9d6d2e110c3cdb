"""The conformance kit against the runners that ship with baton-core."""

from __future__ import annotations

import pytest
from baton import TaskRunner, get_runner
from baton.testing import RunnerConformance

# The runners are built with one resource of known capacity, for the kit's tests of
# priorities and resources.
SLOT = {"slot": 1}


class TestThreadRunner(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return get_runner("thread", resources=SLOT)

    @pytest.fixture
    def runner_name(self) -> str:
        return "thread"

    @pytest.fixture
    def resource_capacity(self) -> dict[str, float]:
        return SLOT


class TestThreadRunnerWithTwoWorkers(RunnerConformance):
    """A bounded pool, full as soon as two runs wait on nested ones."""

    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return get_runner("thread", max_workers=2, resources=SLOT)

    @pytest.fixture
    def resource_capacity(self) -> dict[str, float]:
        return SLOT


class TestSyncRunner(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return get_runner("sync", resources=SLOT)

    @pytest.fixture
    def runner_name(self) -> str:
        return "sync"

    @pytest.fixture
    def resource_capacity(self) -> dict[str, float]:
        return SLOT


class TestProcessRunner(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        module = pytest.importorskip("baton._runners.process")
        made: TaskRunner = module.ProcessRunner(max_workers=2, resources=SLOT)
        return made

    @pytest.fixture
    def runner_name(self) -> str:
        return "process"

    @pytest.fixture
    def resource_capacity(self) -> dict[str, float]:
        return SLOT
