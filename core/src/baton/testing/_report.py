"""A pytest plugin that writes the outcome of a conformance run to a JSON file.

`check_runner` and ``baton conformance`` load it with ``-p baton.testing._report``
in the pytest process they start; it is not an entry point, so it never loads into
other pytest runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

__all__ = ["OPTION"]

OPTION = "--baton-conformance-report"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(OPTION, metavar="PATH", help="write the conformance outcome to PATH")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption(OPTION)
    if path:
        config.pluginmanager.register(_Recorder(Path(path)), "baton-conformance-recorder")


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}
        self.runner: dict[str, Any] | None = None
        self.errors: list[str] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.errors.append(f"{report.nodeid or 'collection'}: {report.longreprtext}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.rpartition("::")[2]
        entry = self.tests.setdefault(name, {"outcome": None, "skip": None, "reason": ""})
        for key, value in report.user_properties:
            if key == "baton_runner" and self.runner is None:
                self.runner = json.loads(str(value))
            elif key == "baton_skip":
                entry["skip"] = json.loads(str(value))
        xfail = getattr(report, "wasxfail", None)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if xfail is not None:
                entry["outcome"] = "xpassed" if report.passed else "xfailed"
                entry["reason"] = xfail
            elif report.skipped:
                entry["outcome"] = "skipped"
                longrepr = report.longrepr
                if isinstance(longrepr, tuple):
                    entry["reason"] = str(longrepr[2]).removeprefix("Skipped: ")
            elif report.failed:
                entry["outcome"] = "failed" if report.when == "call" else "error"
                entry["reason"] = _first_line(report.longreprtext)
            else:
                entry["outcome"] = "passed"
        elif report.when == "teardown" and report.failed:
            entry["outcome"] = "error"
            entry["reason"] = _first_line(report.longreprtext)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        document = {
            "runner": self.runner,
            "tests": self.tests,
            "errors": self.errors,
            "exit_code": int(exitstatus),
        }
        self.path.write_text(json.dumps(document, indent=2))


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("E "):
            return line[1:].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
