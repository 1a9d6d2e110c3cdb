"""Tasks the ray tests run, at module level so that Ray workers import them by name
(the test fixtures put this directory on the workers' PYTHONPATH)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from baton import as_completed, task, wait
from baton.testing._rendezvous import Rendezvous

MB = 2**20


@task
def pid(_: Any = None) -> int:
    return os.getpid()


@task
def payload(megabytes: int) -> bytes:
    return b"x" * (megabytes * MB)


@task
def size(data: bytes) -> int:
    return len(data)


@task
def identity(value: Any) -> Any:
    return value


@task
def describe(value: Any) -> str:
    return f"{type(value).__name__}: {value}"


@task
def assigned(_: Any = None) -> dict[str, float]:
    """The resources Ray reserved for this run."""
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


@task
def env(name: str) -> str | None:
    return os.environ.get(name)


# -- nested --------------------------------------------------------------------------------


@task
def child(x: int) -> tuple[int, int]:
    return x * 10, os.getpid()


@task
def parent(rv: Rendezvous, name: str, parties: tuple[str, ...], how: str) -> list[Any]:
    """Meet the other parents (so that they hold every CPU at once), then map children
    and block until they are done, in the way `how` says."""
    rv.meet(name, parties)
    futures = child.map(range(3))
    if how == "result":
        values = [f.result() for f in futures]
    elif how == "wait":
        _, not_done = wait(futures)
        assert not not_done
        values = [f.result() for f in futures]
    else:
        values = sorted(f.result() for f in as_completed(futures))
    return [[value for value, _ in values], [child_pid for _, child_pid in values], os.getpid()]


@task
async def async_parent(x: int) -> list[int]:
    first, _ = await child.submit(x)
    rest = await asyncio.gather(child.submit(x + 1), child.submit(x + 2))
    return [first, *(value for value, _ in rest)]


@task
def fire_and_forget(rv: Rendezvous) -> int:
    """Submit a run without waiting for it: the task run ends only once it has."""
    finish_later.submit(rv)
    rv.signal("parent-returning")
    return os.getpid()


@task
def finish_later(rv: Rendezvous) -> None:
    rv.signal("nested-started")
    rv.wait("release-nested", timeout=60)
    rv.signal("nested-finished")


# -- crashes, retries, timeouts ------------------------------------------------------------


@task
def die_attempts(rv: Rendezvous, tag: str, crashes: int) -> int:
    """Kill its own worker on the first `crashes` attempts; return the attempt number."""
    attempt = rv.record(f"attempt-{tag}", repr(time.monotonic()))
    if attempt <= crashes:
        os._exit(17)
    return attempt


@task
def wait_to_be_killed(rv: Rendezvous, tag: str) -> str:
    """Signal `started-<tag>` with the worker's pid, then wait for `release-<tag>`."""
    rv.signal(f"started-{tag}", str(os.getpid()))
    rv.wait(f"release-{tag}", timeout=60)
    return "released"


@task
def sleep_in_c(rv: Rendezvous, tag: str, seconds: float) -> str:
    """Block in C (time.sleep), where no exception can interrupt it."""
    rv.record(f"attempt-{tag}", str(os.getpid()))
    time.sleep(seconds)
    rv.signal(f"woke-{tag}")
    return "slept"


@task
def hold(rv: Rendezvous, index: int) -> int:
    rv.record("held", str(index))
    rv.wait("release-held", timeout=60)
    return index


@task
def noop(x: int) -> int:
    return x


# -- what crosses between the workers and the flow ---------------------------------------


@task
def fails(x: int) -> None:
    raise ValueError(f"lost subtask {x}")


@task
def forgets_a_failing_subtask() -> str:
    """Submit a run that fails, and never read it."""
    fails.submit(7)
    return "parent done"


class NeedsTwoArguments(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")


@task
def raises_two_argument_error() -> None:
    raise NeedsTwoArguments(42, "the answer")


@task
def raises_unprintable() -> None:
    raise UnprintableError("hidden")


def _only_on_workers(driver_pid: int) -> OnlyOnWorkers:
    if os.getpid() == driver_pid:
        raise ModuleNotFoundError("No module named 'only_on_workers'")
    return OnlyOnWorkers(driver_pid)


class OnlyOnWorkers:
    """A value that can be rebuilt on the workers but not in the flow's process."""

    def __init__(self, driver_pid: int) -> None:
        self.driver_pid = driver_pid

    def __reduce__(self) -> Any:
        return (_only_on_workers, (self.driver_pid,))


@task
def only_on_workers(driver_pid: int) -> OnlyOnWorkers:
    return OnlyOnWorkers(driver_pid)


@task
def wait_for_release(rv: Rendezvous, tag: str) -> str:
    rv.signal(f"started-{tag}")
    rv.wait(f"release-{tag}", timeout=60)
    return tag


class _TurnsToJunk:
    """A retry_delay_seconds callable that passes the check at decoration, then returns
    junk when the delay of a retry is computed (on a Ray worker, or in the driver)."""

    broken = False

    def __call__(self, retries: int) -> object:
        return "soon" if self.broken else [0.0] * retries


_junk_delays = _TurnsToJunk()


@task(retries=1, retry_delay_seconds=_junk_delays)
def fails_with_junk_delay() -> None:
    raise ValueError("first attempt fails")


_junk_delays.broken = True  # after the check at decoration, wherever this module loads


@task(batch_size=5)
def batched_exit_at(x: int, fatal: int) -> int:
    """Return `x`, in batches of five; the run of `fatal` kills its worker process."""
    if x == fatal:
        os._exit(3)
    return x


@task(batch_size=2)
def batched_hold_or_touch(index: int, folder: str, first: int) -> int:
    """In batches of two. Runs below `first` hold their worker until the file
    ``release-first`` exists; run `first` leaves ``started``, then holds until
    ``release``; the others leave ``ran-<index>``."""

    def hold(name: str) -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(folder, name)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never released: {name}")
            time.sleep(0.01)

    if index < first:
        hold("release-first")
    elif index == first:
        with open(os.path.join(folder, "started"), "w"):
            pass
        hold("release")
    else:
        with open(os.path.join(folder, f"ran-{index}"), "w"):
            pass
    return index


@task(batch_size=5)
def batched_inverse(x: int) -> float:
    return 1 / x


@task(batch_size=4)
def batched_payload(kilobytes: int) -> bytes:
    return b"\x01" * (kilobytes * 1024)


@task
def total_of(values: list[Any]) -> Any:
    return sum(values)


@task
def step(value: int, fail_at: int = -1) -> int:
    """One link of a chain: the next number, or a failure at `fail_at`."""
    if value == fail_at:
        raise ValueError(f"failed at {value}")
    return value + 1
