"""Plugin discovery (entry points, guarded one by one) and the runner registry."""

from __future__ import annotations

import importlib
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
    "list_plugins",
    "list_runners",
    "plugin_manager",
    "resolve_task_runner",
]

ENTRY_POINT_GROUP = "baton.plugins"
CORE_DISTRIBUTION = "baton-core"
logger = logging.getLogger("baton")

# First-party runners that live in their own distributions: what to install.
KNOWN_PLUGINS = {
    "dask": 'pip install "baton-core[dask]"',
    "ray": 'pip install "baton-core[ray]"',
    "process": "pip install --upgrade baton-core",
}


class BatonPluginWarning(UserWarning):
    """A plugin failed to load and was skipped."""


@dataclass(frozen=True)
class PluginInfo:
    """A plugin entry point as discovered, with its load error if it failed."""

    name: str
    distribution: str
    version: str
    module: str
    error: str | None = None
    traceback: str | None = None
    skipped: bool = False

    @property
    def loaded(self) -> bool:
        return self.error is None and not self.skipped


@dataclass
class RunnerInfo:
    """A registered runner: its name, where it comes from, and how to build it."""

    name: str
    target: type[TaskRunner] | str
    plugin: str
    distribution: str
    version: str
    url_schemes: tuple[str, ...] = ()
    _cls: type[TaskRunner] | None = field(default=None, repr=False)

    def load(self) -> type[TaskRunner]:
        """Import the runner class (lazy references are imported here, once)."""
        if self._cls is None:
            target = self.target
            if isinstance(target, str):
                module_name, _, attr = target.partition(":")
                try:
                    module = importlib.import_module(module_name)
                    cls = getattr(module, attr)
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
                    f"Task runner {self.name!r} from plugin {self.plugin!r} is {cls!r}, "
                    "which is not a baton.TaskRunner subclass."
                )
            self._cls = cls
        return self._cls

    @property
    def capabilities(self) -> list[str]:
        try:
            return sorted(str(c) for c in self.load().capabilities)
        except BatonError:
            return []


class _Registry:
    def __init__(self, allow: frozenset[str] | None, strict: bool) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.runners: dict[str, RunnerInfo] = {}
        self.schemes: dict[str, RunnerInfo] = {}
        self.plugins: list[PluginInfo] = []
        self._load(allow, strict)

    def _load(self, allow: frozenset[str] | None, strict: bool) -> None:
        from importlib import metadata

        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        origins: dict[str, PluginInfo] = {}
        for ep in sorted(entry_points, key=lambda e: (_dist_name(e) != CORE_DISTRIBUTION, e.name)):
            dist = _dist_name(ep)
            version = ep.dist.version if ep.dist is not None else "?"
            if dist != CORE_DISTRIBUTION and allow is not None and _norm(dist) not in allow:
                self.plugins.append(PluginInfo(ep.name, dist, version, ep.value, skipped=True))
                continue
            if self.pm.has_plugin(ep.name):
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:
                self._failed(ep.name, dist, version, ep.value, exc, strict)
                continue
            info = PluginInfo(ep.name, dist, version, ep.value)
            self.plugins.append(info)
            origins[ep.name] = info
        # Call each plugin's register_runners on its own, so one that raises is
        # reported without hiding the runners of the others.
        for name, info in origins.items():
            plugin = self.pm.get_plugin(name)
            others = [p for p in self.pm.get_plugins() if p is not plugin]
            caller = self.pm.subset_hook_caller("register_runners", remove_plugins=others)
            try:
                caller(register=self._register_callback(info))
            except UnknownRunnerError:
                raise
            except Exception as exc:
                self.plugins.remove(info)
                self.pm.unregister(name=name)
                self._failed(name, info.distribution, info.version, info.module, exc, strict)

    def _failed(
        self, name: str, dist: str, version: str, module: str, exc: Exception, strict: bool
    ) -> None:
        detail = f"{type(exc).__name__}: {exc}"
        self.plugins.append(
            PluginInfo(name, dist, version, module, error=detail, traceback=traceback.format_exc())
        )
        message = (
            f"Baton plugin {name!r} ({dist} {version}) failed to load and was skipped: {detail}. "
            "Other runners keep working; `baton plugins` shows the traceback. Set "
            "BATON_STRICT_PLUGINS=1 to make this an error, or leave the distribution out "
            "of BATON_LOAD_PLUGINS."
        )
        if strict:
            raise PluginLoadError(message.replace(" and was skipped", "")) from exc
        warnings.warn(message, BatonPluginWarning, stacklevel=4)

    def _register_callback(self, origin: PluginInfo) -> Callable[..., None]:
        def register(
            name: str, runner: type[TaskRunner] | str, *, url_schemes: Sequence[str] = ()
        ) -> None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"register(): name must be a non-empty string, got {name!r}")
            if not isinstance(runner, (str, type)):
                raise TypeError(
                    f"register(): runner must be a TaskRunner subclass or a 'module:Class' "
                    f"string, got {runner!r}"
                )
            existing = self.runners.get(name)
            if existing is not None:
                raise UnknownRunnerError(
                    f"Two plugins register a task runner named {name!r}: plugin "
                    f"{existing.plugin!r} ({existing.distribution}) and plugin "
                    f"{origin.name!r} ({origin.distribution}). Uninstall one, or leave it out "
                    "of BATON_LOAD_PLUGINS."
                )
            if isinstance(runner, type) and not url_schemes:
                url_schemes = getattr(runner, "url_schemes", ())
            info = RunnerInfo(
                name,
                runner,
                origin.name,
                origin.distribution,
                origin.version,
                tuple(url_schemes),
            )
            self.runners[name] = info
            for scheme in info.url_schemes:
                self.schemes.setdefault(scheme, info)

        return register

    def runner_info(self, name: str) -> RunnerInfo:
        info = self.runners.get(name)
        if info is None:
            raise UnknownRunnerError(self._unknown(name))
        return info

    def _unknown(self, name: str, what: str = "task runner") -> str:
        installed = ", ".join(sorted(self.runners)) or "none"
        text = f"Unknown {what} {name!r}. Installed runners: {installed}."
        hint = KNOWN_PLUGINS.get(name)
        if hint is not None and name != "process":
            text += f" The {name!r} runner is a plugin; install it with: {hint}"
        broken = [p for p in self.plugins if p.error]
        if broken:
            names = ", ".join(f"{p.name} ({p.distribution})" for p in broken)
            text += f" Plugins that failed to load: {names}; see `baton plugins`."
        return text


