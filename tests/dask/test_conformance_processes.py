"""The conformance kit on a cluster started as `dask scheduler` and `dask worker` processes,
selected by URL as users select it (``dask://HOST:PORT``)."""

from __future__ import annotations

import pytest
from baton import TaskRunner, get_runner
from baton.testing import RunnerConformance
from dask_clusters import ProcessCluster

# Dask's threads in this process (the client's, a LocalCluster's scheduler) estimate message
# sizes with the `random` module; Hypothesis warns when the global random state changes
# while it draws the kit's random task graphs, though the draws do not depend on it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


class TestDaskOnSchedulerAndWorkerProcesses(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self, runner_name: str) -> TaskRunner:
        return get_runner(runner_name)

    @pytest.fixture
    def runner_name(self, dask_processes: ProcessCluster) -> str:
        return dask_processes.address.replace("tcp://", "dask://")
