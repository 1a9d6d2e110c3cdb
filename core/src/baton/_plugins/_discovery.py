"""Plugin discovery: entry points loaded one by one in a guard, the allow-list, strict
mode, and the registry of runner names and URL schemes that the plugins claim."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from baton import hookspecs
from baton._errors import BatonError, PluginLoadError, UnknownRunnerError
from baton._runner import TaskRunner

__all__ = [
    "CORE_DISTRIBUTION",
    "BatonPluginWarning",
    "PluginInfo",
    "RunnerInfo",
    "list_conflicts",
    "list_plugins",
    "list_runners",
    "loading",
    "plugin_manager",
    "registry",
    "reset",
    "warn",
]

ENTRY_POINT_GROUP = "baton.plugins"
CORE_DISTRIBUTION = "baton-core"

# Warnings are attributed to the first frame outside this directory: the user's code.
_PACKAGE_PREFIX = os.path.dirname(os.path.dirname(__file__)) + os.sep


class BatonPluginWarning(UserWarning):
    """A plugin failed to load and was skipped, a plugin claims a runner name that is
    taken, or ``BATON_LOAD_PLUGINS`` names a plugin that is not installed."""


def warn(message: str) -> None:
    """Warn with `BatonPluginWarning`, attributed to the first caller outside Baton."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, BatonPluginWarning, skip_file_prefixes=(_PACKAGE_PREFIX,))
        return
    level = 2  # the caller of this function
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_PREFIX):
        frame = frame.f_back
        level += 1
    warnings.warn(message, BatonPluginWarning, stacklevel=level)


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


def conflict_message(what: str, claims: Sequence[RunnerInfo]) -> str:
    """The error for `what` (a runner name or URL scheme) claimed by every one of `claims`."""
    who = " and ".join(info.origin for info in claims)
    return (
        f"Two plugins register {what}: {who}. Uninstall one of them, or leave its "
        "distribution out of BATON_LOAD_PLUGINS."
    )


class Registry:
    """What discovery found for one allow-list and strictness: the loaded plugins, the
    runner names and URL schemes they claim, and the claims in conflict."""

    def __init__(self, allow: frozenset[str] | None, strict: bool) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.strict = strict
        self.allow = allow
        self.runners: dict[str, RunnerInfo] = {}
        self.schemes: dict[str, RunnerInfo] = {}
        # name (or "scheme://") -> every claim on it, when more than one plugin claims it
        self.conflicts: dict[str, list[RunnerInfo]] = {}
        # (name, the built-in's claim, the plugin's) for each built-in name a plugin claims too
        self.shadowed: list[tuple[str, RunnerInfo, RunnerInfo]] = []
        self.plugins: list[PluginInfo] = []
        self._load()

    # -- discovery ----------------------------------------------------------------

    def _load(self) -> None:
        from importlib import metadata

        loaded: list[tuple[str, PluginInfo]] = []
        seen: set[tuple[str, str]] = set()
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        # The core's own entry points first, so its runners keep their names' first claim.
        for ep in sorted(entry_points, key=lambda e: (dist_name(e) != CORE_DISTRIBUTION, e.name)):
            dist = dist_name(ep)
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
        self._check_allow_list({_norm(dist) for dist, _ in seen})

    def _check_allow_list(self, installed: set[str]) -> None:
        """A name in the allow-list that matches no distribution is most likely a typo,
        which would otherwise leave the plugin out without a word."""
        unmatched = sorted((self.allow or frozenset()) - installed)
        if not unmatched:
            return
        plugins = sorted({p.distribution for p in self.plugins} - {CORE_DISTRIBUTION})
        message = (
            f"BATON_LOAD_PLUGINS names {', '.join(map(repr, unmatched))}, which matches no "
            f"installed plugin distribution. Installed plugins: {', '.join(plugins) or 'none'}."
        )
        if self.strict:
            raise PluginLoadError(message)
        warn(message)

    def _check_hooks(self, plugin: object, key: str) -> None:
        """A hook name with a typo would otherwise be silently never called."""
        unknown = [c.name for c in self.pm.get_hookcallers(plugin) or () if not c.has_spec()]
        if unknown:
            # pm.hook also holds a caller for each misspelled name: list the specified only.
            specified = (n for n in dir(self.pm.hook) if not n.startswith("_"))
            known = ", ".join(sorted(n for n in specified if getattr(self.pm.hook, n).has_spec()))
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
        if not self._claim(self.runners, info.name, info, f"a task runner named {info.name!r}"):
            return  # a built-in's name: the runner is ignored, its URL schemes too
        for scheme in info.url_schemes:
            self._claim(self.schemes, f"{scheme}://", info, f"the URL scheme '{scheme}://'")

    def _claim(self, table: dict[str, RunnerInfo], key: str, info: RunnerInfo, what: str) -> bool:
        """Record `info`'s claim on `key`; False when a built-in holds `key` already."""
        existing = self.conflicts.get(key)
        taken = table.get(key)
        if taken is not None and taken.distribution == CORE_DISTRIBUTION:
            # A plugin must not take a built-in's name: every flow on the default runner
            # would fail. The built-in keeps it.
            self.shadowed.append((key, taken, info))
            message = (
                f"{info.origin.capitalize()} registers {what}, which is the name of a built-in "
                f"runner ({taken.origin}). The built-in keeps the name and the plugin's claim "
                "is ignored; rename the plugin's runner, uninstall the plugin, or leave its "
                "distribution out of BATON_LOAD_PLUGINS."
            )
            if self.strict:
                raise PluginLoadError(message)
            warn(message)
            return False
        if existing is not None:
            existing.append(info)
        elif taken is not None:
            self.conflicts[key] = [table.pop(key), info]
        else:
            table[key] = info
            return True
        message = conflict_message(what, self.conflicts[key])
        if self.strict:
            raise PluginLoadError(message)
        warn(f"{message} Selecting it raises an error until then.")
        return True

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
        warn(
            f"{what} failed to load and was skipped: {detail}. Other runners keep working; "
            "`baton plugins` shows the traceback. Set BATON_STRICT_PLUGINS=1 to make this an "
            "error, or leave the distribution out of BATON_LOAD_PLUGINS."
        )


