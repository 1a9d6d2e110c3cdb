"""Run the benchmarks: `python -m bench [--quick] [--runners thread,process]
[--scenarios overhead,graphs] [--sizes 1000,10000] [--budget SECONDS] [--out DIR]`,
or redraw the plot of an earlier run: `python -m bench --plot-only RESULTS.json`.

Every figure of Baton is measured beside the raw engine underneath it in the same
process, in interleaved pairs so that drift of the machine hits both alike, and
reported as µs per task and as the ratio Baton / raw. Scenarios:

  overhead  N no-op tasks through `.map` and a `.submit` loop (µs per task); on process,
            Dask and Ray, `.map` also beside the raw engine batched by hand (chunks of
            items, one engine call per chunk)
  graphs    a dependency chain of tasks, and a fan-out feeding one fan-in task
  long      on Dask and Ray: 16 tasks of 0.25 s each, on 2 workers (seconds in all)
  startup   `import baton`, an empty flow run, and a small flow run (3 tiny tasks) on
            `process` by name, on warm workers
  memory    peak RSS with 100,000 completed futures held, and while a generator of
            1,000,000 items is mapped with bounded in-flight; a 500 MB bytes and NumPy
            result on `process`: seconds to the driver, the driver's peak RSS growth
  locality  on Dask and Ray: how much of a 200 MB result passed downstream goes
            through the driver process
  tracing   (only when asked for) `.map` of N no-op tasks on `thread` with
            BATON_TRACE_FILE, and BATON_REPORT_FILE, set against unset (µs per task,
            the file written at the flow run's end included)
  limits    (only when asked for) N no-op tagged tasks through `.map` in a flow with a
            concurrency limit on their tag that is never reached, beside the same flow
            without limits (µs per task)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import baton

from bench.engines import (
    ENGINES,
    Engine,
    LocalityEngine,
    RawEngine,
    available,
    make_bytes,
    nap,
    noop,
    size,
)

SCENARIOS = ("overhead", "graphs", "long", "startup", "memory", "locality")
OPT_IN_SCENARIOS = ("tracing", "limits")
MB = 2**20
Row = dict[str, Any]


def _settle() -> None:
    """Collect the garbage left by the run before, ahead of a timed run: otherwise the
    collector's full passes, which the objects of one large run set off, fall in
    whichever run comes next (the other side of a pair as often as not) and each
    costs that run 2 to 3 µs per task."""
    gc.collect()


def _pairs(call: Callable[[], object], least: int, seconds: float = 1.0) -> int:
    """How many pairs to time for a ratio of two sides as costly as `call()`: at least
    `least` (and 2), and enough for `seconds` of runs on each side, up to 100."""
    _settle()
    started = time.perf_counter()
    call()
    once = time.perf_counter() - started
    return max(least, 2, min(100, math.ceil(seconds / max(once, 1e-6))))


def _interleaved(raw: Any, ours: Any, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of each of `repeats` runs of `raw()` then `ours()`, taken in turn."""
    raw_times, baton_times = [], []
    for _ in range(repeats):
        _settle()
        started = time.perf_counter()
        raw()
        raw_times.append(time.perf_counter() - started)
        _settle()
        started = time.perf_counter()
        ours()
        baton_times.append(time.perf_counter() - started)
    return raw_times, baton_times


def _baton_batch(task_runner: str | baton.TaskRunner, mode: str):  # type: ignore[no-untyped-def]
    task = baton.task(noop)

    @baton.flow(task_runner=task_runner)
    def batch(n: int) -> None:
        if mode == "map":
            task.map(range(n)).result()
        else:
            futures = [task.submit(i) for i in range(n)]
            for future in futures:
                future.result()

    return batch


