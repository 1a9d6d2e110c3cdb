"""Flows: the `@flow` decorator, flow runs and their final states."""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from typing_extensions import ParamSpec

from baton._errors import FlowRunFailed
from baton._futures import Future, wait
from baton._interrupts import redeliver_swallowed_interrupts
from baton._resolve import resolve
from baton._scope import RunScope, flow_ended, flow_started
from baton._states import State

if TYPE_CHECKING:
    from baton._options import FlowOptions
    from baton._runner import TaskRunner

__all__ = ["Flow", "FlowRun", "flow"]

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("baton")
_ids = itertools.count(1)


class FlowRun:
    """One call of a flow: its name, parameters, runner and, at the end, its state."""

    def __init__(
        self, flow: Flow[..., Any], parameters: dict[str, Any], task_runner: TaskRunner
    ) -> None:
        from baton._names import flow_run_name

        self.id = next(_ids)
        self.flow = flow
        self.parameters = parameters
        self.task_runner = task_runner
        self.name = flow.run_name_for(parameters) or flow_run_name()
        self.state = State.pending()
        self.start_time = time.time()
        self.end_time: float | None = None
        self.scope: RunScope

    def __repr__(self) -> str:
        return f"<FlowRun {self.name!r} of {self.flow.name!r} {self.state!r}>"


