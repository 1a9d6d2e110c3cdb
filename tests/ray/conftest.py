"""Fixtures for the ray tests: a local Ray, or a `ray start` cluster, per test module
(see `raysetup`)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest
from baton.testing._rendezvous import Rendezvous
from raysetup import Cluster, local_ray, ray_cluster


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray():
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_cluster() as started:
        yield started


@pytest.fixture
def rv() -> Iterator[Rendezvous]:
    """A rendezvous in a fresh directory: Ray workers on this machine reach it too."""
    directory = tempfile.mkdtemp(prefix="baton-ray-")
    rendezvous = Rendezvous(directory)
    try:
        yield rendezvous
    finally:
        rendezvous.abort()
        shutil.rmtree(directory, ignore_errors=True)
