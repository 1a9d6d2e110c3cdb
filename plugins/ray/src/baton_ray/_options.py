"""`remote_options`: the Ray resources of task runs.

Set them around `.submit`/`.map` with ``with remote_options(...)``, or on a task with
tags such as ``"ray:num_gpus=1"``. Only the runs of the `ray` runner read them.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping
from typing import Any

from baton import InvalidOptionsError

__all__ = [
    "TAG_PREFIX",
    "cluster_shortfall",
    "current_options",
    "merge",
    "options_from_resources",
    "options_from_tags",
    "remote_options",
    "validate",
]

TAG_PREFIX = "ray:"
"""Tags of this form set Ray options on a task: ``ray:num_cpus=2``, ``ray:num_gpus=0.5``,
``ray:memory=2e9`` (bytes), ``ray:resources.NAME=1``."""

_NAMES = ("num_cpus", "num_gpus", "memory", "resources", "runtime_env")
# Ray's own names for what num_cpus, num_gpus and memory set.
_RESERVED = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}

_EMPTY: Mapping[str, Any] = {}
_current: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "baton_ray_remote_options", default=_EMPTY
)


@contextlib.contextmanager
def remote_options(
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    resources: Mapping[str, float] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Ray options for the task runs submitted (`.submit`, `.map`) inside the block.

    `num_cpus`, `num_gpus` (fractions allowed) and `memory` (bytes) are what the run
    reserves on the cluster; `resources` are custom resources (``{"TPU": 1}``);
    `runtime_env` is a Ray runtime environment (``{"env_vars": {...}, "pip": [...]}``).
    Blocks nest: an inner block overrides the options it names and keeps the others;
    `resources` and the ``env_vars`` of `runtime_env` are merged key by key. The
    block yields the options in effect. Tags ``ray:...`` on a task set its defaults,
    which a block overrides.

    >>> with remote_options(num_cpus=2, resources={"TPU": 1}):
    ...     with remote_options(num_cpus=4, resources={"disk": 2}) as options:
    ...         options
    {'num_cpus': 4, 'resources': {'TPU': 1, 'disk': 2}}
    """
    given = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "memory": memory,
        "resources": resources,
        "runtime_env": runtime_env,
    }
    options = validate({k: v for k, v in given.items() if v is not None}, "remote_options()")
    merged = merge(_current.get(), options)
    token = _current.set(merged)
    try:
        yield dict(merged)
    finally:
        _current.reset(token)


def current_options() -> Mapping[str, Any]:
    """The options of the innermost `remote_options` block (empty outside any)."""
    return _current.get()