class Flow(Generic[P, R]):
    """A function whose task runs are submitted to one task runner and awaited together.

    Calling a flow runs it: it starts its task runner, calls the function, waits
    for every task run submitted inside it, shuts the runner down, and returns the
    function's return value (with returned futures resolved) or raises.
    `return_state=True` returns the final `State` instead.
    """

    def __init__(self, fn: Callable[P, R], options: FlowOptions) -> None:
        if not callable(fn):
            raise TypeError(f"@flow needs a function, got {fn!r}")
        if isinstance(options.task_runner, str):
            from baton._plugins import check_task_runner

            check_task_runner(options.task_runner)  # a misspelled name fails here, not at run
        self.fn = fn
        self.options = options
        self.name: str = options.name or getattr(fn, "__name__", "flow").replace("_", "-")
        self.is_async = inspect.iscoroutinefunction(fn)
        self.task_runner = options.task_runner
        self._signature = inspect.signature(fn)
        from baton._task import check_reserved_parameters

        check_reserved_parameters(self._signature, f"flow {self.name!r}")
        functools.update_wrapper(self, fn)

    def with_options(self, **changes: Any) -> Flow[P, R]:
        """A copy of this flow with some options changed, for example another runner."""
        from baton._options import FlowOptions, validate_options

        values = self.options.model_dump(exclude_unset=True)
        values.update(changes)
        return Flow(self.fn, validate_options(FlowOptions, f"flow {self.name!r}", values))

    def run_name_for(self, parameters: dict[str, Any]) -> str | None:
        template = self.options.flow_run_name
        if template is None:
            return None
        try:
            if isinstance(template, str):
                return template.format(**parameters)
            from baton._options import callable_arity

            return str(template() if callable_arity(template) == 0 else template(parameters))
        except Exception as exc:
            logger.warning(
                "flow_run_name of flow %r failed (%s); using a generated name", self.name, exc
            )
            return None

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return_state = bool(kwargs.pop("return_state", False))
        from baton._task import _wait_for_tuple

        wait_for = _wait_for_tuple(kwargs.pop("wait_for", None))
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        bound.apply_defaults()
        parameters = dict(bound.arguments)
        if self.is_async:
            return self._run_async(args, kwargs, parameters, return_state, wait_for)
        return self._run_sync(args, kwargs, parameters, return_state, wait_for)

    # -- running ------------------------------------------------------------------

    def _begin(self, parameters: dict[str, Any]) -> tuple[FlowRun, RunScope, bool, Any]:
        from baton import _logging
        from baton._plugins import make_observer, plugin_manager, resolve_task_runner
        from baton._settings import get_settings

        settings = get_settings()
        _logging.configure(settings.log_level)
        if settings.opentelemetry:
            from baton._otel import require

            require()  # before anything starts: a missing package is a setup error
        runner, owned = resolve_task_runner(self.task_runner)
        flow_run = FlowRun(self, parameters, runner)
        pm = plugin_manager()
        scope = RunScope(runner, f"flow run {flow_run.name!r}", make_observer(pm))
        flow_run.scope = scope
        _set_limits(scope, self.options, settings)
        flow_run.state = State.running()
        _call_hook(pm.hook.flow_run_started, flow_run=flow_run)
        if owned:
            runner._flow_run_owned = True
            runner.start()
        if settings.opentelemetry:
            from baton._otel import start_flow

            # Current in this context from here on; `_finish` ends it.
            scope.trace = start_flow(self.name, flow_run.name, runner.name)
        return flow_run, scope, owned, pm

    def _finish(
        self,
        flow_run: FlowRun,
        scope: RunScope,
        owned: bool,
        pm: Any,
        state: State,
        interrupted: bool,
    ) -> None:
        try:
            if owned:
                scope.runner.shutdown(wait=not interrupted)
        finally:
            if scope.owns_limiter:
                _close_limits(scope)
            flow_run.state = state
            flow_run.end_time = time.time()
            hooks = self.options.on_completion if state.is_completed() else self.options.on_failure
            for hook in hooks:
                try:
                    hook(self, flow_run, state)
                except Exception:
                    logger.exception(
                        "Hook %r of flow run %r raised; the run's state stays %r",
                        getattr(hook, "__name__", hook),
                        flow_run.name,
                        state,
                    )
            _call_hook(pm.hook.flow_run_finished, flow_run=flow_run, state=state)
            if scope.trace is not None:
                from baton._otel import end_flow

                end_flow(scope.trace, state)

    def _settle(self, scope: RunScope, value: Any) -> State:
        """The final state of a flow whose function returned `value`."""
        from baton._map import LazyMap

        try:
            if isinstance(value, LazyMap):
                # A returned lazy map stands for all its runs: take them before the
                # flow drains (and drops) what nobody consumed.
                value = list(value)
            scope.drain_lazy_maps()
        except Exception as exc:  # a lazy map's input raised or ran out unevenly
            return self._failed(scope, exc)
        if isinstance(value, State):
            scope.wait_all()
            if not value.is_final():
                return State.failed(
                    TypeError(
                        f"The flow returned the non-final state {value!r}; return a final "
                        "state (State.completed(...), State.failed(...)) or a plain value."
                    )
                )
            # A returned Completed state does not hide an unhandled failure.
            return (self._unhandled(scope) or value) if value.is_completed() else value
        try:
            value = resolve(value, _returned_result, keep_quotes=True)
        except Exception as exc:
            scope.wait_all()
            return State.failed(exc, f"The flow returned a task run that failed: {exc}")
        scope.wait_all()
        return self._unhandled(scope) or State.completed(value)

    @staticmethod
    def _unhandled(scope: RunScope) -> State | None:
        """The failed state of a flow whose task runs failed unhandled, if any did."""
        unhandled = scope.unobserved_failures()
        if not unhandled:
            return None
        error = FlowRunFailed(
            f"{len(unhandled)} task run(s) failed and nothing in the flow handled them: "
            f"{scope.name_runs(unhandled)}. Call .result(), read .state or use wait() on "
            "a future to handle its failure in the flow."
        )
        error.__cause__ = unhandled[0]._state.error
        return State.failed(error)

    def _failed(self, scope: RunScope, exc: Exception) -> State:
        """The flow's function raised: cancel what has not started, let the rest end."""
        scope.cancel_pending()
        scope.wait_all()
        return State.failed(exc)

    def _interrupted(self, flow_run: FlowRun, scope: RunScope, exc: BaseException) -> State:
        cancelled = scope.cancel_pending()
        state = State.crashed(
            exc,
            f"Flow run {flow_run.name!r} was interrupted by {type(exc).__name__}; "
            f"{cancelled} task run(s) that had not started were cancelled.",
        )
        logger.error("Flow run %r - %s", flow_run.name, state.message)
        return state

    def _run_sync(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parameters: dict[str, Any],
        return_state: bool,
        wait_for: tuple[Any, ...] = (),
    ) -> Any:
        if wait_for:
            wait(_futures_in(wait_for))
        flow_run, scope, owned, pm = self._begin(parameters)
        flow_started(scope)  # before entering it: records the scope it starts in
        token = scope.enter()
        try:
            with redeliver_swallowed_interrupts():
                try:
                    not_ready = _upstream_failed(flow_run, wait_for)
                    if not_ready is not None:
                        raise _NotReady(not_ready)
                    value = self.fn(*args, **kwargs)
                except _NotReady as upstream:
                    state = upstream.state
                except Exception as exc:
                    state = self._failed(scope, exc)
                else:
                    state = self._settle(scope, value)
        except BaseException as exc:  # Ctrl-C or SystemExit, also while waiting at the end
            self._finish(flow_run, scope, owned, pm, self._interrupted(flow_run, scope, exc), True)
            raise
        finally:
            flow_ended(scope)
            scope.exit(token)
        self._finish(flow_run, scope, owned, pm, state, False)
        return state if return_state else state.result()

    async def _run_async(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parameters: dict[str, Any],
        return_state: bool,
        wait_for: tuple[Any, ...] = (),
    ) -> Any:
        import asyncio

        for upstream in _futures_in(wait_for):
            if not upstream.done():
                try:
                    await upstream
                except Exception:
                    pass  # its state decides below
        flow_run, scope, owned, pm = self._begin(parameters)
        flow_started(scope)  # before entering it: records the scope it starts in
        token = scope.enter()
        loop = asyncio.get_running_loop()
        try:
            try:
                not_ready = _upstream_failed(flow_run, wait_for)
                if not_ready is not None:
                    raise _NotReady(not_ready)
                value = await self.fn(*args, **kwargs)  # type: ignore[misc]
            except _NotReady as upstream:
                state = upstream.state
            except Exception as exc:
                state = await loop.run_in_executor(None, self._failed, scope, exc)
            else:
                state = await loop.run_in_executor(None, self._settle, scope, value)
        except BaseException as exc:  # also asyncio.CancelledError of the awaiting task
            self._finish(flow_run, scope, owned, pm, self._interrupted(flow_run, scope, exc), True)
            raise
        finally:
            flow_ended(scope)
            scope.exit(token)
        self._finish(flow_run, scope, owned, pm, state, False)
        return state if return_state else state.result()

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}>"


