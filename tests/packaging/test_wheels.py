"""The distributions as users get them: wheels built from the three projects (and the
example plugin baton-pool), installed into fresh virtual environments, a runner chosen
by name, a flow run.

The environments are made by ``uv`` working offline: every third-party package comes
from uv's cache, which the tox environment running these tests filled when it
installed the same requirements. Nothing is downloaded, and nothing of this
environment is visible in the new ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = [ROOT / "core", ROOT / "plugins/dask", ROOT / "plugins/ray"]
POOL_EXAMPLE = ROOT / "examples" / "plugins" / "baton-pool"

UV = shutil.which("uv")
if UV is None:
    pytest.skip("the packaging tests need uv: run `tox -e packaging`", allow_module_level=True)

FLOW = """
    import os, sys

    from baton import flow, get_runner, task

    @task
    def square(x):
        return x * x, os.getpid()

    @flow(task_runner=sys.argv[1])
    def squares(xs):
        pairs = square.map(xs).result()
        return [v for v, _ in pairs], len({pid for _, pid in pairs} - {os.getpid()})

    if __name__ == "__main__":
        runner = sys.argv[1]
        if runner == "dask":  # its dashboard on a free port rather than on 8787
            runner = get_runner("dask", cluster_kwargs={"dashboard_address": ":0"})
        values, worker_pids = squares.with_options(task_runner=runner)([1, 2, 3, 4])
        print(values, "elsewhere" if worker_pids else "here")
"""


def uv(*args: str) -> None:
    assert UV is not None
    done = subprocess.run([UV, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"uv {' '.join(args)}\n{done.stdout}{done.stderr}"


class Venv:
    def __init__(self, path: Path, wheels: Path, *requirements: str) -> None:
        self.path = path
        uv("venv", "--quiet", "--python", sys.executable, str(path))
        uv(
            "pip",
            "install",
            "--quiet",
            "--offline",
            "--python",
            str(path / "bin" / "python"),
            "--find-links",
            str(wheels),
            *requirements,
        )

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "PYTHON"))}
        env["BATON_LOG_LEVEL"] = "WARNING"
        command = [str(self.path / "bin" / args[0]), *args[1:]]
        return subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300
        )

    def installed(self) -> set[str]:
        code = (
            "import importlib.metadata as m; print('\\n'.join(d.name for d in m.distributions()))"
        )
        return set(self.run("python", "-c", code).stdout.split())


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    for project in [*PROJECTS, POOL_EXAMPLE]:
        uv("build", "--quiet", "--offline", "--wheel", "--out-dir", str(out), str(project))
    return out


@pytest.fixture(scope="module")
def flow_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flows") / "squares.py"
    path.write_text(textwrap.dedent(FLOW))
    return path


def test_each_wheel_carries_its_package_types_and_entry_points(wheels: Path) -> None:
    expected = {
        "baton_core": ("baton/py.typed", "baton.runners = baton._builtin"),
        "baton_dask": ("baton_dask/py.typed", "dask = baton_dask._plugin"),
        "baton_ray": ("baton_ray/py.typed", "ray = baton_ray._plugin"),
        "baton_pool": ("baton_pool/py.typed", "pool = baton_pool.plugin"),
    }
    for stem, (typed, entry_point) in expected.items():
        (wheel,) = wheels.glob(f"{stem}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            assert typed in names
            (points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
            assert "[baton.plugins]" in archive.read(points).decode()
            assert entry_point in archive.read(points).decode()
            assert not any(n.startswith(("tests/", "docs/")) for n in names)


def test_the_core_alone_runs_flows_and_names_the_extra_for_dask(
    wheels: Path, flow_file: Path, tmp_path: Path
) -> None:
    env = Venv(tmp_path / "core", wheels, "baton-core")
    assert {"baton-core", "pluggy", "pydantic"} <= env.installed()
    assert not {"baton-dask", "distributed", "ray"} & env.installed()

    runners = env.run("baton", "runners")
    assert runners.returncode == 0, runners.stderr
    assert [line.split()[0] for line in runners.stdout.splitlines()[2:]] == [
        "process",
        "sync",
        "thread",
    ]

    for runner in ("thread", "process"):
        ran = env.run("python", str(flow_file), runner)
        assert ran.returncode == 0, ran.stderr
        where = "elsewhere" if runner == "process" else "here"
        assert ran.stdout == f"[1, 4, 9, 16] {where}\n"

    missing = env.run("python", str(flow_file), "dask")
    assert missing.returncode == 1
    assert "Unknown task runner 'dask'" in missing.stderr
    assert 'install it with: pip install "baton-core[dask]"' in missing.stderr


def test_the_dask_extra_installs_the_runner_selected_by_name(
    wheels: Path, flow_file: Path, tmp_path: Path
) -> None:
    env = Venv(tmp_path / "dask", wheels, "baton-core[dask]")
    assert {"baton-core", "baton-dask", "distributed", "dask"} <= env.installed()
    assert "baton-ray" not in env.installed()

    listing = env.run("baton", "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["dask"]["distribution"] == "baton-dask"
    assert plugins["dask"]["status"] == "loaded"

    # The runner starts (and then closes) a LocalCluster of worker processes.
    ran = env.run("python", str(flow_file), "dask")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "[1, 4, 9, 16] elsewhere\n"

    # Without the main guard, Dask's worker processes would start clusters of their own.
    unguarded = tmp_path / "unguarded.py"
    source = flow_file.read_text().replace('if __name__ == "__main__":', "if True:")
    unguarded.write_text(source)
    failed = env.run("python", str(unguarded), "dask")
    assert failed.returncode == 1
    assert (
        f'{unguarded} has no `if __name__ == "__main__":` block: Dask starts its worker '
        "processes by importing the script again, so put the code that runs the flow under "
        'that guard (or pass cluster_kwargs={"processes": False})'
    ) in failed.stderr


# The kit's tests of what the `pool` runner declares (processes, nested runs, async,
# hard timeouts, crashes), each in a new runner with new worker processes. The whole
# kit against it runs in tests/plugins/test_pool_example.py.
POOL_TESTS = "timeout or dying or pickled or another_process or nested or async or cancel"


def test_the_example_pool_plugin_installs_and_passes_the_conformance_kit(
    wheels: Path, flow_file: Path, tmp_path: Path
) -> None:
    env = Venv(tmp_path / "pool", wheels, "baton-core[testing]", "baton-pool")
    assert {"baton-core", "baton-pool", "pytest"} <= env.installed()

    runners = env.run("baton", "runners")
    assert runners.returncode == 0, runners.stderr
    assert "pool" in [line.split()[0] for line in runners.stdout.splitlines()[2:]]

    ran = env.run("python", str(flow_file), "pool")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "[1, 4, 9, 16] elsewhere\n"

    kit = env.run("baton", "conformance", "pool", "-k", POOL_TESTS, cwd=tmp_path)
    assert kit.returncode == 0, kit.stdout + kit.stderr
    summary = kit.stdout[kit.stdout.index("Baton conformance kit") :]
    assert "runner `pool` passes" in summary, summary
    assert "hard-timeouts" in summary and "crash-detection" in summary, summary
