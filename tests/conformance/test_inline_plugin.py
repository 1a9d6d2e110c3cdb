"""The conformance kit against the example third-party plugin's `inline` runner.

Selected by name when the plugin is installed; otherwise built from its source tree,
which holds the same runner class. test_outside_the_repo.py installs the plugin into a
fresh environment and runs ``baton conformance inline`` there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from baton import TaskRunner, UnknownRunnerError, get_runner
from baton.testing import RunnerConformance

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "baton-inline-runner"


@pytest.fixture(scope="module", autouse=True)
def forget_the_plugin_afterwards() -> Iterator[None]:
    """Other tests check that the plugin's runner module is imported only when selected."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [n for n in sys.modules if n.partition(".")[0] == "baton_inline_runner"]:
        del sys.modules[name]


def inline_runner() -> TaskRunner:
    try:
        return get_runner("inline")
    except UnknownRunnerError:
        pass
    source = str(EXAMPLE / "src")
    if source not in sys.path:
        sys.path.append(source)
    from baton_inline_runner.runner import InlineRunner

    return InlineRunner()


class TestInlinePluginRunner(RunnerConformance):
    conformance_level = 2

    @pytest.fixture
    def runner(self) -> TaskRunner:
        return inline_runner()
