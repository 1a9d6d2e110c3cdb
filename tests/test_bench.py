"""The benchmark harness's quick mode runs, so the harness never rots (no timing asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE_RUNNERS = ("thread", "sync", "process")


def bench(
    tmp_path: Path, *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def results(tmp_path: Path, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads((tmp_path / "results.json").read_text())
    return loaded


def test_quick_benchmark_writes_every_scenario(tmp_path: Path) -> None:
    done = bench(tmp_path, "--quick", "--runners", ",".join(CORE_RUNNERS))
    got = results(tmp_path, done)
    rows = got["rows"]
    for runner in CORE_RUNNERS:
        per_runner = {r["scenario"] for r in rows if r.get("runner") == runner}
        expected = {"overhead-map", "overhead-submit", "chain", "fan-out-in"}
        if runner == "process":
            expected |= {"long-tasks", "map-vs-hand-batched"}
        assert per_runner == expected, runner
    scenarios = {row["scenario"] for row in rows}
    assert {"import baton", "empty flow run"} <= scenarios
    assert {s for s in scenarios if s.startswith("peak RSS")} == {
        "peak RSS, completed futures held",
        "peak RSS, generator mapped, max_in_flight=1000",
    }
    for row in rows:
        if "ratio" in row:
            assert row["ratio"] > 0
            sizes = {"long-tasks": 16}
            mapped = (
                row["scenario"].startswith("overhead") or row["scenario"] == "map-vs-hand-batched"
            )
            expected_n = 200 if mapped else 100
            assert row["n"] == sizes.get(row["scenario"], expected_n)
    # Locality needs a cluster runner; without one it is reported as skipped, with why.
    [skipped] = got["skipped"]
    assert skipped["scenario"] == "locality"
    assert "dask or ray" in skipped["reason"]
    assert got["machine"]["cpus"] >= 1
    assert got["command"].startswith("python -m bench --quick")
    # The closing table has a header line for each kind of row.
    assert re.search(r"^scenario +runner +raw +n +baton_us_per_task", done.stdout, re.MULTILINE)
    assert "skipped:\n  locality on thread,sync,process: needs the dask or ray runner" in (
        done.stdout
    )


def test_scenarios_and_sizes_select_a_subset(tmp_path: Path) -> None:
    # 10**9 tasks would take hours at any plausible cost per task: the budget skips it.
    done = bench(
        tmp_path, "--runners", "sync", "--scenarios", "overhead", "--sizes", "30,10,1_000_000_000"
    )
    got = results(tmp_path, done)
    assert {(r["scenario"], r["n"]) for r in got["rows"]} == {
        ("overhead-map", 10),
        ("overhead-map", 30),
        ("overhead-submit", 10),
        ("overhead-submit", 30),
    }
    assert {(s["scenario"], s["n"]) for s in got["skipped"]} == {
        ("overhead-map", 1_000_000_000),
        ("overhead-submit", 1_000_000_000),
    }
    assert all("--budget" in s["reason"] for s in got["skipped"])
    assert "skipped: overhead-map on sync at N=1,000,000,000: about" in done.stdout


def test_the_limits_scenario_compares_a_limited_flow_with_a_plain_one(tmp_path: Path) -> None:
    done = bench(tmp_path, "--quick", "--runners", "thread", "--scenarios", "limits")
    [row] = results(tmp_path, done)["rows"]
    assert (row["scenario"], row["runner"], row["n"]) == ("limits-map", "thread", 200)
    assert row["limited_us_per_task"] > 0 and row["no_limits_us_per_task"] > 0
    assert row["limited_cpu_us_per_task"] > 0 and row["no_limits_cpu_us_per_task"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runners", "nope"], "no raw engine known for nope"),
        (["--scenarios", "overhead,speed"], "unknown scenario speed; choose from overhead,"),
        (["--sizes", "10,many"], "--sizes takes whole numbers separated by commas"),
        (["--sizes", "0"], "--sizes must be 1 or more"),
        (["--sizes", ","], "--sizes needs at least one value"),
        (["--budget", "0"], "--budget must be a positive number of seconds"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = bench(tmp_path, "--quick", *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "results.json").exists()


# Loading only the core's plugins hides the cluster runners as if not installed.
CORE_ONLY = {**os.environ, "BATON_LOAD_PLUGINS": "baton"}


def test_by_default_only_the_installed_runners_run(tmp_path: Path) -> None:
    done = bench(tmp_path, "--quick", "--scenarios", "locality", env=CORE_ONLY)
    got = results(tmp_path, done)
    assert got["rows"] == []
    [skipped] = got["skipped"]
    assert skipped["runner"] == ",".join(CORE_RUNNERS)


def test_a_runner_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    done = bench(tmp_path, "--quick", "--runners", "thread,dask", env=CORE_ONLY, timeout=60)
    assert done.returncode == 2
    assert "runner dask is not installed here (installed: thread, sync, process)" in done.stderr


def test_plot_has_a_panel_per_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(REPO))
    from bench.__main__ import plot

    rows = overhead_rows()
    path = tmp_path / "overhead.png"
    assert plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot([{"scenario": "import baton", "ms": 1.0}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def overhead_rows() -> list[dict[str, Any]]:
    return [
        {
            "scenario": f"overhead-{mode}",
            "runner": runner,
            "raw": raw,
            "n": n,
            "baton_us_per_task": 10.0,
            "raw_us_per_task": 5.0,
        }
        for mode in ("map", "submit")
        for runner, raw in (("thread", "ThreadPoolExecutor"), ("sync", "plain loop"))
        for n in (1_000, 10_000)
    ]


def test_plot_legend_hides_no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.syspath_prepend(str(REPO))
    from bench.__main__ import figure

    fig = figure(overhead_rows())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    [legend] = fig.legends
    box = legend.get_window_extent(renderer)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    # Baton's line for each runner, then its raw engine's: two columns, side by side.
    assert [text.get_text() for text in legend.get_texts()] == [
        "baton thread",
        "baton sync",
        "ThreadPoolExecutor",
        "plain loop",
    ]


def test_plot_only_redraws_the_plot_of_a_results_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "results.json").write_text(json.dumps({"rows": overhead_rows()}))
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--plot-only", str(recorded / "results.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (recorded / "overhead.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert done.stdout == f"wrote {recorded / 'overhead.png'}\n"
    # Nothing was measured: no new results.json beside the plot, none in bench/results.
    assert sorted(p.name for p in recorded.iterdir()) == ["overhead.png", "results.json"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quick"], "--plot-only measures nothing, so --quick has no effect with it"),
        (["--runners", "thread"], "so --runners has no effect"),
    ],
)
def test_plot_only_refuses_measuring_options(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"rows": overhead_rows()}))
    done = bench(tmp_path, "--plot-only", str(tmp_path / "results.json"), *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "overhead.png").exists()


def test_plot_only_of_a_file_that_is_not_results_json(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text("[1, 2]")
    done = bench(tmp_path, "--plot-only", str(tmp_path / "other.json"), timeout=60)
    assert done.returncode == 2
    assert "is not a results.json written by python -m bench" in done.stderr


@pytest.mark.slow
def test_locality_on_dask_keeps_the_data_off_the_driver(tmp_path: Path) -> None:
    pytest.importorskip("baton_dask")
    pytest.importorskip("psutil")
    done = bench(tmp_path, "--quick", "--runners", "dask", "--scenarios", "locality")
    [row] = results(tmp_path, done)["rows"]
    assert row["scenario"] == "locality"
    assert row["runner"] == "dask"
    # Fetched to the driver, the data shows in its memory; passed on by Baton, it does not.
    assert row["raw_via_driver_mb"] >= row["mb"] / 2
    assert row["baton_driver_mb"] < row["mb"] / 2
    assert row["raw_driver_mb"] < row["mb"] / 2


def test_the_tracing_scenario_runs_when_asked_for(tmp_path: Path) -> None:
    done = bench(tmp_path, "--quick", "--scenarios", "tracing", "--runners", "thread")
    rows = results(tmp_path, done)["rows"]
    assert [(row["scenario"], row["n"]) for row in rows] == [
        ("BATON_TRACE_FILE set (thread .map)", 200),
        ("BATON_REPORT_FILE set (thread .map)", 200),
    ]
    assert all(row["ratio"] > 0 for row in rows)
