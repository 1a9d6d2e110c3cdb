"""Choosing a runner: by name, URL, name with options, instance or class, and the errors
for a name or URL scheme that no installed plugin claims."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from baton._errors import PluginLoadError, UnknownRunnerError
from baton._plugins._discovery import Registry, RunnerInfo, conflict_message, loading, registry
from baton._runner import TaskRunner

__all__ = [
    "KNOWN_PLUGINS",
    "check_task_runner",
    "create_runner",
    "get_runner",
    "lookup_runner",
    "resolve_task_runner",
]

# First-party runners that live in their own distributions: how to install each, from a
# package index and from a clone of the repository (where the package index has no
# baton-core to find).
KNOWN_PLUGINS = {
    "dask": ('pip install "baton-core[dask]"', "pip install ./plugins/dask"),
    "ray": ('pip install "baton-core[ray]"', "pip install ./plugins/ray"),
}

SETTING = "BATON_TASK_RUNNER"


def _runner_info(found: Registry, name: str, setting: str | None) -> RunnerInfo:
    info = found.runners.get(name)
    if info is not None:
        return info
    if name in found.conflicts:
        raise PluginLoadError(
            conflict_message(f"a task runner named {name!r}", found.conflicts[name])
        )
    head = f"Unknown task runner {name!r}"
    if setting is not None:
        head += f" (from the {setting} environment variable)"
    head += "."
    candidates = set(found.runners) | set(KNOWN_PLUGINS)
    raise UnknownRunnerError(_unknown(found, head, name, candidates))


def _scheme_info(found: Registry, scheme: str, url: str, setting: str | None) -> RunnerInfo:
    key = f"{scheme}://"
    info = found.schemes.get(key)
    if info is not None:
        return info
    if key in found.conflicts:
        raise PluginLoadError(conflict_message(f"the URL scheme {key!r}", found.conflicts[key]))
    # The keys of `schemes` already end in "://".
    accepted = ", ".join(f"{s} ({i.name})" for s, i in sorted(found.schemes.items()))
    head = f"No installed task runner accepts {url!r}"
    if setting is not None:
        head += f" (from the {setting} environment variable)"
    head += f": none claims the URL scheme {key!r}."
    if accepted:
        head += f" Installed runners accept: {accepted}."
    candidates = {s.removesuffix("://") for s in found.schemes} | set(KNOWN_PLUGINS)
    raise UnknownRunnerError(_unknown(found, head, scheme, candidates, suffix="://"))


def _unknown(found: Registry, head: str, name: str, candidates: set[str], suffix: str = "") -> str:
    text = head
    close = difflib.get_close_matches(name, sorted(candidates - {name}), n=1)
    if close:
        text += f" Did you mean '{close[0]}{suffix}'?"
    installed = ", ".join(sorted(found.runners)) or "none"
    text += f" Installed runners: {installed}."
    skipped = [p for p in found.plugins if p.skipped]
    broken = [p for p in found.plugins if p.error]
    if broken:
        names = ", ".join(f"{p.name} ({p.distribution})" for p in broken)
        text += f" Plugins that failed to load: {names}; `baton plugins` shows why."
    if skipped:
        names = ", ".join(sorted({p.distribution for p in skipped}))
        text += f" Installed but not in BATON_LOAD_PLUGINS, so not loaded: {names}."
    hint = KNOWN_PLUGINS.get(name)
    present = {p.distribution for p in skipped + broken}
    if hint is not None and f"baton-{name}" not in present:
        from_index, from_clone = hint
        # Last, so that the commands end the message and copy cleanly.
        text += (
            f" The {name!r} runner is a plugin; install it with: {from_index} (or, in a clone "
            f"of the Baton repository, from its root: {from_clone})"
        )
    return text


def _lookup(spec: str, setting: str | None = None) -> RunnerInfo:
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownRunnerError(
            f"A task runner name must be a non-empty string such as 'thread', got {spec!r}."
        )
    spec = spec.strip()
    found = registry()
    if "://" in spec:
        return _scheme_info(found, spec.split("://", 1)[0].lower(), spec, setting)
    return _runner_info(found, spec, setting)


def lookup_runner(spec: str) -> RunnerInfo:
    """The registration behind a runner name or URL, without building the runner.

    Raises `UnknownRunnerError` (listing the installed runners) when nothing claims it.
    """
    return _lookup(spec)


def get_runner(name: str, **options: Any) -> TaskRunner:
    """A new, unstarted runner chosen by name (or URL), built with `options`.

    Pass it to ``@flow(task_runner=...)``; each flow run works on its own copy.

    >>> from baton import get_runner
    >>> get_runner("thread", max_workers=2)
    <ThreadRunner max_workers=2 new>
    """
    return create_runner(name, **options)


def create_runner(spec: str, **options: Any) -> TaskRunner:
    """Build the runner `spec` (a name or URL) names, with `options`."""
    return _create(_lookup(spec), spec, options)


def _create(info: RunnerInfo, spec: str, options: dict[str, Any]) -> TaskRunner:
    spec = spec.strip()
    cls = info.load()
    if "://" in spec:
        if options:
            raise TypeError(
                f"Options cannot be combined with a URL ({spec!r}); pass them in the URL, "
                f"or select the runner by name: get_runner({info.name!r}, ...)."
            )
        return cls.from_url(spec)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        accepted = [
            p.name
            for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        raise TypeError(
            f"Task runner {spec!r} ({cls.__name__}) does not accept these options: {exc}. "
            f"Its options: {', '.join(accepted) or 'none'}."
        ) from None
    except ValueError:
        pass  # no signature to check against; let the call decide
    return cls(**options)


def check_task_runner(spec: object) -> None:
    """Raise now, as a flow is defined, for a runner name or URL scheme that no installed
    plugin claims, instead of when the flow runs.

    This discovers plugins but imports no runner class (Dask or Ray stay unimported).
    A flow defined while plugins load (in a plugin's own module) is checked when it runs.
    """
    if isinstance(spec, str) and not loading():
        _lookup(spec)


def resolve_task_runner(spec: Any) -> tuple[TaskRunner, bool]:
    """The runner a flow run uses for `spec`, and whether the flow run owns it
    (starts and shuts it down)."""
    if spec is None:
        from baton._settings import get_settings

        name = get_settings().task_runner
        return _create(_lookup(name, SETTING), name, {}), True
    if isinstance(spec, str):
        return create_runner(spec), True
    if isinstance(spec, TaskRunner):
        if spec.started:
            return spec, False
        return spec.duplicate(), True
    if isinstance(spec, type) and issubclass(spec, TaskRunner):
        return spec(), True
    raise TypeError(
        "task_runner must be a runner name such as 'thread', a URL such as "
        f"'dask://127.0.0.1:8786', or a TaskRunner instance; got {spec!r}."
    )