class _NotReady(Exception):
    def __init__(self, state: State) -> None:
        self.state = state


def _futures_in(wait_for: tuple[Any, ...]) -> list[Future[Any]]:
    from baton._resolve import collect_futures

    found: list[Future[Any]] = []
    collect_futures(wait_for, found)
    return found


def _upstream_failed(flow_run: FlowRun, wait_for: tuple[Any, ...]) -> State | None:
    """The `UpstreamFailed` state of a flow run whose `wait_for` did not all complete
    (as for a task run, `allow_failure(f)` lets it run anyway), else None."""
    if not wait_for:
        return None
    from baton._errors import UpstreamTaskError

    failed: list[Future[Any]] = []

    def check(future: Future[Any], allowed: bool) -> None:
        if not future._state.is_completed():
            future._mark_observed()  # reported through this flow run
            if not allowed:
                failed.append(future)

    resolve(wait_for, check)
    if not failed:
        return None
    upstream = failed[0]
    message = (
        f"Flow run {flow_run.name!r} did not run: upstream task run {upstream.name!r} "
        f"ended in state {upstream._state!r}."
    )
    error = UpstreamTaskError(message)
    error.__cause__ = upstream._state.error
    return State.failed(error, message, name="UpstreamFailed")


def _set_limits(scope: RunScope, options: FlowOptions, settings: Any) -> None:
    """Give the flow run's scope its limiter: its own if the flow declares limits; else
    (a subflow) the one of the flow run it runs in; else one from the settings."""
    own = options.concurrency_limits or options.rate_limits
    if not own:
        from baton._context import current_scope_var as _current_scope

        parent = _current_scope.get()
        if parent is not None and parent.limiter is not None:
            scope.set_limiter(parent.limiter)
            return
    if own or settings.concurrency_limits or settings.rate_limits:
        from baton._limits import limits_of_flow

        limiter = limits_of_flow(options.concurrency_limits, options.rate_limits)
        scope.set_limiter(limiter)
        scope.owns_limiter = limiter is not None


