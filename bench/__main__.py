"""Run the benchmarks: `python -m bench [--quick] [--runners thread,process] [--out DIR]`.

Every figure of Baton is measured beside the raw engine underneath it in the same
process, in interleaved pairs so that drift of the machine hits both alike, and
reported as µs per task and as the ratio Baton / raw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("BATON_LOG_LEVEL", "WARNING")

import baton

from bench.engines import ENGINES, available, noop


def _baton_batch(runner: str, mode: str):  # type: ignore[no-untyped-def]
    task = baton.task(noop)

    @baton.flow(task_runner=runner)
    def batch(n: int) -> None:
        if mode == "map":
            task.map(range(n)).result()
        else:
            futures = [task.submit(i) for i in range(n)]
            for future in futures:
                future.result()

    return batch


def overhead(runner: str, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """µs per no-op task through `.map` and a `.submit` loop, beside the raw engine."""
    engine = ENGINES[runner]
    rows = []
    with engine.raw_map() as raw:
        for mode in ("map", "submit"):
            # A cluster engine hands Baton a runner on its own cluster, to compare like for like.
            run = _baton_batch(getattr(raw, "task_runner", runner), mode)
            run(min(sizes))  # warm up imports and pools
            for n in sizes:
                raw_times, baton_times = [], []
                for _ in range(repeats):
                    started = time.perf_counter()
                    raw(n)
                    raw_times.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    run(n)
                    baton_times.append(time.perf_counter() - started)
                raw_us = statistics.median(raw_times) / n * 1e6
                baton_us = statistics.median(baton_times) / n * 1e6
                rows.append(
                    {
                        "scenario": f"overhead-{mode}",
                        "runner": runner,
                        "raw": engine.raw_name,
                        "n": n,
                        "baton_us_per_task": round(baton_us, 2),
                        "raw_us_per_task": round(raw_us, 2),
                        "ratio": round(baton_us / raw_us, 2),
                    }
                )
                print(_row(rows[-1]), flush=True)
    return rows


def graphs(runner: str, n: int, repeats: int) -> list[dict[str, Any]]:
    """A dependency chain of n tasks and a fan-out of n feeding one fan-in task."""
    import concurrent.futures as cf

    task = baton.task(noop)

    @baton.task
    def gather(values: list[int]) -> int:
        return len(values)

    @baton.flow(task_runner=runner)
    def chain() -> int:
        future = task.submit(0)
        for _ in range(n - 1):
            future = task.submit(future)
        return future.result()

    @baton.flow(task_runner=runner)
    def fan() -> int:
        return gather(task.map(range(n)))

    def raw_chain(pool: cf.Executor) -> None:
        value = 0
        for _ in range(n):
            value = pool.submit(noop, value).result()

    def raw_fan(pool: cf.Executor) -> None:
        futures = [pool.submit(noop, i) for i in range(n)]
        pool.submit(len, [f.result() for f in futures]).result()

    rows = []
    if runner != "thread":
        return rows
    with cf.ThreadPoolExecutor() as pool:
        for name, ours, theirs in (("chain", chain, raw_chain), ("fan-out-in", fan, raw_fan)):
            ours()
            raw_times, baton_times = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                theirs(pool)
                raw_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                ours()
                baton_times.append(time.perf_counter() - started)
            raw_ms = statistics.median(raw_times) * 1e3
            baton_ms = statistics.median(baton_times) * 1e3
            rows.append(
                {
                    "scenario": name,
                    "runner": runner,
                    "raw": "ThreadPoolExecutor",
                    "n": n,
                    "baton_ms": round(baton_ms, 2),
                    "raw_ms": round(raw_ms, 2),
                    "ratio": round(baton_ms / raw_ms, 2),
                }
            )
            print(_row(rows[-1]), flush=True)
    return rows


def startup(repeats: int) -> list[dict[str, Any]]:
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
    rows = [
        {
            "scenario": "import baton",
            "ms": round((imported - bare) * 1e3, 1),
            "process_ms": round(imported * 1e3, 1),
        },
        {"scenario": "empty flow run", "ms": round(flow_ms, 3)},
    ]
    for row in rows:
        print(_row(row), flush=True)
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


def memory(n_held: int, n_streamed: int) -> list[dict[str, Any]]:
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
                "start_mb": round(start / 2**20, 1),
                "peak_mb": round(peak / 2**20, 1),
                "growth_mb": round((peak - start) / 2**20, 1),
            }
        )
        print(_row(rows[-1]), flush=True)
    return rows


def _row(row: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in row.items())


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """µs per task against N for each runner and its raw engine (log-log)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row_runner in sorted({r["runner"] for r in rows}):
        series = sorted(
            (r for r in rows if r["runner"] == row_runner and r["scenario"] == "overhead-map"),
            key=lambda r: r["n"],
        )
        if not series:
            continue
        ns = [r["n"] for r in series]
        ax.plot(
            ns, [r["baton_us_per_task"] for r in series], marker="o", label=f"baton {row_runner}"
        )
        ax.plot(
            ns,
            [r["raw_us_per_task"] for r in series],
            marker="x",
            linestyle="--",
            label=series[0]["raw"],
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks mapped (N)")
    ax.set_ylabel("µs per task")
    ax.set_title("Per-task cost of .map, Baton beside the raw engine")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds: small N, one pass")
    parser.add_argument(
        "--runners",
        default=",".join(available()),
        help="comma-separated runners (default: every one installed)",
    )
    parser.add_argument(
        "--out", default="bench/results", help="folder for results.json and the plot"
    )
    args = parser.parse_args(argv)
    runners = [r for r in args.runners.split(",") if r]
    unknown = [r for r in runners if r not in ENGINES]
    if unknown:
        parser.error(f"no raw engine known for {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    sizes = [200] if args.quick else [1_000, 10_000, 100_000]
    repeats = 1 if args.quick else 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "rows": [],
    }
    rows: list[dict[str, Any]] = results["rows"]
    for runner in runners:
        runner_sizes = [n for n in sizes if not (runner in ("process", "dask") and n > 10_000)]
        rows += overhead(runner, runner_sizes, repeats)
        rows += graphs(runner, 100 if args.quick else 1_000, repeats)
    rows += startup(2 if args.quick else 10)
    rows += memory(1_000 if args.quick else 100_000, 2_000 if args.quick else 1_000_000)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plotted = plot(rows, out / "overhead.png")
    print(f"wrote {out / 'results.json'}" + (f" and {out / 'overhead.png'}" if plotted else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
