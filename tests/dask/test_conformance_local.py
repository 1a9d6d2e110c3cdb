"""The conformance kit on a `LocalCluster` of worker processes, connected to by address."""

from __future__ import annotations

import pytest
from baton.testing import RunnerConformance
from baton_dask import DaskTaskRunner
from distributed import LocalCluster

# Dask's threads in this process (the client's, a LocalCluster's scheduler) estimate message
# sizes with the `random` module; Hypothesis warns when the global random state changes
# while it draws the kit's random task graphs, though the draws do not depend on it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


class TestDaskOnLocalCluster(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self, cluster: LocalCluster) -> DaskTaskRunner:
        return DaskTaskRunner(cluster.scheduler_address)

    @pytest.fixture
    def runner_name(self, cluster: LocalCluster) -> str:
        return str(cluster.scheduler_address).replace("tcp://", "dask://")
