"""The `ray` runner: task runs as Ray tasks, on a local Ray or an existing cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, final

from baton import BatonError, Capability, InvalidOptionsError, RunnerClosedError, TaskRunner
from baton.runners import batch_size_problem

if TYPE_CHECKING:
    from baton import TaskRun
    from typing_extensions import Self

    from baton_ray._driver import Driver

__all__ = ["RayTaskRunner"]

DEFAULT_MAX_PENDING = 1_000

# Options of ray.init that this runner sets itself, and what to pass instead.
_OWN_OPTIONS = {"address": "RayTaskRunner(address=...)"}

# A Ray session this process started for runners: shut down when the last runner that
# uses it shuts down. A session started by anyone else is left as it is.
_session_lock = threading.Lock()
_session_users = 0
_session_ours = False
_sessions_ended = 0  # how many Ray sessions this module started and shut down


@final
class RayTaskRunner(TaskRunner):
    """Runs task runs as Ray tasks: on a local Ray started for the flow run, on the Ray
    this process is already connected to, or on a cluster given by address.

    `address` is what ``ray.init`` takes: None starts a local Ray (unless this process
    already called ``ray.init``, whose connection is then used and left open);
    ``"auto"`` or ``"HOST:PORT"`` connects to a running cluster; ``"ray://HOST:PORT"``
    connects through Ray Client. `init_kwargs` go to ``ray.init`` (``num_cpus``,
    ``runtime_env``, ...). The runner shuts down only a Ray it started.

    `max_pending` caps how many runs are in Ray at once (queued or running there); the
    others wait in the runner, so that mapping a huge input keeps the cluster's
    queues and object store, and this process, small.

    `batch_size`: runs that are ready together (the runs of a ``.map``) and have no
    `timeout_seconds` go to Ray in batches, one Ray task each, sized from how long
    the task's runs take; None (the default) sizes them so, 1 sends each run as its
    own Ray task, n puts up to n runs in a batch. A task's own ``batch_size`` wins.

    >>> from baton import flow, task
    >>> @task
    ... def square(x):
    ...     return x * x
    >>> local = {"num_cpus": 2, "include_dashboard": False}
    >>> @flow(task_runner=RayTaskRunner(init_kwargs=local))
    ... def squares(n):
    ...     return square.map(range(n)).result()
    >>> squares(4)
    [0, 1, 4, 9]
    """

    name = "ray"
    capabilities = frozenset(
        {
            Capability.ASYNC,
            Capability.NESTED,
            Capability.PROCESSES,
            Capability.HARD_TIMEOUTS,
            Capability.CANCEL_RUNNING,
            Capability.CRASH_DETECTION,
            Capability.CONNECT,
            Capability.NATIVE_DEPENDENCIES,
            Capability.PRIORITIES,
            Capability.RESOURCES,
            Capability.LIMITS,
        }
    )
    url_schemes = ("ray",)

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        batch_size: int | None = None,
    ) -> None:
        problems: list[str] = []
        if address is not None and (
            not isinstance(address, str) or not address.strip() or address != address.strip()
        ):
            problems.append(
                "  address: must be None (start a local Ray), 'auto', 'HOST:PORT' or "
                f"'ray://HOST:PORT' (got {address!r})"
            )
        if init_kwargs is not None:
            if not isinstance(init_kwargs, Mapping) or not all(
                isinstance(k, str) for k in init_kwargs
            ):
                problems.append(
                    f"  init_kwargs: must be a dict of ray.init options, such as "
                    f"{{'num_cpus': 4}} (got {init_kwargs!r})"
                )
            else:
                for key, instead in _OWN_OPTIONS.items():
                    if key in init_kwargs:
                        problems.append(f"  init_kwargs: pass {key!r} as {instead}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            problems.append(f"  max_pending: must be a whole number >= 1 (got {max_pending!r})")
        batch_problem = batch_size_problem(batch_size)
        if batch_problem is not None:
            problems.append(f"  {batch_problem}")
        if problems:
            raise InvalidOptionsError(
                "Invalid options for task runner 'ray':\n" + "\n".join(problems)
            )
        self.address = address
        self.init_kwargs: dict[str, Any] = dict(init_kwargs or {})
        self.max_pending = max_pending
        self.batch_size = batch_size
        self._driver: Driver | None = None
        self._session = False

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``ray://HOST:PORT``: a cluster reached through Ray Client (as ``ray.init``
        takes it); ``ray://`` alone: the Ray this process is connected to, else a new
        local one."""
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidOptionsError(
                f"Invalid URL for task runner 'ray': {url!r} ({exc}). It takes the form "
                "ray://HOST:PORT, such as ray://127.0.0.1:10001."
            ) from None
        if (
            parts.scheme.lower() != "ray"
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or (parts.netloc and (not parts.hostname or port is None))
        ):
            raise InvalidOptionsError(
                f"Invalid URL for task runner 'ray': {url!r}. It takes the form "
                "ray://HOST:PORT, such as ray://127.0.0.1:10001 (Ray Client's port), or "
                "ray:// for the local Ray."
            )
        if not parts.netloc:
            return cls()
        return cls(address=f"ray://{parts.netloc}")

    # -- lifecycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        from baton_ray._driver import Driver

        self._session = _join_session(self.address, self.init_kwargs)
        self._driver = Driver(self.max_pending, _session_watch(), self.batch_size)

    def on_shutdown(self, wait: bool) -> None:
        driver, self._driver = self._driver, None
        try:
            if driver is not None:
                driver.close(wait)
        finally:
            if self._session:
                self._session = False
                _leave_session()

    # -- work -----------------------------------------------------------------------------

    def submit(self, run: TaskRun) -> None:
        driver = self._driver
        if driver is None:
            raise RunnerClosedError(f"Task runner 'ray' is not started ({self._status}).")
        driver.submit(run)

    def cancel(self, run: TaskRun) -> bool:
        driver = self._driver
        return driver is not None and driver.cancel(run)

    def _waitables(self) -> list[Any]:
        """What a worker's main thread waits in while it waits for these runs."""
        driver = self._driver
        return driver.waitables() if driver is not None else []

    def __repr__(self) -> str:
        where = self.address or "local"
        return f"<RayTaskRunner {where} max_pending={self.max_pending} {self._status}>"


