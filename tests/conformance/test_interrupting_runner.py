"""The conformance kit against a runner that declares CANCEL_RUNNING."""

from __future__ import annotations

import pytest
from baton import TaskRunner
from baton.testing import RunnerConformance
from interrupting_runner import InterruptingRunner


class TestInterruptingRunner(RunnerConformance):
    conformance_level = 2

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return InterruptingRunner()
