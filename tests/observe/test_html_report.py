"""BATON_REPORT_FILE: one self-contained HTML page per flow run, checked in a real
headless Chromium: what is asserted below is what the page's script put in the DOM
(the static page holds only empty sections), so a broken script fails these tests."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from baton import flow, task

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="the report is checked in a headless Chromium, and `chromium` is not installed "
    "(apt-get install chromium; CI installs it and fails without it)",
)


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM of `page` after its scripts ran, as headless Chromium serialises it."""
    assert CHROMIUM is not None, "chromium is not installed (CI must install it)"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def attribute(dom: str, element_id: str, name: str) -> str | None:
    tag = re.search(rf'<[a-z]+ [^>]*id="{element_id}"[^>]*>', dom)
    assert tag is not None, f"no element #{element_id}"
    value = re.search(rf'{name}="([^"]*)"', tag.group(0))
    return None if value is None else value.group(1)


def section(dom: str, element_id: str) -> str:
    """The text of element #`element_id` up to the next section heading."""
    start = dom.index(f'id="{element_id}"')
    end = dom.find("<h2", start)
    return dom[start : end if end != -1 else len(dom)]


@task
def double(x: int) -> int:
    return 2 * x


@task(retries=1)
def picky(x: int) -> int:
    if x % 100 == 7:
        raise ValueError(f"seven-ish: {x}")
    return x


def test_the_page_draws_every_attempt_and_lists_failures_with_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @flow(task_runner="thread")
    def numbers(n: int) -> None:
        double.map(picky.map(range(n)))

    page = tmp_path / "report.html"
    monkeypatch.setenv("BATON_REPORT_FILE", str(page))
    assert numbers(300, return_state=True).is_failed()
    static = page.read_text()
    assert "<script src" not in static and "<link" not in static and "http" not in static

    dom = rendered_dom(page, tmp_path / "profile")
    assert 'data-rendered="true"' in dom
    # 300 picky runs (3 of them failing twice), 297 doubles, 3 doubles never ran.
    attempts = 300 + 3 + 297
    assert attribute(dom, "timeline", "data-drawn") == str(attempts)
    assert attribute(dom, "timeline", "data-rows") not in (None, "0")
    facts = section(dom, "facts")
    assert re.search(r'data-fact="runs"><b>600</b>', facts)
    assert re.search(r'data-fact="failures"><b>6</b>', facts)
    assert re.search(r'data-fact="retried"><b>3</b>', facts)

    failures = section(dom, "failures")
    failed = re.findall(r'class="failure" data-run="(picky-[0-9a-f]+)"', failures)
    assert len(failed) == 3
    tracebacks = [
        html.unescape(t) for t in re.findall(r'<pre class="traceback">(.*?)</pre>', failures, re.S)
    ]
    assert len(tracebacks) == 3
    assert all("Traceback (most recent call last)" in t for t in tracebacks)
    assert {re.search(r"ValueError: seven-ish: (\d+)", t).group(1) for t in tracebacks} == {  # type: ignore[union-attr]
        "7",
        "107",
        "207",
    }
    assert "3 task run(s) did not run because an upstream run failed" in failures

    counts = section(dom, "counts")
    assert re.search(r"<td>picky</td><td class=\"num\">300</td>", counts)
    retries = section(dom, "retries")
    assert retries.count("picky-") == 3


def test_a_broken_script_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @flow(task_runner="sync")
    def tiny() -> int:
        return double(2)

    page = tmp_path / "report.html"
    monkeypatch.setenv("BATON_REPORT_FILE", str(page))
    assert tiny() == 4
    dom = rendered_dom(page, tmp_path / "profile")
    assert 'data-rendered="true"' in dom
    page.write_text(page.read_text().replace("const runs = data.runs", "const runs = data.runs.("))
    dom = rendered_dom(page, tmp_path / "profile")
    assert 'data-rendered="true"' not in dom
    assert attribute(dom, "timeline", "data-drawn") is None


def test_ten_thousand_runs_are_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @flow(task_runner="thread")
    def many() -> None:
        double.map(range(10_000))

    page = tmp_path / "report.html"
    monkeypatch.setenv("BATON_REPORT_FILE", str(page))
    many()
    dom = rendered_dom(page, tmp_path / "profile")
    assert attribute(dom, "timeline", "data-drawn") == "10000"
    assert re.search(r'data-fact="runs"><b>10,000</b>', dom)
