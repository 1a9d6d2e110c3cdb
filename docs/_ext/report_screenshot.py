"""Makes docs/assets/observability/report.png: the HTML report of a flow run of 1,000
task runs with failures and retries, as headless Chromium shows it.

    python docs/_ext/report_screenshot.py
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baton import flow, get_runner, task

ASSET = Path(__file__).resolve().parents[1] / "assets" / "observability" / "report.png"


@task
def fetch(i: int) -> int:
    time.sleep(random.uniform(0.001, 0.02))
    return i


@task(retries=2)
def parse(i: int) -> int:
    time.sleep(random.uniform(0.002, 0.03))
    if i % 41 == 3 and random.random() < 0.75:
        raise ValueError(f"record {i} is malformed")
    return i


@task
def store(i: int) -> int:
    time.sleep(random.uniform(0.001, 0.01))
    return i


@flow(task_runner=get_runner("thread", max_workers=8))
def ingest(n: int = 334) -> None:
    store.map(parse.map(fetch.map(range(n))))


def main() -> None:
    random.seed(7)
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        os.environ["BATON_REPORT_FILE"] = str(page)
        os.environ["BATON_LOG_LEVEL"] = "WARNING"
        ingest(return_state=True)
        ASSET.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={folder}/profile",
                "--hide-scrollbars",
                "--window-size=1280,1500",
                f"--screenshot={ASSET}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    print(f"wrote {ASSET}", file=sys.stderr)


if __name__ == "__main__":
    main()
