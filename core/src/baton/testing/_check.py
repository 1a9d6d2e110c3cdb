"""`check_runner`: the conformance kit run against one runner in a pytest subprocess,
and the `Report` it returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

from baton._runner import TaskRunner
from baton.testing._spec import LATEST_LEVEL

__all__ = ["Report", "check_runner"]

_OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@final
@dataclass(frozen=True)
class Report:
    """What a conformance run found: counts, what was skipped and why, what failed.

    `summary()` is a Markdown block to paste into the runner's README.
    """

    runner: str
    """The runner's name."""
    runner_class: str
    capabilities: tuple[str, ...]
    level: int
    """The conformance level the runner was checked at."""
    kit_version: str
    """The version of baton-core whose kit ran."""
    exit_code: int
    """pytest's exit code: 0 when nothing failed."""
    outcomes: dict[str, str] = field(default_factory=dict)
    """Test name -> passed, failed, error, skipped, xfailed or xpassed."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Test name -> why it was skipped, xfailed or failed."""
    skipped_capabilities: dict[str, int] = field(default_factory=dict)
    """Capability -> how many tests were skipped because the runner does not declare it."""
    other_skips: dict[str, int] = field(default_factory=dict)
    """Any other reason for skipping -> how many tests."""
    errors: tuple[str, ...] = ()
    """Errors outside the tests (collection, a bad fixture)."""
    output: str = ""
    """pytest's output, when it was captured."""

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def failed(self) -> int:
        return self.count("failed") + self.count("error")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def xfailed(self) -> int:
        return self.count("xfailed")

    @property
    def xpassed(self) -> int:
        return self.count("xpassed")

    @property
    def ok(self) -> bool:
        """True when pytest passed and every test passed, was skipped or was expected to fail."""
        return self.exit_code == 0 and not self.failed and not self.errors and bool(self.outcomes)

    @property
    def failures(self) -> dict[str, str]:
        """Failed test -> the first line of its failure (the rule it checks)."""
        return {
            name: self.reasons.get(name, "")
            for name, outcome in self.outcomes.items()
            if outcome in ("failed", "error")
        }

    def summary(self) -> str:
        """A Markdown block: runner, kit version and level, counts, skipped capabilities."""
        verdict = "passes" if self.ok else "FAILS"
        lines = [
            f"Baton conformance kit (baton-core {self.kit_version}, level {self.level} of "
            f"{LATEST_LEVEL}): runner `{self.runner}` {verdict}.",
            "",
            "| passed | skipped | xfailed | xpassed | failed |",
            "| --- | --- | --- | --- | --- |",
            f"| {self.passed} | {self.skipped} | {self.xfailed} | {self.xpassed} | {self.failed} |",
            "",
            f"- Runner: `{self.runner}` ({self.runner_class})",
            f"- Capabilities declared: {', '.join(self.capabilities) or 'none'}",
        ]
        if self.skipped_capabilities:
            shown = ", ".join(f"{c} ({n})" for c, n in sorted(self.skipped_capabilities.items()))
            lines.append(f"- Skipped, capability not declared: {shown}")
        for reason, n in sorted(self.other_skips.items()):
            lines.append(f"- Skipped, {reason}: {n}")
        for name, outcome in sorted(self.outcomes.items()):
            if outcome == "xfailed":
                lines.append(f"- Known failure: `{name}`: {self.reasons.get(name, '')}")
        for name, reason in sorted(self.failures.items()):
            lines.append(f"- Failed: `{name}`: {reason}")
        lines.extend(f"- Error: {error}" for error in self.errors)
        return "\n".join(lines)


_MODULE = '''\
"""The Baton conformance kit against one runner (written by baton.testing.check_runner)."""

import pathlib

import pytest

from baton.testing import RunnerConformance

{build}


class TestConformance(RunnerConformance):
    conformance_level = {level!r}
    known_failures = {known!r}

    @pytest.fixture
    def runner(self):
        return _build()

    @pytest.fixture
    def runner_name(self):
        return globals().get("_NAME")

    @pytest.fixture
    def resource_capacity(self):
        return {resources!r}
'''

_BY_NAME = """\
from baton import get_runner

_NAME = {name!r}


def _build():
    return get_runner(_NAME, **{options!r})
"""

_BY_FACTORY = """\
import cloudpickle

_FACTORY = cloudpickle.loads(pathlib.Path(__file__).with_name("runner_factory.pkl").read_bytes())


def _build():
    return _FACTORY()
"""


