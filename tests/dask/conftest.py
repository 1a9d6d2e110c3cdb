"""Fixtures of the dask tests: one cluster per test module (see `dask_clusters`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("distributed", reason="the dask tests need baton-dask: run `tox -e dask`")

from dask_clusters import ProcessCluster, local_cluster, process_cluster

if TYPE_CHECKING:
    from distributed import LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with process_cluster(tmp_path_factory.mktemp("dask-cluster")) as started:
        yield started