def overhead(
    engine: Engine,
    raw: RawEngine,
    sizes: list[int],
    repeats: int,
    budget: float,
    skipped: list[Row],
) -> list[Row]:
    """µs per no-op task through `.map` and a `.submit` loop, beside the raw engine."""
    rows = []
    for mode in ("map", "submit"):
        scenario = f"overhead-{mode}"
        raw_batch = getattr(raw, mode)
        run = _baton_batch(raw.task_runner, mode)
        run(min(*sizes, 1_000))  # warm up imports and pools
        slowest_us = 0.0  # per task, either side, at the sizes run so far
        for n in sizes:
            if engine.max_n is not None and n > engine.max_n:
                skipped.append(_skip(scenario, engine.runner, n, engine.max_n_reason))
                continue
            estimate = slowest_us * 1e-6 * n * 2 * repeats
            if estimate > budget:
                reason = (
                    f"about {estimate:.0f} s at the cost per task measured at smaller N, over "
                    f"the budget of {budget:.0f} s per size (--budget)"
                )
                skipped.append(_skip(scenario, engine.runner, n, reason))
                continue
            raw_times, baton_times = _interleaved(partial(raw_batch, n), partial(run, n), repeats)
            raw_us = statistics.median(raw_times) / n * 1e6
            baton_us = statistics.median(baton_times) / n * 1e6
            slowest_us = max(slowest_us, raw_us, baton_us)
            rows.append(
                {
                    "scenario": scenario,
                    "runner": engine.runner,
                    "raw": engine.raw_name,
                    "n": n,
                    "baton_us_per_task": round(baton_us, 2),
                    "raw_us_per_task": round(raw_us, 2),
                    "ratio": round(baton_us / raw_us, 2),
                }
            )
            print(_line(rows[-1]), flush=True)
            if mode == "map" and raw.chunk_size is not None:
                rows.append(_chunked(engine, raw, run, n, repeats))
    return rows


def _chunked(engine: Engine, raw: RawEngine, run: Any, n: int, repeats: int) -> Row:
    """Baton's `.map` beside the raw engine batched by hand."""
    raw_times, baton_times = _interleaved(partial(raw.chunked, n), partial(run, n), repeats)
    raw_us = statistics.median(raw_times) / n * 1e6
    baton_us = statistics.median(baton_times) / n * 1e6
    row = {
        "scenario": "map-vs-hand-batched",
        "runner": engine.runner,
        "raw": f"{engine.raw_name}, chunks of {raw.chunk_size} items",
        "n": n,
        "baton_us_per_task": round(baton_us, 2),
        "raw_us_per_task": round(raw_us, 2),
        "ratio": round(baton_us / raw_us, 2),
    }
    print(_line(row), flush=True)
    return row


def long_tasks(engine: Engine, raw: RawEngine, repeats: int) -> list[Row]:
    """16 tasks of 0.25 s through `.map`, beside the raw engine (seconds in all): long
    runs must still spread over every worker."""
    count, seconds = 16, 0.25
    task = baton.task(nap)

    @baton.flow(task_runner=raw.task_runner)
    def naps() -> None:
        task.map([seconds] * count).result()

    raw_times, baton_times = _interleaved(
        partial(raw.naps, count, seconds), naps, max(1, min(repeats, 3))
    )
    row = {
        "scenario": "long-tasks",
        "runner": engine.runner,
        "raw": engine.raw_name,
        "n": count,
        "baton_s": round(statistics.median(baton_times), 3),
        "raw_s": round(statistics.median(raw_times), 3),
        "ratio": round(statistics.median(baton_times) / statistics.median(raw_times), 2),
    }
    print(_line(row), flush=True)
    return [row]


