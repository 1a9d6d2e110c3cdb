"""The kit as a plugin author uses it: in a project of their own, outside this repository.

A throwaway plugin project is written to a temporary directory and installed, with
the core, into a fresh virtual environment (which sees this environment's packages
through a ``.pth`` file, so nothing is downloaded but what pip's configured indexes
and caches give for the build backend). Its own test module subclasses the kit for a
correct runner and for one that swallows failures; pytest runs there, under the
project's own strict settings, and so does ``baton conformance``, also for the
example plugin of this repository, installed there as users install it.
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

PROJECT = {
    "pyproject.toml": """
        [build-system]
        requires = ["hatchling>=1.24"]
        build-backend = "hatchling.build"

        [project]
        name = "baton-pool-runner"
        version = "0.3.0"
        dependencies = ["baton-core[testing]"]

        [project.entry-points."baton.plugins"]
        pool = "baton_pool_runner.plugin"

        [tool.hatch.build.targets.wheel]
        packages = ["src/baton_pool_runner"]

        [tool.pytest.ini_options]
        addopts = ["-ra", "--strict-markers", "--strict-config"]
        xfail_strict = true
        filterwarnings = ["error"]
    """,
    "src/baton_pool_runner/__init__.py": """
        from baton_pool_runner.runner import PoolRunner, SwallowingPoolRunner

        __all__ = ["PoolRunner", "SwallowingPoolRunner"]
    """,
    "src/baton_pool_runner/plugin.py": """
        from baton import hookimpl


        @hookimpl
        def register_runners(register):
            register("pool", "baton_pool_runner.runner:PoolRunner")
            register("pool-swallowing", "baton_pool_runner.runner:SwallowingPoolRunner")
    """,
    "src/baton_pool_runner/runner.py": """
        from concurrent.futures import ThreadPoolExecutor

        from baton import State, TaskRunner


        class PoolRunner(TaskRunner):
            \"\"\"Ships each run's packed call to a bounded executor.\"\"\"

            name = "pool"

            def __init__(self, max_workers=4):
                self.max_workers = max_workers
                self._executor = None

            def on_start(self):
                self._executor = ThreadPoolExecutor(self.max_workers)

            def on_shutdown(self, wait):
                self._executor.shutdown(wait=wait)

            def submit(self, run):
                call = run.call

                def work():
                    if run.set_running():
                        run.set_state(self.report(call()))

                self._executor.submit(work)

            def report(self, state):
                return state


        class SwallowingPoolRunner(PoolRunner):
            \"\"\"Wrong on purpose: reports every run COMPLETED, failures included.\"\"\"

            name = "pool-swallowing"

            def report(self, state):
                return state if state.is_completed() else State.completed(None)
    """,
    "tests/test_conformance.py": """
        import pytest
        from baton.testing import RunnerConformance

        from baton_pool_runner import PoolRunner, SwallowingPoolRunner


        class TestPoolRunner(RunnerConformance):
            conformance_level = 1

            @pytest.fixture
            def runner(self):
                return PoolRunner(max_workers=4)


        class TestSwallowingPoolRunner(RunnerConformance):
            conformance_level = 1

            @pytest.fixture
            def runner(self):
                return SwallowingPoolRunner(max_workers=4)
    """,
}


class Venv:
    def __init__(self, path: Path, project: Path) -> None:
        self.path = path
        self.project = project

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        env.pop("PYTHONPATH", None)
        env["BATON_LOG_LEVEL"] = "WARNING"
        command = [str(self.path / "bin" / args[0]), *args[1:]]
        return subprocess.run(
            command, cwd=self.project, env=env, capture_output=True, text=True, timeout=600
        )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("outside")
    project = root / "baton-pool-runner"
    for name, text in PROJECT.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    env = Venv(root / "venv", project)
    have_pip = importlib.util.find_spec("pip") is not None
    create = [sys.executable, "-m", "venv", str(env.path)]
    subprocess.run(create + (["--without-pip"] if have_pip else []), check=True, timeout=120)
    python = env.path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # This environment's packages (pytest, hypothesis, pluggy...) become visible there.
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    (Path(purelib) / "_baton_test_parent.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    )
    pip = (
        [sys.executable, "-m", "pip", "--python", str(python)]
        if have_pip
        else [
            str(python),
            "-m",
            "pip",
        ]
    )
    example = ROOT / "examples" / "plugins" / "baton-inline-runner"
    install = [
        *pip,
        "install",
        "--quiet",
        "--no-deps",
        "-e",
        str(ROOT / "core"),
        str(project),
        str(example),
    ]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def test_a_correct_runner_passes_in_its_own_project(venv: Venv) -> None:
    done = venv.run("python", "-m", "pytest", "tests/test_conformance.py::TestPoolRunner", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last and "error" not in last, last
    assert "runner 'pool' does not declare capability 'processes'" in done.stdout
    # The kit came from the installed core, and the tests ran in the project, not here.
    assert str(ROOT / "tests") not in done.stdout


def test_a_runner_that_swallows_failures_fails_with_the_broken_rule(venv: Venv) -> None:
    done = venv.run(
        "python", "-m", "pytest", "tests/test_conformance.py::TestSwallowingPoolRunner", "-q"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    failed = {
        line.split("::")[-1].split(" ")[0]
        for line in done.stdout.splitlines()
        if line.startswith("FAILED ")
    }
    assert "test_a_raising_task_ends_failed_with_its_exception" in failed
    assert "test_upstream_failure_ends_the_downstream_upstream_failed" in failed
    assert "rule: a task that raises an Exception ends FAILED, not COMPLETED" in done.stdout
    # pytest rewrote the kit's assertions: the failure shows the values compared.
    assert "where <StateType.COMPLETED" in done.stdout or "StateType.COMPLETED" in done.stdout


def test_baton_conformance_of_the_installed_example_plugin(venv: Venv) -> None:
    done = venv.run("baton", "conformance", "inline")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout[done.stdout.index("Baton conformance kit") :]
    assert "runner `inline` passes" in summary
    assert "(baton_inline_runner.runner.InlineRunner)" in summary


def test_baton_conformance_in_the_project(venv: Venv) -> None:
    good = venv.run("baton", "conformance", "pool")
    assert good.returncode == 0, good.stdout + good.stderr
    summary = good.stdout[good.stdout.index("Baton conformance kit") :]
    assert "runner `pool` passes" in summary
    assert "(baton_pool_runner.runner.PoolRunner)" in summary
    assert "- Skipped, capability not declared: " in summary

    bad = venv.run("baton", "conformance", "pool-swallowing", "-k", "raising_task")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    summary = bad.stdout[bad.stdout.index("Baton conformance kit") :]
    assert "runner `pool-swallowing` FAILS" in summary
    assert (
        "- Failed: `test_a_raising_task_ends_failed_with_its_exception`: AssertionError: rule: "
        "a task that raises an Exception ends FAILED, not COMPLETED"
    ) in summary
