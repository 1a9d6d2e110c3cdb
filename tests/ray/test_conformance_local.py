"""The conformance kit on the `ray` runner, on a local Ray this process started."""

from __future__ import annotations

import pytest
from baton.testing import RunnerConformance
from baton_ray import RayTaskRunner


@pytest.mark.usefixtures("ray_local")
class TestRayOnLocalRay(RunnerConformance):
    conformance_level = 3

    @pytest.fixture
    def runner(self) -> RayTaskRunner:
        # Ray is already initialised here: the runner uses that Ray and leaves it running.
        return RayTaskRunner()
