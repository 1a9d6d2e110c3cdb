"""The `dask` runner: task runs as Dask tasks, on a cluster it starts or one it connects to."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, final
from urllib.parse import urlsplit

from baton import BatonError, Capability, InvalidOptionsError, RunnerClosedError, TaskRunner

from baton_dask._options import (
    RunnerOptions,
    check_feasible,
    placement_for,
    task_placement,
    validate,
)
from baton_dask._session import Session

if TYPE_CHECKING:
    from os import PathLike

    from baton import TaskRun
    from distributed import Client
    from typing_extensions import Self

__all__ = ["DaskTaskRunner", "get_dask_client"]


@final
class DaskTaskRunner(TaskRunner):
    """Runs task runs on a Dask cluster: one it connects to by `address`, or one it
    starts from `cluster_class` (a `distributed.LocalCluster` by default).

    - `address`: a running scheduler, such as ``"tcp://10.0.0.5:8786"``. The runner
      connects to it and leaves it running when it shuts down.
    - `cluster_class`: the cluster to start, as a class (or a function returning a
      cluster) or an import path such as ``"dask_jobqueue.SLURMCluster"``, built
      with `cluster_kwargs`. With `adapt_kwargs`, the cluster scales itself
      (``cluster.adapt(**adapt_kwargs)``). The runner closes a cluster it started.
    - `client_kwargs`: passed to ``distributed.Client``, such as
      ``{"security": Security(...)}`` for TLS.
    - `performance_report_path`: write a Dask performance report (HTML) of the
      runner's whole life there; needs the ``bokeh`` package.
    - `no_workers_timeout`: when the cluster has had no worker at all for this many
      seconds (60 by default) while runs wait on it, those runs crash with a message
      that says so, rather than wait for ever; None waits for ever (an adaptive
      cluster that starts its workers from zero, slowly, may want that).
    - `batch_size`: runs that are ready together (the runs of a ``.map``) go to Dask
      in batches, one Dask task each, sized from how long the task's runs take (see
      the dask runner page of the docs); None (the default) sizes them so, 1
      sends each run as its own Dask task, n puts up to n runs in a batch. A task's
      own ``batch_size`` option wins.

    A cluster the runner starts does not run a task again after its worker died
    (Dask's ``distributed.scheduler.allowed-failures`` is 0 there): the run is
    retried as its task's `retries` say, by Baton.

    Upstream results move worker to worker: a run that takes another's future gets
    the result on its worker, never through this process. Results come here only
    when read. Install ``baton-dask`` on every worker.

    >>> from baton import flow, task
    >>> @task
    ... def square(x):
    ...     return x * x
    >>> local = {"n_workers": 2, "processes": True, "dashboard_address": ":0"}
    >>> runner = DaskTaskRunner(cluster_kwargs=local)
    >>> @flow(task_runner=runner)
    ... def squares(n):
    ...     return square.map(range(n)).result()
    >>> squares(4)
    [0, 1, 4, 9]
    """

    name = "dask"
    capabilities = frozenset(
        {
            Capability.ASYNC,
            Capability.NESTED,
            Capability.PROCESSES,
            Capability.CRASH_DETECTION,
            Capability.CONNECT,
            Capability.NATIVE_DEPENDENCIES,
            Capability.PRIORITIES,
            Capability.RESOURCES,
            Capability.LIMITS,
        }
    )
    url_schemes = ("dask", "dask+tls")

    def __init__(
        self,
        address: str | None = None,
        *,
        cluster_class: type[Any] | Callable[..., Any] | str | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
        client_kwargs: dict[str, Any] | None = None,
        performance_report_path: str | PathLike[str] | None = None,
        no_workers_timeout: float | None = 60.0,
        batch_size: int | None = None,
    ) -> None:
        self._options = validate(
            {
                "no_workers_timeout": no_workers_timeout,
                "batch_size": batch_size,
                "address": address,
                "cluster_class": cluster_class,
                "cluster_kwargs": cluster_kwargs,
                "adapt_kwargs": adapt_kwargs,
                "client_kwargs": client_kwargs,
                "performance_report_path": performance_report_path,
            }
        )
        self._session: Session | None = None
        self._feasible: set[tuple[tuple[str, float], ...]] = set()
        self._client: Client | None = None
        self._cluster: Any = None
        self._report: Any = None

    @classmethod
    def _on_worker(cls) -> DaskTaskRunner:
        """The runner of runs that tasks submit on a worker: it sends them to the worker's
        own cluster, through the worker's client, which it never closes."""
        runner = cls.__new__(cls)
        runner._options = RunnerOptions()
        runner._client = runner._cluster = runner._report = None
        # Runs submitted by a task mostly wait for one another (levels of nested maps):
        # each goes as its own Dask task, as before batches.
        runner._session = Session(None, "on a Dask worker", batch_size=1)
        runner._status = "started"
        return runner

    # -- options ------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        """The scheduler address the runner connects to (None: it starts a cluster)."""
        return self._options.address

    @property
    def client(self) -> Client:
        """The runner's Dask client, while it is started."""
        client = self._client
        if client is None:
            raise RunnerClosedError(
                f"Task runner 'dask' is not started ({self._status}): it has no Dask client."
            )
        return client

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``dask://HOST:PORT`` (tcp) or ``dask+tls://HOST:PORT``: a running scheduler."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            scheme not in ("dask", "dask+tls")
            or not parts.hostname
            or port is None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise InvalidOptionsError(
                f"Invalid URL for task runner 'dask': {url!r}. It takes the form "
                "dask://HOST:PORT (or dask+tls://HOST:PORT) naming a running scheduler, such "
                "as dask://127.0.0.1:8786. To start a cluster instead, select the runner by "
                "name: task_runner='dask'."
            )
        protocol = "tls" if scheme == "dask+tls" else "tcp"
        return cls(f"{protocol}://{parts.netloc}")

    def duplicate(self) -> Self:
        return type(self)(**dict(self._options))

    # -- lifecycle ----------------------------------------------------------------

    def on_start(self) -> None:
        import distributed

        make_client: Any = distributed.Client
        options = self._options
        client_kwargs: dict[str, Any] = {"set_as_default": False, **(options.client_kwargs or {})}
        if options.performance_report_path is not None:
            _needs_bokeh()
        cluster = None
        if options.address is not None:
            target: Any = options.address
        else:
            cluster = target = self._start_cluster()
        try:
            client = make_client(target, **client_kwargs)
        except Exception as exc:
            if cluster is not None:
                _close_quietly(cluster)
            where = (
                f"the Dask scheduler at {options.address}"
                if options.address is not None
                else f"the cluster it started ({type(cluster).__name__})"
            )
            raise BatonError(
                f"Task runner 'dask' could not connect to {where}: {type(exc).__name__}: "
                f"{exc}. Check that the scheduler is running and reachable (start one with "
                "`dask scheduler`), and that client_kwargs (security for TLS) match it."
            ) from exc
        if options.performance_report_path is not None:
            make_report: Any = distributed.performance_report
            report = make_report(filename=options.performance_report_path)
            try:
                with client.as_current():
                    report.__enter__()
            except Exception as exc:
                _close_quietly(client)
                if cluster is not None:
                    _close_quietly(cluster)
                raise BatonError(
                    f"Task runner 'dask' could not start its performance report: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._report = report
        self._client, self._cluster = client, cluster
        self._session = Session(
            client, self._label(), options.no_workers_timeout, options.batch_size
        )

    def _start_cluster(self) -> Any:
        import dask

        options = self._options
        factory = options.cluster_class
        if factory is None:
            from distributed import LocalCluster

            factory = LocalCluster
        kwargs = options.cluster_kwargs or {}
        name = getattr(factory, "__name__", repr(factory))
        try:
            with dask.config.set(_started_cluster_config()):
                cluster = factory(**kwargs)
        except Exception as exc:
            raise BatonError(
                f"Task runner 'dask' could not start its cluster, {name}(**{kwargs!r}): "
                f"{type(exc).__name__}: {exc}{_unguarded_main_hint()}"
            ) from exc
        _no_gc_callback_here()
        if options.adapt_kwargs is not None:
            try:
                cluster.adapt(**options.adapt_kwargs)
            except Exception as exc:
                _close_quietly(cluster)
                raise BatonError(
                    f"Task runner 'dask' could not make its cluster adaptive, "
                    f"{name}.adapt(**{options.adapt_kwargs!r}): {type(exc).__name__}: {exc}"
                ) from exc
        return cluster

    def on_shutdown(self, wait: bool) -> None:
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            # Ctrl-C: Baton reports the interrupt in one line; what Dask would log of the
            # shutdown (workers that took the signal too, tasks lost) is noise then.
            from baton_dask._preload import quiet_distributed

            with quiet_distributed():
                self._shut_down(wait)
        else:
            self._shut_down(wait)

    def _shut_down(self, wait: bool) -> None:
        session, self._session = self._session, None
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        report, self._report = self._report, None
        try:
            if session is not None:
                session.close(wait)
        finally:
            if client is not None:
                if report is not None:
                    try:
                        with client.as_current():
                            report.__exit__(None, None, None)
                    except Exception as exc:
                        import logging

                        logging.getLogger("baton").warning(
                            "Task runner 'dask' could not write its performance report: %s: %s",
                            type(exc).__name__,
                            exc,
                        )
                _close_quietly(client)
            if cluster is not None:
                _close_quietly(cluster)

    # -- work ---------------------------------------------------------------------

    def submit(self, run: TaskRun) -> None:
        session = self._session
        if session is None:
            raise RunnerClosedError(f"Task runner 'dask' is not started ({self._status}).")
        options = run.task.options
        placement = placement_for(options.tags)
        if run.priority or options.resources:
            # The task's own priority and resources, under what tags and blocks set.
            own = task_placement(run.priority, options.resources)
            placement = own if placement is None else own.merged(placement)
        if placement is not None and placement.resources and not placement.workers:
            check_feasible(run, placement.resources, session.client, self._feasible)
        session.submit(run, placement)

    def cancel(self, run: TaskRun) -> bool:
        """Drop the Dask task (and its dependents) of a run its future cancelled. A task
        already running on a worker runs to its end there (Dask cannot stop it); its
        result is dropped. For a run its future did not cancel, this is that cancel():
        Dask cannot stop one that runs (False; the runner does not declare
        `cancel-running`)."""
        if not run.future.done():
            # Called directly: as the run's own cancel(), which marks it CANCELLED if it
            # has not started (or gone in a batch) and calls back here.
            return run.future.cancel()
        session = self._session
        return session is not None and session.cancel(run)

    def _label(self) -> str:
        if self._options.address is not None:
            return f"scheduler {self._options.address}"
        factory = self._options.cluster_class
        return f"a {getattr(factory, '__name__', 'LocalCluster')} it started"

    def __repr__(self) -> str:
        if self._options.address is not None:
            where = f"address={self._options.address!r}"
        else:
            factory = self._options.cluster_class
            where = f"cluster={getattr(factory, '__name__', None) or 'LocalCluster'}"
        return f"<DaskTaskRunner {where} {self._status}>"


def _started_cluster_config() -> dict[str, Any]:
    """Dask settings of a cluster the runner starts: Dask does not run a task again after
    its worker died (Baton retries, as the task's retries say), and its worker
    processes leave Ctrl-C to the flow's process (see `baton_dask._preload`)."""
    import dask

    preload = dask.config.get("distributed.worker.preload", default=None) or []
    if isinstance(preload, str):
        preload = [preload]
    return {
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.preload": [*preload, "baton_dask._preload"],
    }


def _no_gc_callback_here() -> None:
    """A scheduler started in this process (a LocalCluster's) times every garbage
    collection from a gc callback, which then runs in whatever thread collects, the main
    one too: a Ctrl-C landing there is lost ("Exception ignored in ... _gc_callback"),
    all the likelier as many small runs end at once. Its diagnosis (a log line on long
    collections) is given up for the cluster the runner started."""
    try:
        from distributed import gc

        disable: Any = gc.disable_gc_diagnosis
        disable()
    except Exception:  # another version of distributed: nothing to turn off
        pass


def _unguarded_main_hint() -> str:
    """Dask starts worker processes by importing the main script again, so a script that
    runs its flow at the top level starts a cluster inside every worker, and the nannies
    fail with a message about bootstrapping that does not name the cause."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        return ""
    try:
        source = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if "__main__" in source:
        return ""
    return (
        f'. {path} has no `if __name__ == "__main__":` block: Dask starts its worker '
        "processes by importing the script again, so put the code that runs the flow "
        'under that guard (or pass cluster_kwargs={"processes": False})'
    )


def _close_quietly(resource: Any) -> None:
    try:
        resource.close()
    except Exception:  # already closed, or its scheduler is gone: nothing is left to free
        pass


def _needs_bokeh() -> None:
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        raise InvalidOptionsError(
            "Invalid options for task runner 'dask':\n  performance_report_path: a Dask "
            "performance report needs the bokeh package; install it (pip install bokeh) or "
            "leave the option out"
        )


@contextlib.contextmanager
def get_dask_client(timeout: float | None = None) -> Iterator[Client]:
    """The Dask client of the cluster that runs the current task (or flow), for Dask
    collections (``dask.array``, ``dask.dataframe``, ``dask.bag``) on that cluster.

    Inside a task on a Dask worker, it is the worker's client; for the duration of
    the block the task gives its worker thread back to Dask, so that what it
    computes cannot deadlock a full cluster. In a flow running on the ``dask``
    runner, it is the runner's client. Within the block the client is the current
    one, so ``.compute()`` runs on it.

    >>> from baton import task
    >>> @task
    ... def total(n):
    ...     import dask.bag as db
    ...     with get_dask_client():
    ...         return db.from_sequence(range(n), npartitions=4).sum().compute()
    """
    from distributed import get_client, get_worker

    try:
        get_worker()
    except ValueError:
        client = _flow_client()
        with client.as_current():
            yield client
        return
    from baton.runners import blocking_section

    client = get_client(timeout=timeout)
    with blocking_section(), client.as_current():
        yield client


def _flow_client() -> Client:
    from baton.runners import current_runner

    runner = current_runner()
    if isinstance(runner, DaskTaskRunner) and runner._client is not None:
        return runner._client
    raise RuntimeError(
        "get_dask_client() works inside a task, or a flow, running on the 'dask' task runner; "
        "here there is none. Run the flow with task_runner='dask' (or a DaskTaskRunner)."
    )
