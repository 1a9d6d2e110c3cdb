"""Settings: one pydantic-settings model, environment prefix ``BATON_``.

Settings are read when they are needed (when a flow run starts, a runner is
built or plugins load), never frozen at import, so changing ``os.environ``
before a flow runs takes effect.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Every ``BATON_`` environment variable Baton reads."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore", case_sensitive=False)

    task_runner: str = Field(
        default="thread",
        description="The runner (a name, or a URL such as dask://host:8786) for flows "
        "that did not choose one.",
    )
    thread_max_workers: int | None = Field(
        default=None,
        ge=1,
        description="Worker threads of the `thread` runner (default: min(32, CPUs + 4)).",
    )
    process_max_workers: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes of the `process` runner (default: the number of CPUs).",
    )
    log_level: LogLevel = Field(
        default="INFO", description="Level of the `baton` logger (flow and task run lines)."
    )
    task_run_log_limit: int | None = Field(
        default=100,
        ge=0,
        description="How many completed task runs of one flow run get a log line each; "
        "the rest are counted in one line at the end. Failures are always logged. "
        "Unset (empty) for no limit.",
    )
    map_max_in_flight: int = Field(
        default=10_000,
        ge=1,
        description="How many runs of a `.map` over a lazy iterable may be unfinished at once.",
    )
    load_plugins: str | None = Field(
        default=None,
        description="Comma-separated distributions whose plugins may load. Unset: all; "
        "empty: none but the built-in runners. A name that matches no installed "
        "distribution is reported with a warning.",
    )
    strict_plugins: bool = Field(
        default=False,
        description="Raise instead of warning when a plugin fails to load, claims a "
        "runner name that another plugin or a built-in runner has, or "
        "`BATON_LOAD_PLUGINS` names a distribution that is not installed.",
    )
    progress: bool | None = Field(
        default=None,
        description="Show a progress bar on stderr while a flow run's task runs go on: "
        "1 always, 0 never; unset (or `auto`): only when stderr is a terminal.",
    )
    opentelemetry: bool = Field(
        default=False,
        description="Make each flow run an OpenTelemetry span, and each attempt of its task "
        "runs a child span, with the tracer provider you configure (needs "
        '`pip install "baton-core[otel]"`). See the OpenTelemetry page.',
    )
    trace_file: str | None = Field(
        default=None,
        description="Write each flow run as a Chrome trace (JSON, opens in Perfetto) to "
        "this path; `{flow}` and `{flow_run}` in it are replaced by the flow's and the "
        "flow run's names. Unset: no trace, at no cost.",
    )
    report_file: str | None = Field(
        default=None,
        description="Write each flow run as a self-contained HTML report to this path; "
        "`{flow}` and `{flow_run}` in it are replaced as for `BATON_TRACE_FILE`. "
        "Unset: no report, at no cost.",
    )

    concurrency_limits: dict[str, int] = Field(
        default_factory=dict,
        description='Concurrency limits of every flow run, by tag, as JSON: `{"db": 2}`. '
        "A flow's own `concurrency_limits` take precedence name by name.",
    )
    rate_limits: dict[str, str] = Field(
        default_factory=dict,
        description='Rate limits of every flow run, as JSON: `{"api": "10/s"}` (units s, m, '
        "h, d). A flow's own `rate_limits` take precedence name by name.",
    )

    @field_validator("concurrency_limits", mode="before")
    @classmethod
    def _valid_concurrency_limits(cls, value: object) -> object:
        from baton._limitspec import check_concurrency_limits

        return check_concurrency_limits(value)

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _valid_rate_limits(cls, value: object) -> object:
        from baton._limitspec import check_rate_limits

        return check_rate_limits(value)

    @field_validator("task_run_log_limit", mode="before")
    @classmethod
    def _empty_is_no_limit(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("trace_file", "report_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("progress", mode="before")
    @classmethod
    def _auto_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value


_cache: dict[tuple[tuple[str, str], ...], Settings] = {}


def get_settings() -> Settings:
    """The settings as the environment has them now."""
    key = _baton_variables()
    settings = _cache.get(key)
    if settings is None:
        if len(_cache) > 64:
            _cache.clear()
        settings = _cache[key] = Settings()
    return settings


def _baton_variables() -> tuple[tuple[Any, Any], ...]:
    """The ``BATON_`` variables (in any case) as the environment has them now, sorted.

    Read from the encoded mapping behind `os.environ` (bytes on POSIX, upper-case str
    on Windows) where there is one: going through `os.environ.items()` decodes every
    variable of the environment, about 15 us a call here, and settings are read about
    ten times per flow run."""
    data = getattr(os.environ, "_data", None)
    if type(data) is dict:
        prefix = "BATON_" if os.name == "nt" else b"BATON_"
        return tuple(sorted(item for item in data.items() if item[0][:6].upper() == prefix))
    return tuple(sorted(item for item in os.environ.items() if item[0][:6].upper() == "BATON_"))