def _close_limits(scope: RunScope) -> None:
    close = getattr(scope.limiter, "close", None)
    if close is not None:
        close()


def _returned_result(future: Future[Any], allowed: bool) -> Any:
    return future.result(raise_on_failure=not allowed)


def _call_hook(hook: Any, **kwargs: Any) -> None:
    try:
        hook(**kwargs)
    except Exception:
        logger.exception("A %s hook raised", hook.name)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    flow_run_name: str | Callable[..., str] | None = None,
    description: str | None = None,
    task_runner: str | TaskRunner | type[TaskRunner] | None = None,
    on_completion: Iterable[Callable[..., Any]] | Callable[..., Any] = (),
    on_failure: Iterable[Callable[..., Any]] | Callable[..., Any] = (),
    concurrency_limits: Mapping[str, int] | None = None,
    rate_limits: Mapping[str, str] | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Make a function a flow, bare (`@flow`) or with options.

    `task_runner` picks where its tasks run: a name (``"thread"``, ``"process"``,
    ``"dask"``), a URL (``"dask://127.0.0.1:8786"``), or a `TaskRunner` instance.
    Unset, the ``BATON_TASK_RUNNER`` setting decides (default ``"thread"``).
    `on_completion` / `on_failure` hooks are called as `hook(flow, flow_run, state)`
    once the flow run is final (a hook that raises is logged).
    `concurrency_limits` (``{"db": 2}``: at most 2 runs tagged ``db`` running at once)
    and `rate_limits` (``{"api": "10/s"}``, for `baton.rate_limit`) bound what the
    flow run's tasks do, on every runner (see the Limits page of the docs).

    >>> from baton import flow, task
    >>> @task
    ... def double(x):
    ...     return 2 * x
    >>> @flow(task_runner="thread")
    ... def doubles(xs):
    ...     return double.map(xs).result()
    >>> doubles([1, 2, 3])
    [2, 4, 6]
    """
    from baton._options import FlowOptions, validate_options

    if fn is not None:
        if options:
            raise TypeError("Use @flow or @flow(option=...), not both.")
        return Flow(fn, FlowOptions())
    runner = options.get("task_runner")
    if runner is not None and not isinstance(runner, str):
        from baton._runner import TaskRunner

        if not isinstance(runner, TaskRunner) and not (
            isinstance(runner, type) and issubclass(runner, TaskRunner)
        ):
            from baton._errors import InvalidOptionsError

            raise InvalidOptionsError(
                "Invalid options for a flow:\n  task_runner: must be a runner name such as "
                "'thread', a URL such as 'dask://127.0.0.1:8786', or a TaskRunner instance "
                f"(got {runner!r})"
            )
    owner = f"flow {options['name']!r}" if isinstance(options.get("name"), str) else "a flow"
    validated = validate_options(FlowOptions, owner, options)

    def decorate(function: Callable[P, R]) -> Flow[P, R]:
        return Flow(function, validated)

    return decorate