def _join_session(address: str | None, init_kwargs: dict[str, Any]) -> bool:
    """Make sure this process is connected to Ray; True if the connection is one this
    module opened (and so closes once its last runner shuts down)."""
    global _session_users, _session_ours
    import ray

    with _session_lock:
        if ray.is_initialized():
            if not _session_ours:
                _check_same_cluster(address)
                return False
            _session_users += 1
            return True
        kwargs = dict(init_kwargs)
        if address is None:
            _share_import_path(kwargs)
        else:
            kwargs["address"] = address
        try:
            with _interruptible_start(starts_ray=address is None):
                ray.init(**kwargs)
        except Exception as exc:
            where = f"connect to the Ray cluster at {address!r}" if address else "start Ray"
            raise BatonError(
                f"Task runner 'ray' could not {where}: {type(exc).__name__}: {exc}"
            ) from exc
        _session_ours = True
        _session_users = 1
        return True


@contextlib.contextmanager
def _interruptible_start(starts_ray: bool) -> Iterator[None]:
    """Let a Ctrl-C interrupt ``ray.init`` starting a local Ray at once, and leave no
    Ray process behind.

    Ray's processes start in this process group, so a Ctrl-C at the terminal would
    reach them too: killed half-way through their start, they would leave ``ray.init``
    waiting on them for half a minute, and some of them running. Here they start with
    SIGINT blocked (a process inherits the signal mask of the thread that starts it),
    while a thread of this process that does not block it takes the signal, so that
    the KeyboardInterrupt reaches ``ray.init`` as usual; the processes it started are
    then stopped. Only in the main thread, where Python handles signals.
    """
    if (
        not starts_ray
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "pthread_sigmask")
    ):
        yield
        return
    psutil = _psutil()
    before = _children(psutil)
    idle = threading.Event()
    catcher = threading.Thread(target=idle.wait, name="baton-ray-sigint", daemon=True)
    catcher.start()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    except BaseException as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if not isinstance(exc, Exception):
            _stop_started(psutil, before)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        idle.set()


def _psutil() -> Any:
    try:
        import importlib

        return importlib.import_module("psutil")  # Ray ships it
    except ImportError:
        return None


def _children(psutil: Any) -> set[int]:
    if psutil is None:
        return set()
    try:
        return {child.pid for child in psutil.Process().children()}
    except Exception:
        return set()


def _stop_started(psutil: Any, before: set[int]) -> None:
    """After an interrupted ``ray.init``: stop the Ray it started, and the processes it
    left (those that became this process's children meanwhile, with theirs)."""
    import ray

    try:
        ray.shutdown()
    except BaseException:
        pass
    if psutil is None:
        return
    try:
        started = [c for c in psutil.Process().children() if c.pid not in before]
        tree = [p for child in started for p in (child, *child.children(recursive=True))]
        for process in tree:
            with contextlib.suppress(Exception):
                process.kill()
        psutil.wait_procs(tree, timeout=5)
    except Exception:
        pass


def _leave_session() -> None:
    global _session_users, _session_ours, _sessions_ended
    import ray

    with _session_lock:
        _session_users -= 1
        if _session_users > 0 or not _session_ours:
            return
        _session_ours = False
        _sessions_ended += 1
        ray.shutdown()


def _session_watch() -> Callable[[], bool]:
    """Whether the Ray session connected now has ended since (results kept in its object
    store are gone with it)."""
    import ray

    ended = _sessions_ended

    def session_ended() -> bool:
        return _sessions_ended != ended or not ray.is_initialized()

    return session_ended


def _check_same_cluster(address: str | None) -> None:
    """A runner given an address, in a process already connected to Ray elsewhere, would
    silently run on the wrong cluster: refuse."""
    if address is None or address == "auto" or address.startswith("ray://"):
        return
    import ray

    try:
        connected = ray.get_runtime_context().gcs_address
    except Exception:  # a connection that does not say (Ray Client)
        return
    wanted = _host_port(address)
    if wanted is not None and connected and _host_port(connected) != wanted:
        raise BatonError(
            f"Task runner 'ray' was given address={address!r}, but this process is already "
            f"connected to the Ray cluster at {connected!r}; Ray connects a process to one "
            "cluster only. Call ray.shutdown() first, or leave out the address to use the "
            "connected cluster."
        )


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    if host in ("localhost", "::1", "[::1]"):
        host = "127.0.0.1"
    return host, int(port)


def _share_import_path(kwargs: dict[str, Any]) -> None:
    """Workers of a local Ray import modules by name with this process's sys.path, as
    the `process` runner's workers do (a module beside the script, a test module)."""
    runtime_env = dict(kwargs.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    if "PYTHONPATH" in env_vars:
        return
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    existing = os.environ.get("PYTHONPATH")
    env_vars["PYTHONPATH"] = os.pathsep.join([*paths, *([existing] if existing else [])])
    runtime_env["env_vars"] = env_vars
    kwargs["runtime_env"] = runtime_env
