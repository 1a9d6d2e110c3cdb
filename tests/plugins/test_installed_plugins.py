"""Plugins installed the way users install them: `pip install` into a fresh virtual
environment, then the `baton` command and flows in new processes.

The environment sees this one's packages (a ``.pth`` file adds its site directories),
so only the three local projects are built: the core (for its `baton` script), the
example inline runner, and a plugin that is broken on purpose. Nothing is downloaded
except what pip's configured indexes and caches give for the build backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugins" / "baton-inline-runner"

FLOWS = """
    import threading

    from baton import flow, task

    @task
    def double(x):
        return 2 * x, threading.get_ident() == threading.main_thread().ident

    @flow
    def doubles(xs):
        pairs = double.map(xs).result()
        return {"values": [v for v, _ in pairs], "inline": all(i for _, i in pairs)}
"""


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.bin = path / "bin"

    def run(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        clean.pop("PYTHONPATH", None)
        clean.update(env or {})
        command = [str(self.bin / args[0]), *args[1:]]
        return subprocess.run(
            command, capture_output=True, text=True, env=clean, cwd=cwd, timeout=120
        )


def write_broken_plugin(path: Path) -> None:
    package = path / "src" / "baton_broken_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    (path / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["hatchling>=1.24"]
            build-backend = "hatchling.build"

            [project]
            name = "baton-broken-plugin"
            version = "0.0.1"

            [project.entry-points."baton.plugins"]
            broken = "baton_broken_plugin"

            [tool.hatch.build.targets.wheel]
            packages = ["src/baton_broken_plugin"]
            """
        )
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("installed")
    env = Venv(root / "venv")
    have_pip = importlib.util.find_spec("pip") is not None
    create = [sys.executable, "-m", "venv", str(env.path)]
    subprocess.run(create + (["--without-pip"] if have_pip else []), check=True, timeout=120)
    python = env.bin / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # This environment's packages (pluggy, pydantic, click...) become visible there.
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    (Path(purelib) / "_baton_test_parent.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    )
    broken = root / "broken"
    write_broken_plugin(broken)
    pip = (
        [sys.executable, "-m", "pip", "--python", str(python)]
        if have_pip
        else [
            str(python),
            "-m",
            "pip",
        ]
    )
    install = [*pip, "install", "--quiet", "--no-deps", "-e", str(ROOT / "core")]
    done = subprocess.run(
        [*install, str(EXAMPLE), str(broken)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (root / "flows.py").write_text(textwrap.dedent(FLOWS))
    return env


def test_baton_runners_lists_the_plugin_despite_the_broken_one(venv: Venv) -> None:
    result = venv.run("baton", "runners")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert rows["inline"][:4] == ["inline", "inline", "baton-inline-runner", "0.1.0"]
    assert rows["inline"][-1] == "inline://"
    assert rows["thread"][2] == "baton-core"
    assert "Plugins that failed to load: broken (baton-broken-plugin)" in result.stderr
    assert "Traceback" not in result.stderr


def test_baton_plugins_json_reports_the_broken_plugin(venv: Venv) -> None:
    result = venv.run("baton", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    broken = plugins["broken"]
    assert broken["distribution"] == "baton-broken-plugin"
    assert broken["status"] == "failed"
    assert broken["error"] == "RuntimeError: this plugin is broken on purpose"
    assert "baton_broken_plugin" in broken["traceback"]
    assert plugins["inline"]["status"] == "loaded"
    assert plugins["inline"]["runners"] == ["inline"]
    assert result.stderr == ""  # the warning is not repeated: the listing says it


def test_a_flow_on_the_plugin_runner(venv: Venv) -> None:
    flows = venv.path.parent / "flows.py"
    result = venv.run("baton", "run", f"{flows}:doubles", "--runner", "inline", "-p", "xs=[1,2]")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"values": [2, 4], "inline": True}
    assert "broken on purpose" in result.stderr  # warned about, and nothing else stopped

    traced = venv.run("baton", "run", f"{flows}:doubles", "-r", "inline://?trace=1", "-p", "xs=[5]")
    assert traced.returncode == 0, traced.stderr
    assert "inline: running 'double-" in traced.stderr


def test_a_flow_on_another_runner_is_not_stopped_by_the_broken_plugin(venv: Venv) -> None:
    flows = venv.path.parent / "flows.py"
    result = venv.run("baton", "run", f"{flows}:doubles", "--runner", "thread", "-p", "xs=[3]")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"values": [6], "inline": False}


def test_selected_by_name_from_python(venv: Venv) -> None:
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("ignore")
        from baton import flow, get_runner, task

        @task
        def inc(x):
            return x + 1

        @flow(task_runner="inline")
        def plus_one(xs):
            return inc.map(xs).result()

        print(type(get_runner("inline")).__module__, plus_one([1, 2]))
        """
    )
    result = venv.run("python", "-c", code, env={"BATON_LOG_LEVEL": "WARNING"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "baton_inline_runner.runner [2, 3]"


def test_the_allow_list_keeps_the_broken_plugin_out(venv: Venv) -> None:
    result = venv.run(
        "baton", "plugins", "--json", env={"BATON_LOAD_PLUGINS": "baton-inline-runner"}
    )
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["broken"]["status"] == "skipped"
    assert plugins["broken"]["error"] is None
    assert plugins["inline"]["status"] == "loaded"

    none = venv.run("baton", "runners", env={"BATON_LOAD_PLUGINS": ""})
    names = {line.split()[0] for line in none.stdout.splitlines()[2:]}
    assert "inline" not in names
    assert {"thread", "sync"} <= names
    assert none.stderr == ""


def test_strict_mode_is_an_error_without_a_traceback(venv: Venv) -> None:
    result = venv.run("baton", "runners", env={"BATON_STRICT_PLUGINS": "1"})
    assert result.returncode == 1
    assert "Baton plugin 'broken' (baton-broken-plugin 0.0.1) failed to load" in result.stderr
    assert "Traceback" not in result.stderr
    flows = venv.path.parent / "flows.py"
    run = venv.run(
        "baton", "run", f"{flows}:doubles", "-p", "xs=[1]", env={"BATON_STRICT_PLUGINS": "1"}
    )
    assert run.returncode != 0
    assert "BATON_STRICT_PLUGINS is set" in run.stderr
    assert "Traceback" not in run.stderr