_registry_lock = threading.Lock()
_registries: dict[tuple[frozenset[str] | None, bool], _Registry] = {}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _dist_name(ep: Any) -> str:
    dist = ep.dist
    return dist.metadata["Name"] if dist is not None else "?"


def _registry() -> _Registry:
    from baton._settings import get_settings

    settings = get_settings()
    allow: frozenset[str] | None = None
    if settings.load_plugins is not None:
        allow = frozenset(_norm(n.strip()) for n in settings.load_plugins.split(",") if n.strip())
    key = (allow, settings.strict_plugins)
    registry = _registries.get(key)
    if registry is None:
        with _registry_lock:
            registry = _registries.get(key)
            if registry is None:
                registry = _registries[key] = _Registry(allow, settings.strict_plugins)
    return registry


def reset() -> None:
    """Forget discovered plugins, so the next lookup discovers them again."""
    with _registry_lock:
        _registries.clear()


def plugin_manager() -> pluggy.PluginManager:
    """The pluggy plugin manager holding every loaded plugin."""
    return _registry().pm


def list_runners() -> list[RunnerInfo]:
    """Every registered runner, by name."""
    return sorted(_registry().runners.values(), key=lambda r: r.name)


def list_plugins() -> list[PluginInfo]:
    """Every discovered plugin entry point, with load errors."""
    return list(_registry().plugins)


def get_runner(name: str, **options: Any) -> TaskRunner:
    """A new, unstarted runner chosen by name (or URL) with options.

    >>> from baton import get_runner
    >>> get_runner("thread", max_workers=2)
    <ThreadRunner max_workers=2 new>
    """
    return create_runner(name, **options)


def create_runner(spec: str, **options: Any) -> TaskRunner:
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownRunnerError(
            f"A task runner name must be a non-empty string such as 'thread', got {spec!r}."
        )
    registry = _registry()
    spec = spec.strip()
    if "://" in spec:
        scheme = spec.split("://", 1)[0].lower()
        info = registry.schemes.get(scheme)
        if info is None:
            text = registry._unknown(scheme, "task runner URL scheme")
            raise UnknownRunnerError(
                text.replace("Installed runners", f"In {spec!r}: installed runners", 1)
            )
        cls = info.load()
        if options:
            raise TypeError(f"Options cannot be combined with a URL ({spec!r}).")
        return cls.from_url(spec)
    cls = registry.runner_info(spec).load()
    try:
        return cls(**options)
    except TypeError as exc:
        raise TypeError(f"Task runner {spec!r}: {exc}") from None


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


def make_observer(registry_pm: pluggy.PluginManager) -> Callable[[TaskRun, State], None] | None:
    """The per-task observer callable for a flow run, or None when nothing listens."""
    from baton import _logging

    hook: Any = registry_pm.hook.task_run_state_changed
    if not _logging.enabled():
        hook = registry_pm.subset_hook_caller("task_run_state_changed", remove_plugins=[_logging])
    if not hook.get_hookimpls():
        return None

    def observe(task_run: TaskRun, state: State) -> None:
        try:
            hook(task_run=task_run, state=state)
        except Exception:
            logger.exception("A task_run_state_changed hook raised for %r", task_run)

    return observe