def graphs(engine: Engine, raw: RawEngine, n: int, repeats: int) -> list[Row]:
    """A dependency chain of n tasks, and a fan-out of n feeding one fan-in task."""
    task = baton.task(noop)
    gather = baton.task(size)

    @baton.flow(task_runner=raw.task_runner)
    def chain() -> int:
        future = task.submit(0)
        for _ in range(n - 1):
            future = task.submit(future)
        return future.result()

    @baton.flow(task_runner=raw.task_runner)
    def fan() -> int:
        # Submitted, not called, so that the fan-in runs on the engine as the raw one does.
        return gather.submit(task.map(range(n))).result()

    rows = []
    for name, ours, theirs, expected in (
        ("chain", chain, raw.chain, 0),
        ("fan-out-in", fan, raw.fan, n),
    ):
        for side in (ours, partial(theirs, n)):
            got = side()
            if got != expected:
                raise AssertionError(f"{name} on {engine.runner} returned {got}, not {expected}")
        raw_times, baton_times = _interleaved(partial(theirs, n), ours, repeats)
        raw_ms = statistics.median(raw_times) * 1e3
        baton_ms = statistics.median(baton_times) * 1e3
        rows.append(
            {
                "scenario": name,
                "runner": engine.runner,
                "raw": engine.raw_name,
                "n": n,
                "baton_ms": round(baton_ms, 3),
                "raw_ms": round(raw_ms, 3),
                "ratio": round(baton_ms / raw_ms, 2),
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


def limits(engine: Engine, raw: RawEngine, sizes: list[int], repeats: int) -> list[Row]:
    """µs per tagged no-op task through `.map`, in a flow whose concurrency limit on the
    tag is never reached, beside the same flow without limits (the cost of admission)."""
    tagged = baton.task(noop).with_options(tags={"bench"})

    def batch(**options: Any) -> Callable[[int], None]:
        @baton.flow(task_runner=raw.task_runner, **options)
        def run(n: int) -> None:
            tagged.map(range(n)).result()

        return run

    plain = batch()
    limited = batch(concurrency_limits={"bench": 2**31})
    plain(min(*sizes, 1_000))  # warm up imports and pools
    limited(min(*sizes, 1_000))
    rows = []
    for n in sizes:
        if engine.max_n is not None and n > engine.max_n:
            continue
        # Each side goes first in every other pair: on a small machine the second run of
        # a pair pays for the first one's pool still winding down. Wall time, and the CPU
        # time of the flow's process (all its threads; not the process runner's workers):
        # on a shared machine the second is the steadier measure of what limits cost.
        # Three times the pairs of other scenarios, and at least a second of runs on
        # each side: the difference sought is a few %, and how the runs of a small
        # flow run happen to go together on `process` moves its time by more.
        times: dict[str, list[tuple[float, float]]] = {"plain": [], "limited": []}
        for turn in range(_pairs(partial(limited, n), 3 * repeats)):
            order = ("plain", "limited") if turn % 2 == 0 else ("limited", "plain")
            for side in order:
                call = plain if side == "plain" else limited
                _settle()
                wall, cpu = time.perf_counter(), time.process_time()
                call(n)
                times[side].append((time.perf_counter() - wall, time.process_time() - cpu))
        plain_us, limited_us = (
            statistics.median(t[0] for t in times[side]) / n * 1e6 for side in times
        )
        plain_cpu, limited_cpu = (
            statistics.median(t[1] for t in times[side]) / n * 1e6 for side in times
        )
        rows.append(
            {
                "scenario": "limits-map",
                "runner": engine.runner,
                "n": n,
                "limited_us_per_task": round(limited_us, 2),
                "no_limits_us_per_task": round(plain_us, 2),
                "ratio": round(limited_us / plain_us, 3),
                "limited_cpu_us_per_task": round(limited_cpu, 2),
                "no_limits_cpu_us_per_task": round(plain_cpu, 2),
                "cpu_ratio": round(limited_cpu / plain_cpu, 3),
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


class PeakRSS:
    """Peak resident memory of this process over a block, above where it started.

    psutil is sampled by a thread; on Linux the kernel's own high-water mark (VmHWM,
    reset on entry) also catches a peak shorter than the sampling period.
    """

    def __init__(self, period: float = 0.002) -> None:
        try:
            import psutil
        except ImportError:
            raise SystemExit(
                "The locality scenario measures memory with psutil: pip install psutil, "
                "or leave it out with --scenarios."
            ) from None
        self._process = psutil.Process()
        self._period = period
        self._stop = threading.Event()
        self.start = self.peak = 0

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(self._period):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = self.peak = self._rss()
        self._kernel_peak = _reset_high_water_mark()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        if self._kernel_peak:
            self.peak = max(self.peak, _high_water_mark())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / MB


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _high_water_mark() > 0


def _high_water_mark() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def locality(engine: Engine, raw: LocalityEngine, mb: int, repeats: int) -> list[Row]:
    """A task makes `mb` MB, a second returns its length: the driver's peak RSS growth
    under Baton, under the raw engine passing its own futures, and under the raw engine
    fetching the data to the driver and sending it back."""
    nbytes = mb * MB
    produce = baton.task(make_bytes)
    measure = baton.task(size)

    @baton.flow(task_runner=raw.task_runner)
    def pipeline() -> int:
        return measure.submit(produce.submit(nbytes)).result()

    sides: dict[str, Callable[[], int]] = {
        "baton": pipeline,
        "raw": lambda: raw.direct(nbytes),
        "raw_via_driver": lambda: raw.through_driver(nbytes),
    }
    growth: dict[str, list[float]] = {side: [] for side in sides}
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side, call in sides.items():
            started = time.perf_counter()
            with PeakRSS() as rss:
                got = call()
            seconds[side].append(time.perf_counter() - started)
            if got != nbytes:
                raise AssertionError(f"locality on {engine.runner} ({side}) returned {got}")
            growth[side].append(rss.growth_mb)
    row: Row = {"scenario": "locality", "runner": engine.runner, "raw": engine.raw_name, "mb": mb}
    row["baton_driver_mb"] = round(statistics.median(growth["baton"]), 1)
    row["raw_driver_mb"] = round(statistics.median(growth["raw"]), 1)
    row["raw_via_driver_mb"] = round(statistics.median(growth["raw_via_driver"]), 1)
    for side in sides:
        row[f"{side}_s"] = round(statistics.median(seconds[side]), 3)
    print(_line(row), flush=True)
    return [row]


def tracing(sizes: list[int], repeats: int) -> list[Row]:
    """µs per task of `.map` on `thread` with the trace file (and the HTML report)
    written, against neither: in interleaved pairs, in this process."""
    import tempfile

    task = baton.task(noop)

    @baton.flow(task_runner="thread")
    def batch(n: int) -> None:
        task.map(range(n)).result()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as folder:
        for variable, suffix in (("BATON_TRACE_FILE", "json"), ("BATON_REPORT_FILE", "html")):
            path = os.path.join(folder, f"run.{suffix}")

            def on(n: int, variable: str = variable, path: str = path) -> None:
                os.environ[variable] = path
                try:
                    batch(n)
                finally:
                    del os.environ[variable]

            for n in sizes:
                batch(min(n, 1_000))  # warm up the pool
                on(min(n, 1_000))
                # Wall time, and the CPU time of all threads: on a shared machine the
                # second is the steadier measure of what tracing costs.
                times: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
                # Each side goes first in every other pair: the second run of a pair
                # pays for the first one's pool still winding down. Three times the
                # pairs of other scenarios: the thread pool's cost per run swings by a
                # third from one run to the next (as its threads hand the GIL to each
                # other more or less often), and the difference sought is a few %.
                for turn in range(_pairs(partial(on, n), 3 * repeats)):
                    pair = (("off", batch), ("on", on))
                    for side, call in pair if turn % 2 == 0 else pair[::-1]:
                        _settle()
                        wall, cpu = time.perf_counter(), time.process_time()
                        call(n)
                        times[side].append((time.perf_counter() - wall, time.process_time() - cpu))
                off_us, on_us = (statistics.median(t[0] for t in times[s]) / n * 1e6 for s in times)
                off_cpu, on_cpu = (
                    statistics.median(t[1] for t in times[s]) / n * 1e6 for s in times
                )
                rows.append(
                    {
                        "scenario": f"{variable} set (thread .map)",
                        "n": n,
                        "off_us_per_task": round(off_us, 2),
                        "on_us_per_task": round(on_us, 2),
                        "ratio": round(on_us / off_us, 3),
                        "off_cpu_us_per_task": round(off_cpu, 2),
                        "on_cpu_us_per_task": round(on_cpu, 2),
                        "cpu_ratio": round(on_cpu / off_cpu, 3),
                    }
                )
                print(_line(rows[-1]), flush=True)
    return rows


def startup(repeats: int) -> list[Row]:
    """`python -c "import baton"` (minus bare interpreter start) and an empty flow run."""

    def timed(code: str) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - started)
        return min(times)

    bare = timed("pass")
    imported = timed("import baton")

    @baton.flow
    def empty() -> None:
        pass

    empty()
    count = 200 if repeats > 1 else 20
    started = time.perf_counter()
    for _ in range(count):
        empty()
    flow_ms = (time.perf_counter() - started) / count * 1e3
    rows: list[Row] = [
        {
            "scenario": "import baton",
            "ms": round((imported - bare) * 1e3, 1),
            "process_ms": round(imported * 1e3, 1),
        },
        {"scenario": "empty flow run", "ms": round(flow_ms, 3)},
        small_flow(50),
    ]
    for row in rows:
        print(_line(row), flush=True)
    return rows


def small_flow(count: int) -> Row:
    """A flow of 3 tiny tasks (a chain) on `process` selected by name, run `count` times
    after a first run: warm workers make each run cost milliseconds, not a start."""
    inc = baton.task(noop)

    @baton.flow(task_runner="process")
    def small() -> int:
        return int(inc.submit(inc.submit(inc.submit(1))).result())

    started = time.perf_counter()
    small()
    first = time.perf_counter() - started
    times = []
    for _ in range(count):
        started = time.perf_counter()
        small()
        times.append(time.perf_counter() - started)
    return {
        "scenario": "small flow run on process (warm)",
        "runs": count,
        "first_ms": round(first * 1e3, 1),
        "median_ms": round(statistics.median(times) * 1e3, 2),
        "mean_ms": round(statistics.mean(times) * 1e3, 2),
        "max_ms": round(max(times) * 1e3, 2),
    }


_LARGE_CODE = """
import os, sys, threading, time, psutil
os.environ["BATON_LOG_LEVEL"] = "WARNING"
import baton
kind, mb = sys.argv[1], int(sys.argv[2])
nbytes = mb * 2**20

@baton.task
def make(n):
    if kind == "numpy":
        import numpy
        value = numpy.ones(n // 8)
    else:
        value = b"x" * n
    return value, time.time()

@baton.task
def length(value):
    return value.nbytes if kind == "numpy" else len(value)

@baton.flow(task_runner="process")
def warm():
    return length.submit(b"").result() if kind == "bytes" else 0

proc = psutil.Process()
def clear():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
def hwm():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
warm()
if kind == "numpy":
    import numpy
times = {}
@baton.flow(task_runner="process")
def pipeline():
    made = make.submit(nbytes)
    value, made_at = made.result()
    times["to_driver"] = time.time() - made_at
    started = time.time()
    got = length.submit(value).result()
    times["downstream"] = time.time() - started
    assert got == nbytes, got
    return nbytes
peak = [0]
stop = threading.Event()
def sample():
    while not stop.wait(0.002):
        peak[0] = max(peak[0], proc.memory_info().rss)
start = proc.memory_info().rss
peak[0] = start
clear()
threading.Thread(target=sample, daemon=True).start()
pipeline()
stop.set()
peak[0] = max(peak[0], proc.memory_info().rss, hwm())
print(start, peak[0], times["to_driver"], times["downstream"])
"""


def large_results(mb: int) -> list[Row]:
    """A `mb` MB bytes and NumPy result on `process`: seconds from the worker's return
    to the driver holding it, then to a downstream run that takes it, and the driver's
    peak RSS growth (in a fresh interpreter)."""
    rows = []
    for kind in ("bytes", "numpy"):
        if kind == "numpy":
            try:
                import numpy  # noqa: F401
            except ImportError:
                print("skipped: large numpy result (numpy is not installed)", flush=True)
                continue
        out = subprocess.run(
            [sys.executable, "-c", _LARGE_CODE, kind, str(mb)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        start, peak = int(out[0]), int(out[1])
        growth = (peak - start) / MB
        rows.append(
            {
                "scenario": f"large {kind} result on process",
                "mb": mb,
                "to_driver_s": round(float(out[2]), 3),
                "downstream_s": round(float(out[3]), 3),
                "driver_growth_mb": round(growth, 1),
                "growth_x": round(growth / mb, 2),
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


_RSS_CODE = """
import os, sys, threading, time, psutil
os.environ["BATON_LOG_LEVEL"] = "WARNING"
import baton
proc = psutil.Process()
peak = [proc.memory_info().rss]
stop = threading.Event()
def sample():
    while not stop.wait(0.02):
        peak[0] = max(peak[0], proc.memory_info().rss)
threading.Thread(target=sample, daemon=True).start()
start = proc.memory_info().rss
noop = baton.task(lambda x: x)
mode, n = sys.argv[1], int(sys.argv[2])
@baton.flow
def held():
    futures = noop.map(range(n))
    futures.wait()
    return len(futures)
@baton.flow
def streamed():
    total = 0
    for future in noop.map((i for i in range(n)), max_in_flight=1000):
        total += 1 if future.result() is not None else 0
    return total
(held if mode == "held" else streamed)()
stop.set()
peak[0] = max(peak[0], proc.memory_info().rss)
print(start, peak[0])
"""


def memory(n_held: int, n_streamed: int) -> list[Row]:
    """Peak RSS while n futures are held, and while a generator of n items is mapped."""
    rows = []
    labels = {
        "held": "peak RSS, completed futures held",
        "streamed": "peak RSS, generator mapped, max_in_flight=1000",
    }
    for mode, n in (("held", n_held), ("streamed", n_streamed)):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CODE, mode, str(n)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        start, peak = int(out[0]), int(out[1])
        rows.append(
            {
                "scenario": labels[mode],
                "n": n,
                "start_mb": round(start / MB, 1),
                "peak_mb": round(peak / MB, 1),
                "growth_mb": round((peak - start) / MB, 1),
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


def _skip(scenario: str, runner: str, n: int | None, reason: str) -> Row:
    row = {"scenario": scenario, "runner": runner, "n": n, "reason": reason}
    print(f"skipped: {_skipped(row)}", flush=True)
    return row


def _skipped(row: Row) -> str:
    at = "" if row["n"] is None else f" at N={row['n']:,}"
    return f"{row['scenario']} on {row['runner']}{at}: {row['reason']}"


def _line(row: Row) -> str:
    return "  ".join(f"{k}={v}" for k, v in row.items())


def table(rows: list[Row]) -> str:
    """The rows as aligned text tables, one per set of columns, in order of first use."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    blocks = []
    for columns, members in groups.items():
        cells = [list(columns)] + [[_cell(row[c]) for c in columns] for row in members]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def plot(rows: list[Row], path: Path) -> bool:
    """µs per task against N (log-log), `.map` above `.submit`: one colour per runner,
    Baton solid and its raw engine dashed. False (and no file) without overhead rows
    or without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = figure(rows)
    if fig is None:
        return False
    # The legend lies below the axes: bbox_inches="tight" keeps it inside the image.
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return True


def figure(rows: list[Row]) -> Any:
    """The matplotlib figure of `plot`, or None when `rows` hold no overhead row.

    The panels are stacked, each the figure's full width, so that the image stays
    readable when shown at the width of a page; the legend sits below both, where it
    hides no line.
    """
    series: dict[tuple[str, str], list[Row]] = {}
    for row in sorted(rows, key=lambda r: r.get("n") or 0):
        if row["scenario"].startswith("overhead-"):
            mode = row["scenario"].removeprefix("overhead-")
            series.setdefault((mode, row["runner"]), []).append(row)
    if not series:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 8.5), sharex=True, layout="constrained")
    colours = plt.get_cmap("tab10")
    ours: dict[str, Any] = {}  # label -> line, in the order of ENGINES
    theirs: dict[str, Any] = {}
    for ax, mode in zip(axes, ("map", "submit"), strict=True):
        for index, runner in enumerate(ENGINES):
            points = series.get((mode, runner))
            if not points:
                continue
            colour = colours(index % 10)
            ns = [r["n"] for r in points]
            baton_us = [r["baton_us_per_task"] for r in points]
            raw_us = [r["raw_us_per_task"] for r in points]
            ours.setdefault(f"baton {runner}", ax.plot(ns, baton_us, color=colour, marker="o")[0])
            theirs.setdefault(
                points[0]["raw"],
                ax.plot(ns, raw_us, color=colour, marker="x", linestyle="--")[0],
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("µs per task")
        ax.set_title(f".{mode}: Baton (solid) beside the raw engine (dashed)")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].set_xlabel("tasks (N)")
    # Two columns, filled column by column: Baton on each runner on the left, its raw
    # engine on the same line to the right.
    fig.legend(
        [*ours.values(), *theirs.values()],
        [*ours, *theirs],
        loc="outside lower center",
        ncols=2 if len(ours) == len(theirs) else 1,
        frameon=False,
    )
    return fig


def _csv(parser: argparse.ArgumentParser, option: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        parser.error(f"{option} needs at least one value, separated by commas")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: small N, one pass")
    parser.add_argument(
        "--runners", help="comma-separated runners (default: every one installed here)"
    )
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)}; "
        f"also {','.join(OPT_IN_SCENARIOS)})",
    )
    parser.add_argument(
        "--sizes",
        help="comma-separated N for the overhead scenario (default 1000,10000,100000; "
        "--quick: 200)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="skip an overhead size whose estimated time, from the cost per task at the "
        "smaller sizes, exceeds this many seconds (default 300)",
    )
    parser.add_argument(
        "--out", help="folder for results.json and overhead.png (default bench/results)"
    )
    parser.add_argument(
        "--plot-only",
        metavar="RESULTS.json",
        help="measure nothing: draw overhead.png from the rows of an earlier run's "
        "results.json, into --out (default: the folder of RESULTS.json)",
    )
    args = parser.parse_args(argv)
    if args.plot_only is not None:
        return _plot_only(parser, args)
    # A log line per task run would be timed along with Baton.
    os.environ.setdefault("BATON_LOG_LEVEL", "WARNING")

    installed = available()
    runners = _csv(parser, "--runners", args.runners) if args.runners else installed
    unknown = [r for r in runners if r not in ENGINES]
    if unknown:
        parser.error(f"no raw engine known for {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    missing = [r for r in runners if r not in installed]
    if missing:
        parser.error(
            f"runner {', '.join(missing)} is not installed here (installed: "
            f"{', '.join(installed)}); install its package, such as baton-{missing[0]}, "
            "or leave it out of --runners"
        )
    scenarios = _csv(parser, "--scenarios", args.scenarios or ",".join(SCENARIOS))
    bad = [s for s in scenarios if s not in SCENARIOS + OPT_IN_SCENARIOS]
    if bad:
        known = ", ".join(SCENARIOS + OPT_IN_SCENARIOS)
        parser.error(f"unknown scenario {', '.join(bad)}; choose from {known}")
    if args.sizes:
        try:
            sizes = sorted({int(s.replace("_", "")) for s in _csv(parser, "--sizes", args.sizes)})
        except ValueError:
            parser.error(f"--sizes takes whole numbers separated by commas, got {args.sizes!r}")
        if sizes[0] < 1:
            parser.error(f"--sizes must be 1 or more, got {args.sizes!r}")
    else:
        sizes = [200] if args.quick else [1_000, 10_000, 100_000]
    if args.budget <= 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    repeats = 1 if args.quick else 5

    out = Path(args.out or "bench/results")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "baton": getattr(baton, "__version__", None),
        "rows": [],
        "skipped": [],
    }
    rows: list[Row] = results["rows"]
    skipped: list[Row] = results["skipped"]
    per_runner = [s for s in scenarios if s in ("overhead", "graphs", "long", "locality", "limits")]
    for runner in runners if per_runner else []:
        engine = ENGINES[runner]
        if per_runner == ["locality"] and runner not in ("dask", "ray"):
            continue
        with engine.open() as raw:
            if "overhead" in scenarios:
                rows += overhead(engine, raw, sizes, repeats, args.budget, skipped)
            if "graphs" in scenarios:
                rows += graphs(engine, raw, 100 if args.quick else 1_000, repeats)
            if "limits" in scenarios:
                rows += limits(engine, raw, sizes, repeats)
            if "long" in scenarios and runner in ("process", "dask", "ray"):
                rows += long_tasks(engine, raw, repeats)
            if "locality" in scenarios and isinstance(raw, LocalityEngine):
                # Above 32 MB glibc always maps a fresh block, so each repeat starts even.
                rows += locality(engine, raw, 64 if args.quick else 200, 1 if args.quick else 3)
    if "locality" in scenarios and not any(r in ("dask", "ray") for r in runners):
        skipped.append(_skip("locality", ",".join(runners), None, "needs the dask or ray runner"))
    if "startup" in scenarios:
        rows += startup(2 if args.quick else 10)
    if "tracing" in scenarios:
        rows += tracing(sizes, repeats)
    if "memory" in scenarios:
        rows += memory(1_000 if args.quick else 100_000, 2_000 if args.quick else 1_000_000)
        rows += large_results(100 if args.quick else 500)

    (out / "results.json").write_text(json.dumps(results, indent=2))
    plotted = plot(rows, out / "overhead.png")
    print()
    print(table(rows))
    if skipped:
        print("\nskipped:")
        for row in skipped:
            print(f"  {_skipped(row)}")
    print(f"\nwrote {out / 'results.json'}" + (f" and {out / 'overhead.png'}" if plotted else ""))
    return 0


def _plot_only(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`--plot-only RESULTS.json`: overhead.png from recorded rows, nothing measured."""
    measuring = [
        option
        for option, value in (
            ("--quick", args.quick),
            ("--runners", args.runners),
            ("--scenarios", args.scenarios),
            ("--sizes", args.sizes),
        )
        if value
    ]
    if measuring:
        parser.error(
            f"--plot-only measures nothing, so {', '.join(measuring)} has no effect with it; "
            "leave it out, or run without --plot-only to measure"
        )
    source = Path(args.plot_only)
    try:
        rows = json.loads(source.read_text())["rows"]
    except FileNotFoundError:
        parser.error(f"--plot-only: no file {source}; give the results.json of a run")
    except (ValueError, KeyError, TypeError):
        parser.error(
            f"--plot-only: {source} is not a results.json written by python -m bench "
            '(JSON with a list of rows under "rows")'
        )
    out = Path(args.out) if args.out else source.parent
    out.mkdir(parents=True, exist_ok=True)
    if not any(str(row.get("scenario", "")).startswith("overhead-") for row in rows):
        print(f"{source} has no overhead rows to plot (run the overhead scenario)")
        return 1
    if not plot(rows, out / "overhead.png"):
        print("drawing overhead.png needs matplotlib: pip install matplotlib")
        return 1
    print(f"wrote {out / 'overhead.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
