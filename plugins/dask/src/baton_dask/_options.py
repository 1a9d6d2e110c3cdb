"""The runner's options (validated with pydantic) and where each run is placed on the cluster:
Dask resources, priority and workers from `dask_options`, task tags and ``dask.annotate``."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from baton import InvalidOptionsError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from baton.runners import TaskRun

__all__ = [
    "Placement",
    "RunnerOptions",
    "check_feasible",
    "dask_options",
    "placement_for",
    "task_placement",
    "validate",
]

# Address schemes Dask's comms understand.
_SCHEMES = frozenset({"tcp", "tls", "ucx", "ws", "wss", "inproc"})
_RESOURCE_TAG = "dask-resource:"
_PRIORITY_TAG = "dask-priority:"


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("dask_option", message)


class RunnerOptions(BaseModel):
    """The options of `DaskTaskRunner`, as given by the user."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    address: str | None = None
    cluster_class: Any = None
    cluster_kwargs: dict[str, Any] | None = None
    adapt_kwargs: dict[str, Any] | None = None
    client_kwargs: dict[str, Any] | None = None
    performance_report_path: str | None = None
    no_workers_timeout: float | None = 60.0
    batch_size: int | None = Field(default=None, ge=1)

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _invalid(
                "must be a scheduler address such as 'tcp://127.0.0.1:8786' or '127.0.0.1:8786'"
            )
        value = value.strip()
        scheme, found, rest = value.partition("://")
        if not found:
            scheme, rest = "tcp", value
        if scheme not in _SCHEMES:
            raise _invalid(
                f"unknown scheme {scheme!r}; a scheduler address starts with one of "
                f"{', '.join(sorted(_SCHEMES))} (or has no scheme: 'host:port' is tcp)"
            )
        if scheme != "inproc":
            host, colon, port = rest.rpartition(":")
            if not colon or not host or not port.isdigit():
                raise _invalid(
                    "must name a host and a port, as in 'tcp://127.0.0.1:8786' "
                    "(the port is the scheduler's, 8786 by default)"
                )
        return value if found else f"tcp://{value}"

    @field_validator("cluster_class", mode="before")
    @classmethod
    def _cluster_class(cls, value: Any) -> Any:
        if value is None or callable(value):
            return value
        if isinstance(value, str):
            return _import_cluster_class(value)
        raise _invalid(
            "must be a cluster class (or a function returning a cluster), or its import path "
            "such as 'distributed.LocalCluster' or 'dask_jobqueue:SLURMCluster'"
        )

    @field_validator("no_workers_timeout", mode="before")
    @classmethod
    def _no_workers_timeout(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _invalid(
                "must be a number of seconds > 0 (how long runs wait while the cluster has "
                "no worker), or None to wait for ever"
            )
        return float(value)

    @field_validator("performance_report_path", mode="before")
    @classmethod
    def _report_path(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            return os.fspath(value)
        raise _invalid("must be the path of the HTML file to write the Dask performance report to")

    @model_validator(mode="after")
    def _consistent(self) -> RunnerOptions:
        starts = [
            name
            for name in ("cluster_class", "cluster_kwargs", "adapt_kwargs")
            if getattr(self, name) is not None
        ]
        if self.address is not None and starts:
            raise _invalid(
                f"address connects to a running scheduler, while {', '.join(starts)} start a "
                "new cluster: pass one or the other"
            )
        client_kwargs = self.client_kwargs or {}
        if "address" in client_kwargs:
            raise _invalid("client_kwargs: pass the scheduler's address as address=, not here")
        if client_kwargs.get("asynchronous"):
            raise _invalid(
                "client_kwargs: asynchronous=True is not supported; the runner's "
                "client must be synchronous"
            )
        return self


def _import_cluster_class(path: str) -> Callable[..., Any]:
    module_name, colon, attr = path.strip().partition(":")
    if not colon:
        module_name, _, attr = path.strip().rpartition(".")
    if not module_name or not attr:
        raise _invalid(
            f"{path!r} is not an import path; write it as 'package.module.Class' or "
            "'package.module:Class'"
        )
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise _invalid(
            f"cannot import {path!r} ({type(exc).__name__}: {exc}); is the package that "
            "provides it installed?"
        ) from None
    if not callable(found):
        raise _invalid(f"{path!r} is {found!r}, which is not a cluster class")
    return found  # type: ignore[no-any-return]


def validate(values: dict[str, Any]) -> RunnerOptions:
    """Build `RunnerOptions`, raising `InvalidOptionsError` that lists every problem."""
    from baton.runners import validate_options

    options: RunnerOptions = validate_options(RunnerOptions, "task runner 'dask'", values)
    return options


# -- placement of runs --------------------------------------------------------------------


class Placement(NamedTuple):
    """Where Dask may run a task: what `client.submit` takes as resources, priority,
    workers and allow_other_workers. Hashable, so that runs placed alike go together."""

    resources: tuple[tuple[str, float], ...] = ()
    priority: int | None = None
    workers: tuple[str, ...] = ()
    allow_other_workers: bool | None = None

    def submit_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.resources:
            kwargs["resources"] = dict(self.resources)
        if self.priority is not None:
            kwargs["priority"] = self.priority
        if self.workers:
            kwargs["workers"] = list(self.workers)
        if self.allow_other_workers is not None:
            kwargs["allow_other_workers"] = self.allow_other_workers
        return kwargs

    def merged(self, other: Placement) -> Placement:
        """`other` laid over this one: its resources added, its other fields winning if set."""
        resources = dict(self.resources)
        resources.update(other.resources)
        return Placement(
            tuple(sorted(resources.items())),
            other.priority if other.priority is not None else self.priority,
            other.workers or self.workers,
            (
                other.allow_other_workers
                if other.allow_other_workers is not None
                else self.allow_other_workers
            ),
        )


_current: contextvars.ContextVar[Placement | None] = contextvars.ContextVar(
    "baton_dask_options", default=None
)


def _placement(
    owner: str,
    resources: Any = None,
    priority: Any = None,
    workers: Any = None,
    allow_other_workers: Any = None,
) -> Placement:
    problems: list[str] = []
    pairs: list[tuple[str, float]] = []
    if resources is not None:
        if not isinstance(resources, Mapping):
            problems.append(
                f"  resources: must map resource names to amounts, such as "
                f"{{'GPU': 1}} (got {resources!r})"
            )
        else:
            for name, amount in resources.items():
                if (
                    not isinstance(name, str)
                    or isinstance(amount, bool)
                    or not isinstance(amount, (int, float))
                    or amount < 0
                ):
                    problems.append(
                        f"  resources: {name!r}: {amount!r} is not a resource name with an "
                        "amount >= 0, such as {'GPU': 1}"
                    )
                else:
                    pairs.append((name, float(amount)))
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        problems.append(f"  priority: must be a whole number (got {priority!r})")
    names: tuple[str, ...] = ()
    if workers is not None:
        if isinstance(workers, str):
            names = (workers,)
        elif isinstance(workers, Sequence) and all(isinstance(w, str) for w in workers):
            names = tuple(workers)
        else:
            problems.append(
                f"  workers: must be a worker address or a list of them (got {workers!r})"
            )
    if allow_other_workers is not None and not isinstance(allow_other_workers, bool):
        problems.append(
            f"  allow_other_workers: must be True or False (got {allow_other_workers!r})"
        )
    if problems:
        raise InvalidOptionsError(f"Invalid {owner}:\n" + "\n".join(problems))
    return Placement(tuple(sorted(pairs)), priority, names, allow_other_workers)


@contextlib.contextmanager
def dask_options(
    *,
    resources: Mapping[str, float] | None = None,
    priority: int | None = None,
    workers: str | Sequence[str] | None = None,
    allow_other_workers: bool | None = None,
) -> Iterator[None]:
    """Place the task runs submitted in the block on the Dask cluster.

    `resources` are Dask worker resources each run needs (workers started with
    ``--resources "GPU=1"``), `priority` orders runs (higher first), `workers`
    restricts runs to those workers, unless `allow_other_workers`. Blocks nest: an
    inner block adds resources and overrides the rest. Runs on other runners
    ignore it.

    >>> from baton import task
    >>> from baton_dask import dask_options
    >>> @task
    ... def train(x):
    ...     return x
    >>> with dask_options(resources={"GPU": 1}):
    ...     future = train.submit(1)
    >>> future.result()
    1
    """
    placement = _placement("dask_options", resources, priority, workers, allow_other_workers)
    outer = _current.get()
    token = _current.set(placement if outer is None else outer.merged(placement))
    try:
        yield
    finally:
        _current.reset(token)


@functools.lru_cache(maxsize=256)
def _from_tags(tags: frozenset[str]) -> Placement | None:
    resources: dict[str, float] = {}
    priority: int | None = None
    for tag in tags:
        if tag.startswith(_RESOURCE_TAG):
            name, equals, amount = tag[len(_RESOURCE_TAG) :].partition("=")
            try:
                value = float(amount)
            except ValueError:
                value = -1.0
            if not name or not equals or value < 0:
                raise InvalidOptionsError(
                    f"Invalid task tag {tag!r}: a Dask resource tag reads "
                    "'dask-resource:NAME=AMOUNT', such as 'dask-resource:GPU=1'."
                )
            resources[name] = value
        elif tag.startswith(_PRIORITY_TAG):
            text = tag[len(_PRIORITY_TAG) :]
            try:
                priority = int(text)
            except ValueError:
                raise InvalidOptionsError(
                    f"Invalid task tag {tag!r}: a Dask priority tag reads "
                    "'dask-priority:N' with a whole number N, such as 'dask-priority:10'."
                ) from None
    if not resources and priority is None:
        return None
    return Placement(tuple(sorted(resources.items())), priority)


_ANNOTATION_KEYS = ("resources", "priority", "workers", "allow_other_workers")


def placement_for(tags: frozenset[str]) -> Placement | None:
    """Where a run submitted now goes: ``dask.annotate`` annotations, then the task's tags,
    then the `dask_options` block around the submission. None for the default placement.

    Read at submission, because the runs reach the cluster a moment later, from
    another thread, outside the blocks they were submitted in.
    """
    from dask.base import get_annotations

    placement: Placement | None = None
    annotations = get_annotations()
    if annotations:
        known = {k: annotations[k] for k in _ANNOTATION_KEYS if k in annotations}
        if known:
            placement = _placement("Dask annotations (dask.annotate)", **known)
    if tags:
        tagged = _from_tags(tags)
        if tagged is not None:
            placement = tagged if placement is None else placement.merged(tagged)
    context = _current.get()
    if context is not None:
        placement = context if placement is None else placement.merged(context)
    return placement


@functools.lru_cache(maxsize=256)
def _task_placement(priority: int, resources: tuple[tuple[str, float], ...]) -> Placement:
    return Placement(resources, priority or None)


def task_placement(priority: int, resources: Mapping[str, float]) -> Placement:
    """A task's own `priority` and `resources` as Dask's (``client.submit(priority=,
    resources=)``); tags, ``dask.annotate`` and `dask_options` are laid over it."""
    return _task_placement(priority, tuple(sorted(resources.items())))


def check_feasible(
    run: TaskRun,
    resources: tuple[tuple[str, float], ...],
    client: Any,
    feasible: set[tuple[tuple[str, float], ...]],
) -> None:
    """Raise InvalidOptionsError when the cluster has workers and none of them has
    `resources` (Dask would hold the run until such a worker joins). A request that
    fits is remembered in `feasible`, so the scheduler is asked once per request."""
    if resources in feasible:
        return
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except TypeError:  # an older distributed: every worker is listed anyway
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # the cluster cannot say: let Dask decide
        return
    if not workers:
        return  # none yet (an adaptive cluster, workers starting): Dask waits for them
    offered = [dict(info.get("resources") or {}) for info in workers.values()]
    if any(all(w.get(name, 0) >= amount for name, amount in resources) for w in offered):
        feasible.add(resources)
        return
    wanted = ", ".join(f"{name}={amount:g}" for name, amount in resources)
    seen = sorted({f"{k}={v:g}" for w in offered for k, v in w.items()})
    raise InvalidOptionsError(
        f"Task run {run.name!r} (task {run.task.name!r}) asks for Dask resources {wanted}, "
        f"but none of the cluster's {len(workers)} workers has them (their resources: "
        f"{', '.join(seen) or 'none'}), so it would wait forever. Start workers that have "
        f'them (dask worker ... --resources "{wanted.replace(", ", ",")}", or '
        "LocalCluster(resources={...})), or ask for less."
    )