def validate(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`options` checked and normalised; `InvalidOptionsError` naming every problem."""
    problems: list[str] = []
    valid: dict[str, Any] = {}
    for name, value in options.items():
        if name not in _NAMES:
            problems.append(f"  {name}: not a Ray option here (options are: {', '.join(_NAMES)})")
        elif name in ("num_cpus", "num_gpus", "memory"):
            if not _is_amount(value):
                unit = " (bytes)" if name == "memory" else ""
                problems.append(f"  {name}: must be a number >= 0{unit} (got {value!r})")
            elif name == "memory":
                valid[name] = int(value)
            else:
                valid[name] = value
        elif name == "resources":
            checked = _check_resources(value, problems)
            if checked is not None:
                valid[name] = checked
        elif not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            problems.append(
                f"  runtime_env: must be a dict such as {{'env_vars': {{'KEY': 'value'}}}} "
                f"(got {value!r})"
            )
        else:
            valid[name] = dict(value)
    if problems:
        raise InvalidOptionsError(f"Invalid Ray options for {where}:\n" + "\n".join(problems))
    return valid


def _is_amount(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _check_resources(value: object, problems: list[str]) -> dict[str, float] | None:
    if not isinstance(value, Mapping):
        problems.append(f"  resources: must be a dict such as {{'TPU': 1}} (got {value!r})")
        return None
    checked: dict[str, float] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not key:
            problems.append(f"  resources: names must be non-empty strings (got {key!r})")
        elif key in _RESERVED:
            problems.append(f"  resources: use {_RESERVED[key]}= instead of resources[{key!r}]")
        elif not _is_amount(amount):
            problems.append(f"  resources[{key!r}]: must be a number >= 0 (got {amount!r})")
        else:
            checked[key] = amount
    return checked


def merge(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> Mapping[str, Any]:
    """`inner` over `outer`: resources and runtime_env env_vars merge key by key."""
    if not outer:
        return inner
    if not inner:
        return outer
    merged = dict(outer)
    for name, value in inner.items():
        previous = merged.get(name)
        if name == "resources" and previous:
            value = {**previous, **value}
        elif name == "runtime_env" and previous:
            env_vars = {**previous.get("env_vars", {}), **value.get("env_vars", {})}
            value = {**previous, **value}
            if env_vars:
                value["env_vars"] = env_vars
        merged[name] = value
    return merged


_tag_cache: dict[frozenset[str], Mapping[str, Any]] = {}


def options_from_tags(tags: frozenset[str], task_name: str) -> Mapping[str, Any]:
    """The Ray options a task's ``ray:...`` tags set (cached per set of tags)."""
    found = _tag_cache.get(tags)
    if found is not None:
        return found
    options: dict[str, Any] = {}
    problems: list[str] = []
    for tag in sorted(tags):
        if not tag.startswith(TAG_PREFIX):
            continue
        key, sep, text = tag[len(TAG_PREFIX) :].partition("=")
        try:
            amount = float(text)
        except ValueError:
            amount = math.nan
        if key not in ("num_cpus", "num_gpus", "memory") and not key.startswith("resources."):
            problems.append(
                f"  tag {tag!r}: {key!r} cannot be set by a tag (tags set num_cpus, num_gpus, "
                "memory and resources.NAME; use `with remote_options(...)` for the rest)"
            )
        elif not sep or math.isnan(amount):
            problems.append(
                f"  tag {tag!r}: expected {TAG_PREFIX}NAME=NUMBER, such as 'ray:num_gpus=1'"
            )
        elif key.startswith("resources."):
            options.setdefault("resources", {})[key[len("resources.") :]] = amount
        else:
            options[key] = int(amount) if amount.is_integer() else amount
    if problems:
        raise InvalidOptionsError(
            f"Invalid Ray options in the tags of task {task_name!r}:\n" + "\n".join(problems)
        )
    validated = validate(options, f"the tags of task {task_name!r}")
    if len(_tag_cache) > 256:
        _tag_cache.clear()
    _tag_cache[tags] = validated
    return validated


_resource_cache: dict[tuple[tuple[str, float], ...], Mapping[str, Any]] = {}


def options_from_resources(resources: Mapping[str, float]) -> Mapping[str, Any]:
    """A task's `resources` as Ray options: ``GPU`` as num_gpus, ``CPU`` as num_cpus,
    ``memory`` (bytes) as memory, any other name as a custom resource."""
    key = tuple(sorted(resources.items()))
    found = _resource_cache.get(key)
    if found is not None:
        return found
    options: dict[str, Any] = {}
    for name, amount in key:
        option = _RESERVED.get(name)
        if option == "memory":
            options[option] = int(amount)
        elif option is not None:
            options[option] = int(amount) if float(amount).is_integer() else amount
        else:
            options.setdefault("resources", {})[name] = amount
    if len(_resource_cache) > 256:
        _resource_cache.clear()
    _resource_cache[key] = options
    return options


def cluster_shortfall(options: Mapping[str, Any]) -> str:
    """What `options` ask for beyond the Ray cluster's total resources ("" if nothing)."""
    import ray

    wanted: dict[str, float] = {}
    for name, option in _RESERVED.items():
        amount = options.get(option)
        if amount:
            wanted[name] = float(amount)
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            wanted[name] = float(amount)
    if not wanted:
        return ""
    try:
        resources_of: Any = ray.cluster_resources
        total: dict[str, float] = resources_of()
    except Exception:  # the cluster cannot say: let Ray decide
        return ""
    short = [
        f"{name}={amount:g} (the cluster has {total.get(name, 0):g})"
        for name, amount in sorted(wanted.items())
        if amount > total.get(name, 0)
    ]
    return ", ".join(short)
