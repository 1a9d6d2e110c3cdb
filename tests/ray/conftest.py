"""Fixtures for the ray tests: a local Ray, or a `ray start` cluster, per test module
(see `raysetup`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from raysetup import Cluster, local_ray, ray_cluster


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray():
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_cluster() as started:
        yield started
