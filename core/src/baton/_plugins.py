"""Plugin discovery (entry points, guarded one by one) and the runner registry."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from baton import hookspecs
from baton._errors import BatonError, PluginLoadError, UnknownRunnerError
from baton._runner import TaskRunner

if TYPE_CHECKING:
    from baton._states import State
    from baton._taskrun import TaskRun

__all__ = [
    "BatonPluginWarning",
    "PluginInfo",
    "RunnerInfo",
    "create_runner",
    "get_runner",
    "list_conflicts",
    "list_plugins",
    "list_runners",
    "lookup_runner",
    "make_observer",
    "plugin_manager",
    "reset",
    "resolve_task_runner",
]

ENTRY_POINT_GROUP = "baton.plugins"
CORE_DISTRIBUTION = "baton-core"
logger = logging.getLogger("baton")

# First-party runners that live in their own distributions: the line that installs each.
KNOWN_PLUGINS = {
    "dask": 'pip install "baton-core[dask]"',
    "ray": 'pip install "baton-core[ray]"',
}


class BatonPluginWarning(UserWarning):
    """A plugin failed to load and was skipped, or two plugins claim the same runner name."""


@dataclass(frozen=True)
class PluginInfo:
    """A plugin entry point as discovered: where it comes from, what it registered,
    and why it did not load if it did not."""

    name: str
    """The entry point's name."""
    distribution: str
    version: str
    module: str
    """The entry point's value (``"package.module"`` or ``"package.module:object"``)."""
    error: str | None = None
    """``"ExceptionType: message"`` when loading failed."""
    traceback: str | None = None
    skipped: bool = False
    """True when ``BATON_LOAD_PLUGINS`` does not list the distribution."""
    runners: tuple[str, ...] = ()
    """The runner names the plugin registered."""

    @property
    def loaded(self) -> bool:
        return self.error is None and not self.skipped

    @property
    def status(self) -> str:
        """``"loaded"``, ``"failed"`` or ``"skipped"``."""
        if self.skipped:
            return "skipped"
        return "failed" if self.error is not None else "loaded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "status": self.status,
            "runners": list(self.runners),
            "error": self.error,
            "traceback": self.traceback,
        }


