"""The benchmark harness's quick mode runs, so the harness never rots (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--runners", "thread", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    scenarios = {row["scenario"] for row in results["rows"]}
    assert {
        "overhead-map",
        "overhead-submit",
        "chain",
        "fan-out-in",
        "import baton",
        "empty flow run",
    } <= scenarios
    assert any(s.startswith("peak RSS") for s in scenarios)
    for row in results["rows"]:
        if "ratio" in row:
            assert row["ratio"] > 0
            assert row["runner"] == "thread"
    assert results["machine"]["cpus"] >= 1


def test_unknown_runner_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--runners", "nope", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no raw engine known for nope" in done.stderr