_registry_lock = threading.RLock()
_registries: dict[tuple[frozenset[str] | None, bool], Registry] = {}
_loading = threading.local()


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def dist_name(ep: Any) -> str:
    """The name of the distribution that publishes entry point `ep`."""
    dist = ep.dist
    return str(dist.metadata["Name"]) if dist is not None else "?"


def loading() -> bool:
    """True while this thread discovers plugins (a plugin's import, its register_runners)."""
    return bool(getattr(_loading, "active", False))


def registry(*, strict: bool | None = None) -> Registry:
    """The registry for the current settings, discovering plugins on first use.

    `strict` overrides ``BATON_STRICT_PLUGINS``: ``baton plugins`` discovers without it
    to list what strict mode refuses.
    """
    from baton._settings import get_settings

    settings = get_settings()
    allow: frozenset[str] | None = None
    if settings.load_plugins is not None:
        allow = frozenset(_norm(n) for n in settings.load_plugins.split(",") if n.strip())
    if strict is None:
        strict = settings.strict_plugins
    key = (allow, strict)
    found = _registries.get(key)
    if found is None:
        with _registry_lock:
            found = _registries.get(key)
            if found is None:
                if loading():
                    raise PluginLoadError(
                        "A plugin looked up task runners or plugins while plugins were still "
                        "loading (at import, or in register_runners). Do that later, for "
                        "example when a flow runs."
                    )
                _loading.active = True
                try:
                    found = _registries[key] = Registry(allow, strict)
                finally:
                    _loading.active = False
    return found


def reset() -> None:
    """Forget discovered plugins, so the next lookup discovers them again (after
    installing a plugin into the running process, or in tests)."""
    with _registry_lock:
        _registries.clear()


def plugin_manager() -> pluggy.PluginManager:
    """The pluggy plugin manager holding every loaded plugin."""
    return registry().pm


def list_runners() -> list[RunnerInfo]:
    """Every runner that can be selected by name, sorted by name.

    >>> from baton import list_runners
    >>> "thread" in [r.name for r in list_runners()]
    True
    """
    return sorted(registry().runners.values(), key=lambda r: r.name)


def list_conflicts() -> dict[str, list[RunnerInfo]]:
    """Runner names (and ``"scheme://"`` URL schemes) that more than one plugin claims,
    with every claim. Selecting one of them raises an error naming the plugins."""
    return {k: list(v) for k, v in sorted(registry().conflicts.items())}


def list_plugins() -> list[PluginInfo]:
    """Every discovered plugin entry point, with its status and load error."""
    return list(registry().plugins)