@dataclass
class RunnerInfo:
    """A registered runner: its name, where it comes from, and how to build it."""

    name: str
    target: type[TaskRunner] | str
    """The class, or the lazy ``"module:Class"`` reference it was registered with."""
    plugin: str
    distribution: str
    version: str
    url_schemes: tuple[str, ...] = ()
    _cls: type[TaskRunner] | None = field(default=None, repr=False)

    def load(self) -> type[TaskRunner]:
        """Import the runner class (a lazy reference is imported here, once)."""
        if self._cls is None:
            target = self.target
            if isinstance(target, str):
                module_name, _, attr = target.partition(":")
                try:
                    cls = getattr(importlib.import_module(module_name), attr)
                except Exception as exc:
                    raise UnknownRunnerError(
                        f"Task runner {self.name!r} (from plugin {self.plugin!r} of "
                        f"{self.distribution} {self.version}) failed to import {target!r}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            else:
                cls = target
            if not (isinstance(cls, type) and issubclass(cls, TaskRunner)):
                raise UnknownRunnerError(
                    f"Task runner {self.name!r} from plugin {self.plugin!r} "
                    f"({self.distribution}) is {cls!r}, which is not a baton.TaskRunner "
                    "subclass."
                )
            self._cls = cls
        return self._cls

    @property
    def capabilities(self) -> list[str]:
        """The capabilities the runner class declares (importing it); empty if it
        cannot be imported."""
        try:
            return sorted(str(c) for c in self.load().capabilities)
        except BatonError:
            return []

    @property
    def origin(self) -> str:
        return f"plugin {self.plugin!r} ({self.distribution} {self.version})"


def _conflict_message(what: str, claims: Sequence[RunnerInfo]) -> str:
    who = " and ".join(info.origin for info in claims)
    return (
        f"Two plugins register {what}: {who}. Uninstall one of them, or leave its "
        "distribution out of BATON_LOAD_PLUGINS."
    )


class _Registry:
    def __init__(self, allow: frozenset[str] | None, strict: bool) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.strict = strict
        self.allow = allow
        self.runners: dict[str, RunnerInfo] = {}
        self.schemes: dict[str, RunnerInfo] = {}
        # name (or "scheme://") -> every claim on it, when more than one plugin claims it
        self.conflicts: dict[str, list[RunnerInfo]] = {}
        self.plugins: list[PluginInfo] = []
        self._load()

    # -- discovery ----------------------------------------------------------------

    def _load(self) -> None:
        from importlib import metadata

        loaded: list[tuple[str, PluginInfo]] = []
        seen: set[tuple[str, str]] = set()
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        # The core's own entry points first, so its runners keep their names' first claim.
        for ep in sorted(entry_points, key=lambda e: (_dist_name(e) != CORE_DISTRIBUTION, e.name)):
            dist = _dist_name(ep)
            if (dist, ep.name) in seen:
                continue  # the same distribution found twice on sys.path
            seen.add((dist, ep.name))
            version = ep.dist.version if ep.dist is not None else "?"
            if (
                dist != CORE_DISTRIBUTION
                and self.allow is not None
                and _norm(dist) not in self.allow
            ):
                self.plugins.append(PluginInfo(ep.name, dist, version, ep.value, skipped=True))
                continue
            # Entry point names are chosen per distribution, so two may coincide.
            key = ep.name if not self.pm.has_plugin(ep.name) else f"{dist}:{ep.name}"
            plugin = None
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=key)
                self._check_hooks(plugin, key)
            except Exception as exc:
                if plugin is not None and self.pm.get_plugin(key) is plugin:
                    self.pm.unregister(name=key)  # registration can fail halfway
                self._failed(PluginInfo(ep.name, dist, version, ep.value), exc)
                continue
            loaded.append((key, PluginInfo(ep.name, dist, version, ep.value)))
        for key, info in loaded:
            self._register_runners_of(key, info)

    def _check_hooks(self, plugin: object, key: str) -> None:
        """A hook name with a typo would otherwise be silently never called."""
        unknown = [c.name for c in self.pm.get_hookcallers(plugin) or () if not c.has_spec()]
        if unknown:
            known = ", ".join(sorted(n for n in dir(self.pm.hook) if not n.startswith("_")))
            raise PluginLoadError(
                f"it implements {', '.join(map(repr, sorted(unknown)))}, which is not a Baton "
                f"hook (the hooks are: {known})"
            )

    def _register_runners_of(self, key: str, info: PluginInfo) -> None:
        """Call one plugin's `register_runners` on its own, so that one which raises is
        reported without hiding the runners of the others, and registers nothing."""
        plugin = self.pm.get_plugin(key)
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        caller = self.pm.subset_hook_caller("register_runners", remove_plugins=others)
        claimed: list[RunnerInfo] = []
        try:
            caller(register=self._register_callback(info, claimed))
        except Exception as exc:
            self.pm.unregister(name=key)
            self._failed(info, exc)
            return
        for runner in claimed:
            self._add(runner)
        self.plugins.append(dataclasses.replace(info, runners=tuple(r.name for r in claimed)))

    def _register_callback(
        self, origin: PluginInfo, claimed: list[RunnerInfo]
    ) -> Callable[..., None]:
        def register(
            name: str, runner: type[TaskRunner] | str, *, url_schemes: Sequence[str] = ()
        ) -> None:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise TypeError(
                    f"register(): the runner name must be a non-empty string without "
                    f"surrounding spaces, got {name!r}"
                )
            if "://" in name:
                raise TypeError(
                    f"register(): the runner name {name!r} looks like a URL; pass the URL "
                    "scheme in url_schemes=(...) instead"
                )
            if isinstance(runner, str):
                if runner.count(":") != 1 or not all(runner.split(":")):
                    raise TypeError(
                        f"register(): a lazy runner reference must look like "
                        f"'package.module:ClassName', got {runner!r}"
                    )
            elif not (isinstance(runner, type) and issubclass(runner, TaskRunner)):
                raise TypeError(
                    f"register(): runner must be a baton.TaskRunner subclass or a "
                    f"'package.module:ClassName' string, got {runner!r}"
                )
            if isinstance(url_schemes, str):
                url_schemes = (url_schemes,)
            if any(r.name == name for r in claimed):
                raise TypeError(f"register(): the runner name {name!r} is registered twice")
            if isinstance(runner, type) and not url_schemes:
                url_schemes = runner.url_schemes
            schemes = tuple(s.lower().removesuffix("://") for s in url_schemes)
            claimed.append(
                RunnerInfo(name, runner, origin.name, origin.distribution, origin.version, schemes)
            )

        return register

    def _add(self, info: RunnerInfo) -> None:
        self._claim(self.runners, info.name, info, f"a task runner named {info.name!r}")
        for scheme in info.url_schemes:
            self._claim(self.schemes, f"{scheme}://", info, f"the URL scheme '{scheme}://'")

    def _claim(self, table: dict[str, RunnerInfo], key: str, info: RunnerInfo, what: str) -> None:
        existing = self.conflicts.get(key)
        if existing is not None:
            existing.append(info)
        elif key in table:
            self.conflicts[key] = [table.pop(key), info]
        else:
            table[key] = info
            return
        message = _conflict_message(what, self.conflicts[key])
        if self.strict:
            raise PluginLoadError(message)
        warnings.warn(
            f"{message} Selecting it raises an error until then.", BatonPluginWarning, stacklevel=6
        )

    def _failed(self, info: PluginInfo, exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {exc}"
        self.plugins.append(
            dataclasses.replace(info, error=detail, traceback=traceback.format_exc())
        )
        what = f"Baton plugin {info.name!r} ({info.distribution} {info.version})"
        if self.strict:
            raise PluginLoadError(
                f"{what} failed to load: {detail}. BATON_STRICT_PLUGINS is set, so this is an "
                "error; fix or uninstall the plugin, or leave its distribution out of "
                "BATON_LOAD_PLUGINS."
            ) from exc
        warnings.warn(
            f"{what} failed to load and was skipped: {detail}. Other runners keep working; "
            "`baton plugins` shows the traceback. Set BATON_STRICT_PLUGINS=1 to make this an "
            "error, or leave the distribution out of BATON_LOAD_PLUGINS.",
            BatonPluginWarning,
            stacklevel=5,
        )

    # -- lookup -------------------------------------------------------------------

    def runner_info(self, name: str) -> RunnerInfo:
        info = self.runners.get(name)
        if info is not None:
            return info
        if name in self.conflicts:
            raise PluginLoadError(
                _conflict_message(f"a task runner named {name!r}", self.conflicts[name])
            )
        raise UnknownRunnerError(self._unknown(f"Unknown task runner {name!r}.", name))

    def scheme_info(self, scheme: str, url: str) -> RunnerInfo:
        key = f"{scheme}://"
        info = self.schemes.get(key)
        if info is not None:
            return info
        if key in self.conflicts:
            raise PluginLoadError(_conflict_message(f"the URL scheme {key!r}", self.conflicts[key]))
        # The keys of `schemes` already end in "://".
        accepted = ", ".join(f"{s} ({i.name})" for s, i in sorted(self.schemes.items()))
        head = f"No installed task runner accepts {url!r}: none claims the URL scheme {key!r}."
        if accepted:
            head += f" Installed runners accept: {accepted}."
        raise UnknownRunnerError(self._unknown(head, scheme))

    def _unknown(self, head: str, name: str) -> str:
        installed = ", ".join(sorted(self.runners)) or "none"
        text = f"{head} Installed runners: {installed}."
        skipped = [p for p in self.plugins if p.skipped]
        broken = [p for p in self.plugins if p.error]
        if broken:
            names = ", ".join(f"{p.name} ({p.distribution})" for p in broken)
            text += f" Plugins that failed to load: {names}; `baton plugins` shows why."
        if skipped:
            names = ", ".join(sorted({p.distribution for p in skipped}))
            text += f" Installed but not in BATON_LOAD_PLUGINS, so not loaded: {names}."
        hint = KNOWN_PLUGINS.get(name)
        present = {p.distribution for p in skipped + broken}
        if hint is not None and f"baton-{name}" not in present:
            # Last, so that the command ends the message and copies cleanly.
            text += f" The {name!r} runner is a plugin; install it with: {hint}"
        return text


_registry_lock = threading.RLock()
_registries: dict[tuple[frozenset[str] | None, bool], _Registry] = {}
_loading = threading.local()


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def _dist_name(ep: Any) -> str:
    dist = ep.dist
    return str(dist.metadata["Name"]) if dist is not None else "?"


def _registry() -> _Registry:
    from baton._settings import get_settings

    settings = get_settings()
    allow: frozenset[str] | None = None
    if settings.load_plugins is not None:
        allow = frozenset(_norm(n) for n in settings.load_plugins.split(",") if n.strip())
    key = (allow, settings.strict_plugins)
    registry = _registries.get(key)
    if registry is None:
        with _registry_lock:
            registry = _registries.get(key)
            if registry is None:
                if getattr(_loading, "active", False):
                    raise PluginLoadError(
                        "A plugin looked up task runners or plugins while plugins were still "
                        "loading (at import, or in register_runners). Do that later, for "
                        "example when a flow runs."
                    )
                _loading.active = True
                try:
                    registry = _registries[key] = _Registry(allow, settings.strict_plugins)
                finally:
                    _loading.active = False
    return registry


def reset() -> None:
    """Forget discovered plugins, so the next lookup discovers them again (after
    installing a plugin into the running process, or in tests)."""
    with _registry_lock:
        _registries.clear()


def plugin_manager() -> pluggy.PluginManager:
    """The pluggy plugin manager holding every loaded plugin."""
    return _registry().pm


def list_runners() -> list[RunnerInfo]:
    """Every runner that can be selected by name, sorted by name.

    >>> from baton import list_runners
    >>> "thread" in [r.name for r in list_runners()]
    True
    """
    return sorted(_registry().runners.values(), key=lambda r: r.name)


def list_conflicts() -> dict[str, list[RunnerInfo]]:
    """Runner names (and ``"scheme://"`` URL schemes) that more than one plugin claims,
    with every claim. Selecting one of them raises an error naming the plugins."""
    return {k: list(v) for k, v in sorted(_registry().conflicts.items())}


def list_plugins() -> list[PluginInfo]:
    """Every discovered plugin entry point, with its status and load error."""
    return list(_registry().plugins)


def lookup_runner(spec: str) -> RunnerInfo:
    """The registration behind a runner name or URL, without building the runner.

    Raises `UnknownRunnerError` (listing the installed runners) when nothing claims it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownRunnerError(
            f"A task runner name must be a non-empty string such as 'thread', got {spec!r}."
        )
    spec = spec.strip()
    registry = _registry()
    if "://" in spec:
        return registry.scheme_info(spec.split("://", 1)[0].lower(), spec)
    return registry.runner_info(spec)


def get_runner(name: str, **options: Any) -> TaskRunner:
    """A new, unstarted runner chosen by name (or URL), built with `options`.

    Pass it to ``@flow(task_runner=...)``; each flow run works on its own copy.

    >>> from baton import get_runner
    >>> get_runner("thread", max_workers=2)
    <ThreadRunner max_workers=2 new>
    """
    return create_runner(name, **options)


def create_runner(spec: str, **options: Any) -> TaskRunner:
    info = lookup_runner(spec)
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


def resolve_task_runner(spec: Any) -> tuple[TaskRunner, bool]:
    """The runner a flow run uses for `spec`, and whether the flow run owns it
    (starts and shuts it down)."""
    if spec is None:
        from baton._settings import get_settings

        return create_runner(get_settings().task_runner), True
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


def _observes_task_runs(plugin: object) -> bool:
    from baton import _logging

    if plugin is _logging:
        return _logging.enabled()
    check = getattr(plugin, "observes_task_runs", None)
    if check is None:
        return True
    try:
        return bool(check())
    except Exception:
        logger.exception("observes_task_runs() of plugin %r raised; leaving it out", plugin)
        return False


def make_observer(registry_pm: pluggy.PluginManager) -> Callable[[TaskRun, State], None] | None:
    """The per-task observer callable for a flow run, or None when nothing listens.

    A plugin whose ``observes_task_runs()`` returns False as the flow run starts
    (the built-in logging below INFO, the progress bar off a terminal) is left out
    of the caller, so it costs nothing per task.
    """
    impls = registry_pm.hook.task_run_state_changed.get_hookimpls()
    active = [impl for impl in impls if _observes_task_runs(impl.plugin)]
    if not active:
        return None
    if any(impl.hookwrapper or impl.wrapper for impl in active):
        idle = [impl.plugin for impl in impls if impl not in active]
        hook: Any = registry_pm.subset_hook_caller("task_run_state_changed", remove_plugins=idle)

        def observe_all(task_run: TaskRun, state: State) -> None:
            try:
                hook(task_run=task_run, state=state)
            except Exception:
                logger.exception("A task_run_state_changed hook raised for %r", task_run)

        return observe_all
    # Plain implementations are called directly, in pluggy's order (the last registered
    # first): this is the per-task path, and one raising must not silence the others.
    calls = [_positional(impl.function, impl.argnames) for impl in reversed(active)]
    if len(calls) == 1:
        [call] = calls

        def observe_one(task_run: TaskRun, state: State) -> None:
            try:
                call(task_run, state)
            except Exception:
                logger.exception("A task_run_state_changed hook raised for %r", task_run)

        return observe_one

    def observe(task_run: TaskRun, state: State) -> None:
        for call in calls:
            try:
                call(task_run, state)
            except Exception:
                logger.exception("A task_run_state_changed hook raised for %r", task_run)

    return observe


def _positional(
    function: Callable[..., object], argnames: Sequence[str]
) -> Callable[[TaskRun, State], object]:
    """`function` called with the hook arguments it asks for (a subset, in any order)."""
    names = tuple(argnames)
    if names == ("task_run", "state"):
        return function
    if names == ("state", "task_run"):
        return lambda task_run, state: function(state, task_run)
    if names == ("task_run",):
        return lambda task_run, state: function(task_run)
    if names == ("state",):
        return lambda task_run, state: function(state)
    return lambda task_run, state: function()
