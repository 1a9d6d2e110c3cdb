"""The conformance kit for task runners: one base test class that checks a runner
against Baton's semantics, for plugin authors and for Baton's own runners.

Subclass `RunnerConformance` in a test module of your plugin and supply the fixture
that builds your runner:

    import pytest
    from baton.testing import RunnerConformance

    from my_runner import MyRunner


    class TestMyRunner(RunnerConformance):
        conformance_level = 1

        @pytest.fixture
        def runner(self):
            return MyRunner(max_workers=4)

Or check an installed runner from the shell with ``baton conformance NAME``, or from
Python with `check_runner`. The kit needs ``pip install "baton-core[testing]"``
(pytest and hypothesis). It is not a pytest plugin: importing it is what loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from baton.testing._spec import LATEST_LEVEL

if TYPE_CHECKING:
    from baton.testing._check import Report, check_runner
    from baton.testing._kit import RunnerConformance

__all__ = ["LATEST_LEVEL", "Report", "RunnerConformance", "check_runner"]

# Modules holding the kit's assertions: pytest rewrites them, so that a failure shows
# the values compared, provided they are registered before they are imported.
_ASSERTING = (
    "baton.testing._kit",
    "baton.testing._suite_api",
    "baton.testing._suite_failures",
    "baton.testing._suite_futures",
    "baton.testing._suite_limits",
    "baton.testing._suite_resources",
    "baton.testing._suite_runner",
    "baton.testing._suite_workers",
)


def _import_kit() -> Any:
    try:
        import hypothesis  # noqa: F401
        import pytest
    except ImportError as exc:
        raise ImportError(
            f"baton.testing needs pytest and hypothesis ({exc}); install them with: "
            'pip install "baton-core[testing]"'
        ) from exc
    import sys

    pytest.register_assert_rewrite(*(m for m in _ASSERTING if m not in sys.modules))
    from baton.testing import _kit

    return _kit


def __getattr__(name: str) -> Any:
    # The kit loads on first use, so that a worker process importing the kit's tasks
    # (baton.testing._tasks) does not import pytest and hypothesis too.
    if name == "RunnerConformance":
        return _import_kit().RunnerConformance
    if name in ("Report", "check_runner"):
        from baton.testing import _check

        return getattr(_check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
