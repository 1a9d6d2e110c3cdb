"""Validated options of tasks and flows (pydantic models, imported on first use)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from baton._backoff import exponential_backoff
from baton._errors import InvalidOptionsError

__all__ = ["FlowOptions", "TaskOptions", "callable_arity", "validate_options"]

Number = int | float
Hook = Callable[..., Any]


class TaskOptions(BaseModel):
    """Every option a task accepts. Validated when the decorator runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str | None = Field(default=None, min_length=1)
    task_run_name: str | Callable[..., str] | None = None
    description: str | None = None
    retries: int = Field(default=0, ge=0)
    retry_delay_seconds: Number | list[Number] | Callable[[int], Any] = 0
    retry_jitter_factor: float | None = Field(default=None, ge=0)
    retry_condition_fn: Callable[..., bool] | None = None
    timeout_seconds: float | None = None
    batch_size: int | None = Field(default=None, ge=1)
    tags: frozenset[str] = frozenset()
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    priority: int = 0
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("priority", mode="before")
    @classmethod
    def _valid_priority(cls, value: Any) -> int:
        from baton._resources import check_priority

        return check_priority(value)

    @field_validator("resources", mode="before")
    @classmethod
    def _valid_resources(cls, value: Any) -> dict[str, float]:
        from baton._resources import check_resources

        return check_resources(value)

    @field_validator("retry_delay_seconds", mode="before")
    @classmethod
    def _valid_delays(cls, value: Any) -> Any:
        if callable(value):
            _check_delay_callable(value)
            return value
        if isinstance(value, (list, tuple)):
            for delay in value:
                _check_delay(delay, value)
            return list(value)
        _check_delay(value, value)
        return value

    @model_validator(mode="after")
    def _callable_delays_give_delays(self) -> TaskOptions:
        # As Prefect does, a callable is called when the task is defined, so that one
        # returning junk is reported now rather than when a run first fails; it is
        # called again (and checked again) before each retry.
        spec = self.retry_delay_seconds
        if callable(spec):
            try:
                self.delay_for(1)
            except InvalidOptionsError as error:
                raise ValueError(str(error)) from None
        return self

    @field_validator("timeout_seconds")
    @classmethod
    def _positive_timeout(cls, value: float | None) -> float | None:
        if value is None:
            return None
        if math.isinf(value) and value > 0:
            return None  # as with anyio.fail_after(inf): it never times out
        if not value > 0:  # also nan and -inf
            raise ValueError(
                "must be a number of seconds > 0 (a float('inf') or None for no timeout)"
            )
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_as_set(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("expected a collection of tags such as ['etl'], got a single string")
        return frozenset(value) if isinstance(value, Iterable) else value

    @field_validator("on_completion", "on_failure", mode="before")
    @classmethod
    def _hooks_as_tuple(cls, value: Any) -> Any:
        if callable(value):
            return (value,)
        return tuple(value) if isinstance(value, Iterable) else value

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based), before jitter.

        Raises `InvalidOptionsError` when a `retry_delay_seconds` callable returns
        anything but a number of seconds >= 0 or a list of them, or raises itself.
        """
        spec = self.retry_delay_seconds
        if callable(spec):
            fn = spec
            try:
                spec = fn(self.retries)
            except Exception as exc:
                raise InvalidOptionsError(
                    f"retry_delay_seconds: the callable {_describe(fn)} raised "
                    f"{type(exc).__name__}: {exc} when called with retries={self.retries}. "
                    f"{_CALLABLE_CONTRACT}"
                ) from exc
            try:
                if isinstance(spec, (list, tuple)):
                    for delay in spec:
                        _check_delay(delay, spec)
                else:
                    _check_delay(spec, spec)
            except ValueError:
                raise InvalidOptionsError(
                    f"retry_delay_seconds: the callable {_describe(fn)} returned {spec!r} "
                    f"when called with retries={self.retries}. {_CALLABLE_CONTRACT}"
                ) from None
        if isinstance(spec, (list, tuple)):
            if not spec:
                return 0.0
            return float(spec[min(attempt, len(spec)) - 1])
        return float(spec)


_CALLABLE_CONTRACT = (
    "It must take the number of retries and return a number of seconds >= 0 or a list "
    "of them, one per retry, as exponential_backoff(backoff_factor=10) does."
)


def _describe(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return repr(name) if name else repr(fn)


def _check_delay(delay: Any, spec: Any) -> None:
    """Raise ValueError unless `delay` is a finite number of seconds >= 0."""
    where = "" if delay is spec else f", got {delay!r} in the list"
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise ValueError(
            f"a delay must be a number of seconds >= 0{where}; pass a number, a list of "
            "numbers (one per retry) or a callable such as exponential_backoff(10)"
        )
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(
            f"delays must be finite numbers of seconds >= 0 (inf and nan are not){where}"
        )


def _check_delay_callable(fn: Callable[..., Any]) -> None:
    """Raise ValueError for a callable that cannot take the number of retries."""
    if fn is exponential_backoff:
        raise ValueError(
            "exponential_backoff must be called with a backoff factor: pass "
            "retry_delay_seconds=exponential_backoff(backoff_factor=10)"
        )
    try:
        inspect.signature(fn).bind(0)
    except TypeError:
        raise ValueError(
            f"the callable {_describe(fn)} cannot be called with one argument. "
            + _CALLABLE_CONTRACT
        ) from None
    except ValueError:  # no signature to inspect (some builtins): checked when called
        pass


class FlowOptions(BaseModel):
    """Every option a flow accepts. Validated when the decorator runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str | None = Field(default=None, min_length=1)
    flow_run_name: str | Callable[..., str] | None = None
    description: str | None = None
    task_runner: Any = None
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()
    concurrency_limits: dict[str, int] = Field(default_factory=dict)
    rate_limits: dict[str, str] = Field(default_factory=dict)

    _hooks_as_tuple = field_validator("on_completion", "on_failure", mode="before")(
        TaskOptions._hooks_as_tuple.__func__  # type: ignore[attr-defined]
    )

    @field_validator("concurrency_limits", mode="before")
    @classmethod
    def _valid_concurrency_limits(cls, value: Any) -> Any:
        from baton._limitspec import check_concurrency_limits

        return check_concurrency_limits(value)

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _valid_rate_limits(cls, value: Any) -> Any:
        from baton._limitspec import check_rate_limits

        return check_rate_limits(value)


def validate_options(model: type[BaseModel], owner: str, values: dict[str, Any]) -> Any:
    """Build `model` from `values`, turning a ValidationError into a one-paragraph message."""
    try:
        return model(**values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            if not field:  # a check across options names its option itself
                lines.append("  " + error["msg"].removeprefix("Value error, "))
            elif error["type"] == "extra_forbidden":
                known = ", ".join(sorted(model.model_fields))
                lines.append(f"  {field}: not an option (options are: {known})")
            else:
                # pydantic prefixes the messages of our own validators with "Value error, "
                message = error["msg"].removeprefix("Value error, ")
                lines.append(f"  {field}: {message} (got {error.get('input')!r})")
        unique = list(dict.fromkeys(lines))
        raise InvalidOptionsError(f"Invalid options for {owner}:\n" + "\n".join(unique)) from None


def callable_arity(fn: Callable[..., Any]) -> int:
    """How many positional parameters `fn` takes (for user-supplied name callables)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
