"""What the reliability tests share: which runners they run on, how each runner is built
(one started runner, and for dask and ray one cluster, per test module), and the report
of what the fault tests did.

The runners come from ``BATON_RELIABILITY_RUNNERS`` (comma-separated; default
``thread,sync,process``): the environments with baton-dask or baton-ray installed set
it to ``dask`` or ``ray``. The clusters are the ones the dask and ray tests use,
loaded from their helper modules rather than built a second way here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from baton import TaskRunner, get_runner

TESTS = Path(__file__).resolve().parents[1]
DEFAULT_RUNNERS = ("thread", "sync", "process")
KNOWN_RUNNERS = ("thread", "sync", "process", "dask", "ray")
REPORT_ENV = "BATON_RELIABILITY_REPORT"


def selected_runners() -> tuple[str, ...]:
    raw = os.environ.get("BATON_RELIABILITY_RUNNERS", "")
    names = tuple(n.strip() for n in raw.split(",") if n.strip()) or DEFAULT_RUNNERS
    unknown = [n for n in names if n not in KNOWN_RUNNERS]
    if unknown:
        raise ValueError(
            f"BATON_RELIABILITY_RUNNERS names {', '.join(unknown)}; the reliability suite "
            f"knows {', '.join(KNOWN_RUNNERS)}"
        )
    return names


def runners(*applicable: str) -> list[str]:
    """The selected runners among `applicable` (all selected ones when none is given)."""
    return [n for n in selected_runners() if not applicable or n in applicable]


def _load(path: Path, name: str) -> ModuleType:
    """Import a helper module of another test folder by path, under a name of its own,
    so that it is neither copied nor confused with that folder's conftest."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def dask_helpers() -> ModuleType:
    # Imported under its own name: the dask tests import it as `dask_clusters`.
    existing = sys.modules.get("dask_clusters")
    if existing is not None:
        return existing
    return _load(TESTS / "dask" / "dask_clusters.py", "baton_reliability_dask_clusters")


def ray_helpers() -> ModuleType:
    # Imported under its own name: the ray tests import it as `raysetup`.
    existing = sys.modules.get("raysetup")
    if existing is not None:
        return existing
    return _load(TESTS / "ray" / "raysetup.py", "raysetup")


@contextlib.contextmanager
def cluster_for(name: str) -> Iterator[Any]:
    """What a runner named `name` needs running first: a Dask LocalCluster of two
    worker processes with one thread each, a local Ray with two CPUs, or nothing."""
    if name == "dask":
        with dask_helpers().local_cluster(n_workers=2, threads_per_worker=1) as cluster:
            yield cluster
    elif name == "ray":
        with ray_helpers().local_ray():
            yield None
    else:
        yield None


def build_runner(name: str, cluster: Any) -> TaskRunner:
    """A new, unstarted runner named `name`, on `cluster` (see `cluster_for`)."""
    if name == "process":
        return get_runner("process", max_workers=2)
    if name == "dask":
        return get_runner("dask", address=cluster.scheduler_address)
    # ray: the Ray this process started in `cluster_for`, left running when it shuts down
    return get_runner(name)


def subprocess_env() -> dict[str, str]:
    """The environment of a flow script run as a subprocess by the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    if "ray" in selected_runners():
        env.update(ray_helpers().RAY_ENV)
    return env


class Report:
    """What the fault and load tests did, by scenario and runner, written as JSON to the
    file that ``BATON_RELIABILITY_REPORT`` names (merged into what it already holds, so
    that one file collects the runs of every environment)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}

    def record(self, scenario: str, runner: str, **figures: Any) -> None:
        with self._lock:
            self.entries[f"{scenario} [{runner}]"] = {
                "scenario": scenario,
                "runner": runner,
                **figures,
            }
        print(f"\n{scenario} [{runner}]: {json.dumps(figures, sort_keys=True)}")

    def write(self) -> None:
        target = os.environ.get(REPORT_ENV)
        if not target or not self.entries:
            return
        path = Path(target)
        merged: dict[str, Any] = {}
        if path.exists():
            with contextlib.suppress(ValueError):
                merged = json.loads(path.read_text())
        merged.update(self.entries)
        path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
