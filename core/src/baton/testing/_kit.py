"""The base test class, its fixtures, and the helper every conformance test receives."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, final

import pytest

from baton import Capability, State, TaskRunner, flow
from baton.testing._rendezvous import WAIT_SECONDS, Rendezvous
from baton.testing._spec import LATEST_LEVEL, Spec, spec_of
from baton.testing._suite_api import SubmitAndMapTests
from baton.testing._suite_failures import FailureTests
from baton.testing._suite_futures import FutureTests
from baton.testing._suite_limits import LimitTests
from baton.testing._suite_resources import ResourceTests
from baton.testing._suite_runner import RunnerTests
from baton.testing._suite_workers import WorkerTests
from baton.testing._tasks import where

__all__ = ["Kit", "RunnerConformance"]

T = TypeVar("T")


@final
class Kit:
    """What a conformance test works with: the runner, started, and helpers around it."""

    def __init__(
        self,
        runner: TaskRunner,
        rendezvous: Rendezvous,
        test: str,
        runner_name: str | None = None,
        resource: tuple[str, float] | None = None,
    ) -> None:
        self.runner = runner
        self.resource = resource
        """A resource of the runner and its whole capacity, from `resource_capacity`."""
        self.rv = rendezvous
        self.test = test
        self.runner_name = runner_name
        """The name or URL that selects the runner in a new Python process, if known."""

    def run(self, body: Callable[[], T], **options: Any) -> T:
        """Call `body` as a flow on the runner and return what it returns (or raise).
        `options` are more options of the flow (``concurrency_limits={...}``)."""

        def wrapped() -> tuple[T]:
            # A flow that returns a State takes it as its own; boxed, it is just a value.
            return (body(),)

        boxed: tuple[T] = flow(name=f"conformance-{self.test}", task_runner=self.runner, **options)(
            wrapped
        )()
        return boxed[0]

    def run_state(self, body: Callable[[], Any], **options: Any) -> State:
        """Call `body` as a flow on the runner and return the flow run's final State."""
        state: State = flow(name=f"conformance-{self.test}", task_runner=self.runner, **options)(
            body
        )(return_state=True)
        return state

    def run_async(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run the async `body` as an async flow on the runner, in a new event loop."""
        import asyncio

        async_flow = flow(name=f"conformance-{self.test}", task_runner=self.runner)(body)
        result: T = asyncio.run(async_flow())  # type: ignore[arg-type]
        return result

    def runs_inline(self) -> bool:
        """True if the runner executed a submitted run inside `submit`, in the submitting
        thread: then no two of its runs are ever in flight at once."""

        def probe() -> tuple[bool, tuple[int, int], tuple[int, int]]:
            future = where.submit()
            finished_in_submit = future.done()
            return finished_in_submit, future.result(), (os.getpid(), threading.get_ident())

        finished_in_submit, ran_at, here = self.run(probe)
        return finished_in_submit and ran_at == here

    def expect_work_stopped(self, tag: str, how: str) -> None:
        """After `release-<tag>`, check that the `stoppable` run `tag` did not carry on:
        its worker is gone, or an exception interrupted it; fail if it finished."""
        rv = self.rv
        rv.signal(f"release-{tag}")
        if not rv.is_set(f"started-{tag}"):
            pytest.fail(
                f"the run {tag!r} ended before it started, so the kit cannot check that the "
                "runner stops a run's work: this runner takes longer than the kit allows to "
                "start a run",
                pytrace=False,
            )
        pid, ident = (int(part) for part in rv.read(f"started-{tag}").split())
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if rv.is_set(f"finished-{tag}"):
                pytest.fail(
                    f"rule: {how}, the runner must stop the run's work; but the run went on and "
                    "finished once released, so its work was never stopped",
                    pytrace=False,
                )
            if rv.is_set(f"interrupted-{tag}") or not _alive(pid, ident):
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"rule: {how}, the runner must stop the run's work; {WAIT_SECONDS:g} s "
                    "after release its worker was still alive and the run had neither "
                    "finished nor been interrupted",
                    pytrace=False,
                )
            time.sleep(0.01)


def _alive(pid: int, ident: int) -> bool:
    if pid == os.getpid():
        return any(t.ident == ident for t in threading.enumerate())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # A zombie is dead: it only waits to be reaped.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunnerConformance(
    SubmitAndMapTests,
    FutureTests,
    FailureTests,
    RunnerTests,
    WorkerTests,
    LimitTests,
    ResourceTests,
):
    """The conformance tests of a task runner: subclass it and supply a `runner` fixture.

    The fixture returns a new, unstarted runner, built the way its users build it,
    with at least two workers (several tests need two runs in flight at once). The
    kit starts it, runs flows on it, and shuts it down, once per test::

        # tests/test_conformance.py of a plugin
        import pytest
        from baton.testing import RunnerConformance

        from my_runner import MyRunner


        class TestMyRunner(RunnerConformance):
            conformance_level = 1
            known_failures = {
                "test_ten_thousand_runs_of_a_map_complete": "too slow on the CI cluster",
            }

            @pytest.fixture
            def runner(self):
                return MyRunner(max_workers=4)

            @pytest.fixture
            def runner_name(self):
                return "my-runner"  # optional: how a new process selects it

    Then ``pytest tests/test_conformance.py``. Class attributes:

    - `conformance_level`: the kit level the runner is checked against (default 1).
      Every test belongs to a level; tests added by a later release of the kit get a
      new level, so they run only once the plugin raises this number. Tests above
      it are skipped with a reason that says so.
    - `known_failures`: test name -> reason. Those tests are expected to fail
      (non-strict xfail): a failure is reported as ``xfailed``, a pass as
      ``xpassed``, and neither fails the suite. A name that is not a test of the kit
      is an error.

    Tests that run a script in a new Python process select the runner there by the
    name or URL the `runner_name` fixture returns (as ``BATON_TASK_RUNNER`` takes
    it); it returns None by default, and those tests are then skipped, saying so.

    Tests of priorities and resources (capabilities `priorities`, `resources`) need a
    resource of which the runner, as the `runner` fixture builds it, has a known
    capacity in all: return it from a `resource_capacity` fixture, such as
    ``{"slot": 1}`` for ``MyRunner(resources={"slot": 1})``; without it they are
    skipped, saying so.

    Tests of a capability the runner does not declare (`TaskRunner.capabilities`)
    are skipped with a reason that names the runner and the capability. Tests that
    need two runs in flight at once are skipped for runners that execute each run
    inside `submit` (as the `sync` runner does). Runs meet through marker files
    in a temporary directory, so the runner's workers must run on this machine.

    The kit uses no fixtures but its own (and pytest's `request`), does not sleep
    to prove anything, and runs from any project with ``baton-core[testing]``
    installed.
    """

    conformance_level: ClassVar[int] = 1
    known_failures: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        level = cls.conformance_level
        if isinstance(level, bool) or not isinstance(level, int) or not level >= 1:
            raise TypeError(
                f"{cls.__name__}.conformance_level must be a whole number from 1 to "
                f"{LATEST_LEVEL}, got {level!r}"
            )
        if level > LATEST_LEVEL:
            raise TypeError(
                f"{cls.__name__}.conformance_level is {level}, but this version of "
                f"baton.testing only has levels up to {LATEST_LEVEL}: upgrade baton-core, "
                f"or set conformance_level = {LATEST_LEVEL}"
            )
        known = cls.known_failures
        if not isinstance(known, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in known.items()
        ):
            raise TypeError(
                f"{cls.__name__}.known_failures must map test names to reasons, such as "
                f"{{'test_name': 'why it fails'}}; got {known!r}"
            )
        tests = conformance_tests()
        unknown = sorted(set(known) - set(tests))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.known_failures names {', '.join(map(repr, unknown))}, which "
                "is not a test of the conformance kit. Check the spelling against the test "
                "names pytest reports."
            )

    @pytest.fixture
    def runner(self) -> TaskRunner:
        """Override: return a new, unstarted runner (see the class docstring)."""
        pytest.fail(
            f"{type(self).__name__} must define the fixture that builds the runner under "
            "test:\n\n    @pytest.fixture\n    def runner(self):\n        return MyRunner()\n",
            pytrace=False,
        )

    @pytest.fixture
    def runner_name(self) -> str | None:
        """Override: the name or URL that selects the runner under test in a new Python
        process (``BATON_TASK_RUNNER=NAME``), or None when it cannot be selected that
        way (the default). ``baton conformance NAME`` sets it to NAME."""
        return None

    @pytest.fixture
    def resource_capacity(self) -> Mapping[str, float] | None:
        """Override: one resource and the capacity the runner has of it in all (such as
        ``{"slot": 1}``), for the tests of priorities and resources; None (the default)
        skips them."""
        return None

    @pytest.fixture
    def kit(
        self,
        request: pytest.FixtureRequest,
        runner: TaskRunner,
        runner_name: str | None,
        resource_capacity: Mapping[str, float] | None,
    ) -> Iterator[Kit]:
        """The runner under test, started (unless the test manages it), and helpers."""
        test = request.function
        spec = spec_of(test)
        if spec is None:
            pytest.fail(f"{test.__name__} is not a conformance test of the kit", pytrace=False)
        _check_fixture(runner, type(self).__name__)
        label = runner.name or type(runner).__name__
        request.node.user_properties.append(
            (
                "baton_runner",
                json.dumps(
                    {
                        "name": label,
                        "class": f"{type(runner).__module__}.{type(runner).__qualname__}",
                        "capabilities": sorted(str(c) for c in runner.capabilities),
                        "level": type(self).conformance_level,
                    }
                ),
            )
        )
        _skip_unless_applicable(request, spec, runner, label, type(self), runner_name)
        resource = _kit_resource(request, spec, resource_capacity, type(self).__name__)
        directory = tempfile.mkdtemp(prefix="baton-conformance-")
        kit = Kit(runner, Rendezvous(directory), test.__name__, runner_name, resource)
        try:
            if not spec.manages_runner:
                runner.start()
                if spec.concurrent and kit.runs_inline():
                    needs = (
                        spec.concurrent
                        if isinstance(spec.concurrent, str)
                        else "this test needs two at once"
                    )
                    _skip(
                        request,
                        "inline",
                        f"runner {label!r} ran a submitted run inside submit(), in the "
                        f"submitting thread, so no two of its runs are ever in flight at once; "
                        f"{needs}",
                    )
            yield kit
        finally:
            kit.rv.abort()  # runs still waiting on markers give up now
            runner.shutdown(wait=True)
            shutil.rmtree(directory, ignore_errors=True)


def _kit_resource(
    request: pytest.FixtureRequest,
    spec: Spec,
    capacity: Mapping[str, float] | None,
    owner: str,
) -> tuple[str, float] | None:
    if Capability.RESOURCES not in spec.requires:
        return None
    if capacity is None:
        _skip(
            request,
            "resource",
            f"this test needs a resource of known capacity, and {owner} does not name one: "
            "override its `resource_capacity` fixture to return one, such as {'slot': 1} for "
            "a runner built with resources={'slot': 1}",
        )
    items = list(capacity.items()) if isinstance(capacity, Mapping) else []
    if len(items) != 1 or not isinstance(items[0][1], (int, float)) or items[0][1] <= 0:
        pytest.fail(
            f"the resource_capacity fixture of {owner} must return one resource and its "
            f"capacity, such as {{'slot': 1}}; got {capacity!r}",
            pytrace=False,
        )
    return items[0][0], float(items[0][1])


def _check_fixture(runner: object, owner: str) -> None:
    if not isinstance(runner, TaskRunner):
        pytest.fail(
            f"the runner fixture of {owner} returned {runner!r}, which is not a "
            "baton.TaskRunner: return an instance of the runner under test",
            pytrace=False,
        )
    if runner.started or runner.closed:
        state = "started" if runner.started else "shut down"
        pytest.fail(
            f"the runner fixture of {owner} returned a runner that is already {state}: "
            "return a new, unstarted one (the kit starts and shuts it down itself)",
            pytrace=False,
        )


def _skip(request: pytest.FixtureRequest, kind: str, reason: str, detail: str = "") -> None:
    request.node.user_properties.append(("baton_skip", json.dumps([kind, detail or reason])))
    pytest.skip(reason)


def _skip_unless_applicable(
    request: pytest.FixtureRequest,
    spec: Spec,
    runner: TaskRunner,
    label: str,
    cls: type[RunnerConformance],
    runner_name: str | None,
) -> None:
    name = request.function.__name__
    if spec.level > cls.conformance_level:
        _skip(
            request,
            "level",
            f"added at conformance level {spec.level}; set conformance_level = {spec.level} "
            f"on {cls.__name__} to run it",
            str(spec.level),
        )
    declared = frozenset(runner.capabilities)
    for capability in sorted(spec.requires - declared, key=str):
        _skip(
            request,
            "capability",
            f"runner {label!r} does not declare capability {str(capability)!r}",
            str(capability),
        )
    for capability, why in spec.excludes.items():
        if capability in declared:
            _skip(
                request,
                "excluded",
                f"runner {label!r} declares capability {str(capability)!r}: {why}",
                str(capability),
            )
    if spec.by_name and not runner_name:
        _skip(
            request,
            "by-name",
            f"this test selects the runner by name in a new Python process, and {cls.__name__} "
            f"does not say by which name runner {label!r} is selected there: override its "
            "`runner_name` fixture to return the name or URL (as BATON_TASK_RUNNER takes it)",
        )
    reason = cls.known_failures.get(name)
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=False))


def conformance_tests() -> dict[str, Spec]:
    """Every test of the kit, by name, with what it needs."""
    found: dict[str, Spec] = {}
    for klass in reversed(RunnerConformance.__mro__):
        for attr, value in vars(klass).items():
            spec = spec_of(value)
            if attr.startswith("test_") and spec is not None:
                found[attr] = spec
    return found