def check_runner(
    runner: str | Callable[[], TaskRunner],
    *,
    level: int = LATEST_LEVEL,
    known_failures: Mapping[str, str] | None = None,
    pytest_args: Sequence[str] = (),
    echo: bool = False,
    timeout: float | None = None,
    resources: Mapping[str, float] | None = None,
) -> Report:
    """Run the conformance kit against a runner, in a new pytest process, and report.

    `runner` is the name (or URL) of an installed runner, or a callable that returns
    a new, unstarted runner: a runner class, or a function (it travels to the pytest
    process with cloudpickle). A runner given by name is also selected by that name in
    the new Python processes of the tests that run a script; one given by a callable
    skips those tests. `pytest_args` go to pytest (``["-x"]``, ``["-k",
    "retries"]``). With `echo`, pytest's output goes to this process's stdout as it
    comes; otherwise it is kept in `Report.output`. `resources` names one resource
    and the capacity the runner has of it in all, for the tests of priorities and
    resources (``{"slot": 1}``); a runner given by name is then built with
    ``get_runner(name, resources=resources)``, one given by a callable must have it.

    ```py
    from baton.testing import check_runner

    report = check_runner("thread")
    print(report.summary())
    assert report.ok
    ```
    """
    import baton

    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= LATEST_LEVEL:
        raise ValueError(f"level must be a whole number from 1 to {LATEST_LEVEL}, got {level!r}")
    known = dict(known_failures or {})
    if isinstance(runner, str):
        from baton._plugins import lookup_runner

        lookup_runner(runner)  # an unknown name fails here, listing the installed runners
        build = _BY_NAME.format(
            name=runner, options={"resources": dict(resources)} if resources else {}
        )
        label = runner
    elif callable(runner):
        build = _BY_FACTORY
        label = getattr(runner, "__qualname__", repr(runner))
    else:
        raise TypeError(
            "check_runner() takes a runner name such as 'thread', or a callable that returns "
            f"a new runner, such as the runner class; got {runner!r}"
        )
    with tempfile.TemporaryDirectory(prefix="baton-conformance-") as scratch:
        directory = Path(scratch)
        if not isinstance(runner, str):
            from baton.runners import cloudpickle_dumps

            (directory / "runner_factory.pkl").write_bytes(cloudpickle_dumps(runner))
        module = directory / "test_baton_conformance.py"
        module.write_text(
            _MODULE.format(
                build=build.rstrip(),
                level=level,
                known=known,
                resources=dict(resources) if resources else None,
            )
        )
        # An ini file of its own, so that the settings of whatever project this runs in
        # (filterwarnings = error, xfail_strict, plugins) do not apply to the kit.
        ini = directory / "pytest.ini"
        ini.write_text("[pytest]\naddopts = -ra\n")
        outcome_file = directory / "outcome.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-c",
            str(ini),
            "--rootdir",
            str(directory),
            "-p",
            "baton.testing._report",
            f"--baton-conformance-report={outcome_file}",
            "-p",
            "no:cacheprovider",
            *pytest_args,
        ]
        env = dict(os.environ)
        # The runner's modules import in the pytest process as they do here.
        paths = [p or os.getcwd() for p in sys.path] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        done = subprocess.run(
            command,
            cwd=directory,
            env=env,
            capture_output=not echo,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = "" if echo else done.stdout + done.stderr
        if outcome_file.exists():
            document: dict[str, Any] = json.loads(outcome_file.read_text())
        else:
            document = {
                "errors": [
                    f"pytest ended with exit code {done.returncode} before "
                    "running the kit" + (f":\n{output.strip()}" if output else "")
                ]
            }
    return _report(document, label, level, baton.__version__, done.returncode, output)


def _report(
    document: dict[str, Any], label: str, level: int, version: str, code: int, output: str
) -> Report:
    runner = document.get("runner") or {}
    tests: dict[str, dict[str, Any]] = document.get("tests", {})
    capabilities: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for entry in tests.values():
        if entry.get("outcome") != "skipped":
            continue
        kind, detail = entry.get("skip") or ("other", entry.get("reason", ""))
        if kind == "capability":
            capabilities[detail] += 1
        elif kind == "level":
            others[f"added at a later level ({detail})"] += 1
        elif kind == "inline":
            others["runs never in flight at once (each runs inside submit())"] += 1
        elif kind == "excluded":
            others[f"does not apply under capability {detail}"] += 1
        elif kind == "by-name":
            others["not selectable by name in a new process"] += 1
        else:
            others[str(detail) or "no reason given"] += 1
    return Report(
        runner=str(runner.get("name", label)),
        runner_class=str(runner.get("class", "?")),
        capabilities=tuple(runner.get("capabilities", ())),
        level=level,
        kit_version=version,
        exit_code=code,
        outcomes={n: str(e.get("outcome")) for n, e in tests.items() if e.get("outcome")},
        reasons={n: str(e.get("reason", "")) for n, e in tests.items() if e.get("reason")},
        skipped_capabilities=dict(capabilities),
        other_skips=dict(others),
        errors=tuple(document.get("errors", ())),
        output=output,
    )
