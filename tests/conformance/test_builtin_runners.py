"""The conformance kit against the runners that ship with baton-core."""

from __future__ import annotations

import pytest
from baton import TaskRunner, get_runner
from baton.testing import RunnerConformance


class TestThreadRunner(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return get_runner("thread")

    @pytest.fixture
    def runner_name(self) -> str:
        return "thread"


class TestThreadRunnerWithTwoWorkers(RunnerConformance):
    """A bounded pool, full as soon as two runs wait on nested ones."""

    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return get_runner("thread", max_workers=2)


class TestSyncRunner(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return get_runner("sync")

    @pytest.fixture
    def runner_name(self) -> str:
        return "sync"


class TestProcessRunner(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self) -> TaskRunner:
        module = pytest.importorskip("baton._runners.process")
        made: TaskRunner = module.ProcessRunner(max_workers=2)
        return made

    @pytest.fixture
    def runner_name(self) -> str:
        return "process"
