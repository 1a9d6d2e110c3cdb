"""Tasks: the `@task` decorator and the `Task` object it makes."""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import re
import string
import sys
import types
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from typing_extensions import ParamSpec

from baton._errors import InvalidOptionsError
from baton._futures import Future, FutureList
from baton._resolve import _ATOMIC, collect_futures
from baton._scope import current_scope
from baton._states import State, StateType
from baton._tags import tagged
from baton._taskrun import TaskRun

if TYPE_CHECKING:
    from baton._map import LazyMap
    from baton._options import TaskOptions
    from baton._scope import RunScope

__all__ = ["Task", "task"]

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("baton")

_FIELD_ROOT = re.compile(r"[.\[]")


NAME_HASH = 2654435761
"""Spreads run ids over the three hex digits of default run names."""


def default_run_name(task_name: str, run_id: int) -> str:
    """The name of run `run_id` of a task without `task_run_name`: ``<task>-<3 hex>``."""
    return f"{task_name}-{(run_id * NAME_HASH) & 0xFFF:03x}"


class Task(Generic[P, R]):
    """A function that Baton can run as tracked, retried, concurrent task runs.

    Call it to run it now and get its result; `.submit(...)` to run it on the
    flow's task runner and get a `Future`; `.map(...)` to run it once per item.
    """

    def __init__(self, fn: Callable[P, R], options: TaskOptions) -> None:
        # `@task` over `@classmethod` / `@staticmethod`: bind like the method it wraps.
        original: Any = fn
        self._original = original
        self._binding = ""
        if isinstance(original, (classmethod, staticmethod)):
            self._binding = "class" if isinstance(original, classmethod) else "static"
            fn = cast("Callable[P, R]", original.__func__)
        if not callable(fn):
            raise TypeError(f"@task needs a function, got {fn!r}")
        fn = _collecting_generator(fn)
        self.fn = fn
        self.options = options
        self.name: str = options.name or str(getattr(fn, "__name__", type(fn).__name__))
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = inspect.signature(fn)
        check_reserved_parameters(self._signature, f"task {self.name!r}")
        # `priority=` of `.submit`/`.map` is the run's, unless the function takes it.
        own = self._signature.parameters.get("priority")
        self._priority_option = own is None or own.kind is own.VAR_KEYWORD
        self._fast_arity = _fast_arity(self._signature)
        self._check_run_name()
        functools.update_wrapper(self, fn)

    # -- options ------------------------------------------------------------------

    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task with some options changed (validated like the decorator's).

        >>> from baton import task
        >>> @task(retries=1)
        ... def fetch(url): ...
        >>> fetch.with_options(retries=5, tags={"net"}).options.retries
        5
        """
        from baton._options import TaskOptions, validate_options

        values = self.options.model_dump(exclude_unset=True)
        values.update(changes)
        options = validate_options(TaskOptions, f"task {self.name!r}", values)
        return Task(self._original, options)

    def _check_run_name(self) -> None:
        template = self.options.task_run_name
        if not isinstance(template, str):
            return
        params = self._signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise InvalidOptionsError(
                f"Invalid options for task {self.name!r}:\n  task_run_name: {exc} "
                f"(got {template!r})"
            ) from None
        for field in fields:
            root = _FIELD_ROOT.split(field, maxsplit=1)[0]
            if not root or root.isdigit():
                raise InvalidOptionsError(
                    f"Invalid options for task {self.name!r}:\n  task_run_name: use parameter "
                    f"names in braces, such as {{{next(iter(params), 'x')}}} (got {template!r})"
                )
            if root not in params and not takes_any:
                raise InvalidOptionsError(
                    f"Invalid options for task {self.name!r}:\n  task_run_name: {{{root}}} is "
                    f"not a parameter of {self.name}() (parameters: {', '.join(params)})"
                )

    # -- arguments ----------------------------------------------------------------

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise `TypeError` here and now if the arguments do not fit the function."""
        low_high = self._fast_arity
        if low_high is not None and not kwargs and low_high[0] <= len(args) <= low_high[1]:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None

    def parameters_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments of a call by parameter name, defaults included."""
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def run_name_for(self, run: TaskRun) -> str:
        template = self.options.task_run_name
        if template is not None:
            try:
                if isinstance(template, str):
                    fields = run.parameters
                    for param in self._signature.parameters.values():
                        # `{x}` may name a keyword caught by **kwargs (as the check allows)
                        if param.kind is param.VAR_KEYWORD:
                            fields = {**fields.pop(param.name, {}), **fields}
                    return template.format(**fields)
                from baton._options import callable_arity

                if callable_arity(template) == 0:
                    return str(template())
                return str(template(run.parameters))
            except Exception as exc:
                logger.warning(
                    "task_run_name of task %r failed (%s: %s); using the default name",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
        return default_run_name(self.name, run.id)

    # -- running ------------------------------------------------------------------

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task now, in this thread, and return its result (raising on failure).

        `return_state=True` returns the final `State` instead; `wait_for=[...]` waits
        for other runs first. An async task returns a coroutine to await.
        """
        return_state = bool(kwargs.pop("return_state", False))
        wait_for = _wait_for_tuple(kwargs.pop("wait_for", None))
        self.check_arguments(args, kwargs)
        run, upstreams = self._new_run(args, kwargs, wait_for)
        if self.is_async:
            return self._call_async(run, upstreams, return_state)
        future = run.scope.run_inline(run, upstreams)
        return future.state if return_state else _direct_result(future)

    async def _call_async(
        self, run: TaskRun, upstreams: list[Future[Any]], return_state: bool
    ) -> Any:
        for upstream in upstreams:
            if not upstream.done():
                try:
                    await upstream
                except BaseException:
                    pass
        future = run.scope.run_inline(run, [], execute=False)
        if future._state.is_pending():
            await run.execute_async()
        return future.state if return_state else _direct_result(future)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run the task on the current flow's task runner; returns a `Future` at once.

        Futures among the arguments (also inside lists, dicts, dataclasses…) make
        this run wait for them and receive their results. `wait_for=[future, …]`
        adds dependencies that pass no data.
        """
        wait_for = _wait_for_tuple(kwargs.pop("wait_for", None))
        priority = None
        if kwargs and self._priority_option and "priority" in kwargs:
            priority = _call_priority(self, kwargs.pop("priority"), "submit")
        self.check_arguments(args, kwargs)
        run, upstreams = self._new_run(args, kwargs, wait_for)
        if priority is not None:
            run.priority = priority
        return run.scope.submit(run, upstreams)

    def _new_run(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: tuple[Any, ...]
    ) -> tuple[TaskRun, list[Future[Any]]]:
        upstreams: list[Future[Any]] = []
        # A State among the arguments (a `return_state=True` result) stands for its
        # run: it becomes a future settled in that state.
        for index, value in enumerate(args):
            if type(value) not in _ATOMIC:
                found = collect_futures(value, upstreams, 0, _state_as_future)
                if found is not value:
                    args = (*args[:index], found, *args[index + 1 :])
        for name, value in kwargs.items():
            if type(value) not in _ATOMIC:
                found = collect_futures(value, upstreams, 0, _state_as_future)
                if found is not value:
                    kwargs[name] = found
        if wait_for:
            collect_futures(wait_for, upstreams)
        return TaskRun(tagged(self), args, kwargs, current_scope(), wait_for), upstreams

    def map(self, *args: Any, **kwargs: Any) -> FutureList[R] | LazyMap[R]:
        """Submit one run per item of the iterable arguments; non-iterables, strings,
        bytes and `unmapped(...)` values go to every run as they are.

        Over sized iterables (lists, tuples, ranges…) this returns a `FutureList`.
        Over a lazy iterable (a generator), or with `max_in_flight=N`, it returns a
        `LazyMap` that keeps at most N runs unfinished at once and submits the rest
        as you iterate it (or when the flow ends).
        """
        from baton._map import map_task

        wait_for = _wait_for_tuple(kwargs.pop("wait_for", None))
        max_in_flight = kwargs.pop("max_in_flight", None)
        mapped: Task[P, R] = self
        if self._priority_option and "priority" in kwargs:
            priority = _call_priority(self, kwargs.pop("priority"), "map")
            if priority != self.options.priority:
                mapped = self.with_options(priority=priority)
        return map_task(mapped, args, kwargs, wait_for, max_in_flight)

    # -- plumbing -----------------------------------------------------------------

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # A task in a class binds like the function it wraps, and the bound task is a
        # task too: `obj.method.submit(...)` and `.map(...)` work.
        if self._binding == "static":
            return self
        if self._binding == "class":
            target: object = owner if owner is not None else type(instance)
        elif instance is None:
            return self
        else:
            target = instance
        return Task(types.MethodType(self.fn, target), self.options)

    def __reduce__(self) -> tuple[Any, ...]:
        # A task defined at module level travels by reference (its module and name),
        # like a function; any other (a closure, one made in __main__ under a
        # process pool) travels by value, with its function pickled by cloudpickle.
        module = getattr(self, "__module__", None)
        qualname = getattr(self, "__qualname__", None)
        if module and qualname and module != "__main__" and "<" not in qualname:
            try:
                found: Any = sys.modules[module]
                for part in qualname.split("."):
                    found = getattr(found, part)
            except (KeyError, AttributeError):
                found = None
            if found is self:
                return (_task_by_reference, (module, qualname))
        # Pickled here with cloudpickle, whatever pickler asked: a function of __main__
        # must travel by value, and the standard pickler would send it by reference.
        from baton._travel import cloudpickle_dumps

        return (_task_by_value, (cloudpickle_dumps((self._original, self.options)),))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_signature", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._signature = inspect.signature(self.fn)

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"


_state_argument_ids = itertools.count(-1, -1)


class _StateArgument:
    """The run behind a `State` passed as an argument: it ended before this call."""

    __slots__ = ("id", "name", "scope")

    def __init__(self, scope: RunScope) -> None:
        self.id = next(_state_argument_ids)  # never the id of a real run
        self.name = "state-argument"
        self.scope = scope


def _state_as_future(state: State) -> Future[Any]:
    """A future already final in `state`, so the run receives the state's result (or,
    if it did not complete, ends UpstreamFailed) like for any upstream future."""
    if not state.is_final():
        raise TypeError(
            f"A task received the non-final state {state!r} as an argument; pass a final "
            "state (from return_state=True), or the future itself to wait for its run."
        )
    future: Future[Any] = Future(_StateArgument(current_scope()))  # type: ignore[arg-type]
    future._state = state
    return future


def _collecting_generator(fn: Callable[P, R]) -> Callable[P, R]:
    """A generator function (sync or async) as a function whose result is the list of
    what it yields, so that its body runs inside the run, as in Prefect 3."""
    if inspect.isgeneratorfunction(fn):
        generator = cast("Callable[..., Iterable[Any]]", fn)

        @functools.wraps(fn)
        def collect(*args: Any, **kwargs: Any) -> Any:
            return list(generator(*args, **kwargs))

        return collect
    if inspect.isasyncgenfunction(fn):
        agenerator = cast("Callable[..., AsyncIterable[Any]]", fn)

        @functools.wraps(fn)
        async def collect_async(*args: Any, **kwargs: Any) -> Any:
            return [item async for item in agenerator(*args, **kwargs)]

        return cast("Callable[P, R]", collect_async)
    return fn


RESERVED_PARAMETERS = ("wait_for", "return_state")


def check_reserved_parameters(signature: inspect.Signature, owner: str) -> None:
    """Reject a function whose parameters take a name that calls reserve for Baton."""
    for name in RESERVED_PARAMETERS:
        param = signature.parameters.get(name)
        if param is not None and param.kind is not param.VAR_KEYWORD:
            raise InvalidOptionsError(
                f"Invalid function for {owner}: its parameter {name!r} could never be "
                f"passed, because {name}= is an option of every call (as are "
                f"{', '.join(RESERVED_PARAMETERS)}). Rename the parameter."
            )


def _direct_result(future: Future[Any]) -> Any:
    """The result of a direct call. A KeyboardInterrupt or SystemExit that ended the run
    was raised in the caller's own thread, so it goes on as itself (a Ctrl-C stays a
    Ctrl-C) rather than as the `CrashedRun` that `.result()` raises elsewhere."""
    state = future._state
    error = state.error
    if state.type is StateType.CRASHED and error is not None and not isinstance(error, Exception):
        future._mark_observed()
        raise error
    return future.result()


def _task_by_reference(module: str, qualname: str) -> Task[..., Any]:
    import importlib

    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found  # type: ignore[no-any-return]


def _task_by_value(blob: bytes) -> Task[..., Any]:
    import pickle

    fn, options = pickle.loads(blob)
    return Task(fn, options)


def _fast_arity(signature: inspect.Signature) -> tuple[int, int] | None:
    """(required, total) positional parameters when a plain positional call can be
    checked by counting, else None."""
    required = total = 0
    for param in signature.parameters.values():
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            if param.kind is param.KEYWORD_ONLY and param.default is param.empty:
                return None
            if param.kind is param.VAR_POSITIONAL:
                return None
            continue
        total += 1
        if param.default is param.empty:
            required += 1
    return (required, total)


def _call_priority(task: Task[..., Any], value: Any, method: str) -> int:
    from baton._resources import check_priority

    try:
        return check_priority(value)
    except ValueError as exc:
        raise InvalidOptionsError(
            f"{task.name}.{method}(): priority {exc} (got {value!r})"
        ) from None


def _wait_for_tuple(wait_for: Any) -> tuple[Any, ...]:
    if wait_for is None:
        return ()
    if isinstance(wait_for, Future) or not isinstance(wait_for, Iterable):
        raise TypeError(
            f"wait_for must be a list of futures, such as wait_for=[a, b]; got {wait_for!r}"
        )
    return tuple(wait_for)


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    task_run_name: str | Callable[..., str] | None = None,
    description: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float | list[float] | Callable[[int], Any] = 0,
    retry_jitter_factor: float | None = None,
    retry_condition_fn: Callable[..., bool] | None = None,
    timeout_seconds: float | None = None,
    batch_size: int | None = None,
    tags: Iterable[str] = (),
    on_completion: Iterable[Callable[..., Any]] | Callable[..., Any] = (),
    on_failure: Iterable[Callable[..., Any]] | Callable[..., Any] = (),
    priority: int = 0,
    resources: Mapping[str, float] | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Make a function a task, bare (`@task`) or with options (`@task(retries=3)`).

    Options: `name`, `task_run_name` (a template over the parameters such as
    ``"train on {dataset.name}"``, or a callable), `retries`, `retry_delay_seconds`
    (seconds, a list, or a callable such as `exponential_backoff(2)`),
    `retry_jitter_factor`, `retry_condition_fn(task, task_run, state) -> bool`,
    `timeout_seconds`, `batch_size` (how many runs a runner that batches small runs
    may send together: None lets it decide from their durations, 1 sends each run
    alone), `tags`, `on_completion` and `on_failure` hooks
    (`hook(task, task_run, state)`), `priority` (a whole number >= 0: among runs
    waiting to start, higher first; `.submit(..., priority=)` and `.map(...,
    priority=)` set it per call) and `resources` (amounts each run holds while it
    runs, such as ``{"GPU": 1}``; see docs/limits.md). They are validated here, with
    an error that names the option.

    >>> from baton import task
    >>> @task(retries=2)
    ... def add(x, y):
    ...     return x + y
    >>> add(1, 2)
    3
    """
    from baton._options import TaskOptions, validate_options

    if fn is not None:
        if options:
            raise TypeError("Use @task or @task(option=...), not both.")
        return Task(fn, TaskOptions())
    owner = f"task {options['name']!r}" if isinstance(options.get("name"), str) else "a task"

    def decorate(function: Callable[P, R]) -> Task[P, R]:
        label = owner if owner != "a task" else f"task {getattr(function, '__name__', '?')!r}"
        return Task(function, validate_options(TaskOptions, label, options))

    # Validate now, so a bad option fails where the decorator is written.
    validate_options(TaskOptions, owner, options)
    return decorate
