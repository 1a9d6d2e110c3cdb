"""Validated options of tasks and flows (pydantic models, imported on first use)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    tags: frozenset[str] = frozenset()
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()

    @field_validator("retry_delay_seconds")
    @classmethod
    def _non_negative_delays(cls, value: Any) -> Any:
        delays = value if isinstance(value, list) else [value]
        for delay in delays:
            if isinstance(delay, (int, float)) and delay < 0:
                raise ValueError(f"delays must be >= 0 seconds, got {delay}")
        return value

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
        """Seconds to wait before retry number `attempt` (1-based), before jitter."""
        spec = self.retry_delay_seconds
        if callable(spec):
            spec = spec(self.retries)
        if isinstance(spec, (list, tuple)):
            if not spec:
                return 0.0
            return float(spec[min(attempt, len(spec)) - 1])
        return float(spec)


class FlowOptions(BaseModel):
    """Every option a flow accepts. Validated when the decorator runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str | None = Field(default=None, min_length=1)
    flow_run_name: str | Callable[..., str] | None = None
    description: str | None = None
    task_runner: Any = None
    on_completion: tuple[Hook, ...] = ()
    on_failure: tuple[Hook, ...] = ()

    _hooks_as_tuple = field_validator("on_completion", "on_failure", mode="before")(
        TaskOptions._hooks_as_tuple.__func__  # type: ignore[attr-defined]
    )


def validate_options(model: type[BaseModel], owner: str, values: dict[str, Any]) -> Any:
    """Build `model` from `values`, turning a ValidationError into a one-paragraph message."""
    try:
        return model(**values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "options"
            if error["type"] == "extra_forbidden":
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
