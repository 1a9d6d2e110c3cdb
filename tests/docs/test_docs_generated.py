"""Generated pages come from the code: the settings table lists every setting, the
command reference every subcommand, and the site's navigation every page."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from baton._settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / "_ext" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load("hooks")


def table_rows(table: str) -> dict[str, list[str]]:
    """Rows of a Markdown table by their first cell, without the header."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows[cells[0]] = cells
    return rows


def test_settings_table_lists_every_field_with_its_description() -> None:
    rows = table_rows(hooks.settings_table())
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        row = rows[f"`BATON_{name.upper()}`"]
        assert row[3] == " ".join(field.description.split()).replace("|", "\\|")


def test_settings_table_names_the_variables_pydantic_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = table_rows(hooks.settings_table())
    monkeypatch.setenv(rows["`BATON_TASK_RUNNER`"][0].strip("`"), "sync")
    monkeypatch.setenv(rows["`BATON_THREAD_MAX_WORKERS`"][0].strip("`"), "3")
    settings = Settings()
    assert (settings.task_runner, settings.thread_max_workers) == ("sync", 3)


def test_settings_table_shows_defaults_and_types() -> None:
    rows = table_rows(hooks.settings_table())
    assert rows["`BATON_TASK_RUNNER`"][1:3] == ["text", "`thread`"]
    assert rows["`BATON_THREAD_MAX_WORKERS`"][1:3] == ["whole number (≥ 1)", "unset"]
    assert rows["`BATON_LOG_LEVEL`"][1].startswith("one of `DEBUG`, `INFO`")
    assert rows["`BATON_STRICT_PLUGINS`"][1:3] == ["boolean", "`0`"]


def test_settings_page_is_generated() -> None:
    page = (DOCS / "settings.md").read_text()
    assert "<!-- generated: settings-table -->" in page
    rendered = hooks.render(page)
    assert "<!-- generated:" not in rendered
    for name in Settings.model_fields:
        assert f"`BATON_{name.upper()}`" in rendered


def test_cli_reference_covers_every_subcommand() -> None:
    from baton._cli import main

    page = (DOCS / "cli.md").read_text()
    assert "<!-- generated: cli-reference -->" in page
    rendered = hooks.render(page)
    assert main.commands, "the baton command has no subcommands"
    for name, command in main.commands.items():
        assert f"### `baton {name}`" in rendered
        assert f"Usage: baton {name}" in rendered
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert opt in rendered, (name, opt)


def test_unknown_marker_fails_the_build() -> None:
    with pytest.raises(ValueError, match="Unknown marker 'generated: nope'"):
        hooks.render("# Page\n\n<!-- generated: nope -->\n")


def nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def test_navigation_lists_every_page_once() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(listed) == on_disk


def test_every_runner_has_a_page_in_the_navigation() -> None:
    import baton

    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    [runners] = [item["Task runners"] for item in config["nav"] if "Task runners" in item]
    listed = nav_pages(runners)
    names = {r.name for r in baton.list_runners() if r.distribution.startswith("baton-")}
    assert {"thread", "process", "sync"} <= names
    missing = [name for name in sorted(names) if f"runners/{name}.md" not in listed]
    assert not missing, f"runners without a page under 'Task runners' in mkdocs.yml: {missing}"


def test_every_runner_page_states_the_runners_capabilities() -> None:
    import baton

    for info in baton.list_runners():
        page = DOCS / "runners" / f"{info.name}.md"
        if not page.is_file():
            continue
        text = " ".join(page.read_text().split())
        declared = sorted(c.value for c in info.load().capabilities)
        match = re.search(r"\*\*Capabilities\*\*: ([^.]*)\.", text)
        assert match, f"{page.name} has no '**Capabilities**:' line"
        stated = sorted(re.findall(r"`([a-z-]+)`", match[1]))
        assert stated == declared, (page.name, stated, declared)


def test_capability_table_matches_the_runners() -> None:
    import baton

    text = (DOCS / "runners" / "index.md").read_text()
    table = text[text.index("| capability |") :].split("\n\n", 1)[0]
    header = [c.strip().strip("`") for c in table.splitlines()[0].strip("|").split("|")]
    rows = table_rows(table)
    for info in baton.list_runners():
        if info.name not in header:
            continue
        column = header.index(info.name)
        declared = {c.value for c in info.load().capabilities}
        shown = {name.strip("`") for name, row in rows.items() if row[column] == "yes"}
        assert shown == declared, (info.name, shown, declared)


def test_plugin_reference_pages_document_the_public_api() -> None:
    import importlib.util

    for package, page in (("baton_dask", "dask.md"), ("baton_ray", "ray.md")):
        if importlib.util.find_spec(package) is None:
            continue
        module = importlib.import_module(package)
        text = (DOCS / "reference" / page).read_text()
        documented = set(re.findall(rf"^::: {package}\.(\w+)$", text, re.MULTILINE))
        assert documented == set(module.__all__), (page, documented)


def test_runner_api_reference_documents_every_name() -> None:
    import baton
    import baton.runners

    text = (DOCS / "reference" / "runners.md").read_text()
    rendered = set(re.findall(r"^::: baton\.runners\.(\w+)$", text, re.MULTILINE))
    linked = set(re.findall(r"\(api\.md#baton\.(\w+)\)", text))
    # Names that `baton` exports too are documented on the API page, and linked here.
    assert linked <= set(baton.__all__), linked - set(baton.__all__)
    assert rendered | linked == set(baton.runners.__all__), set(baton.runners.__all__) ^ (
        rendered | linked
    )


def test_api_signatures_are_laid_out_over_several_lines() -> None:
    # mkdocstrings lays a long signature out one parameter a line only with ruff or
    # black importable in the build's environment: without one, every signature of
    # the API pages is a single line, however long.
    import configparser

    yaml = pytest.importorskip("yaml")
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    deps = [line.strip() for line in tox["testenv:docs"]["deps"].splitlines()]
    formatters = [d for d in deps if re.match(r"(ruff|black)\b", d)]
    assert formatters, f"the docs env installs neither ruff nor black: {deps}"
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    [mkdocstrings] = [p["mkdocstrings"] for p in config["plugins"] if "mkdocstrings" in p]
    options = mkdocstrings["handlers"]["python"]["options"]
    assert options["separate_signature"] is True
    assert options["line_length"] == 80


def test_docstrings_get_fenced_blocks() -> None:
    pytest.importorskip("griffe", reason="the API reference needs mkdocstrings: tox -e docs")
    fence = load("griffe_docstrings").fence_docstring
    text = (
        "Does things.\n\nPublish it like this::\n\n    [project]\n    name = 'x'\n\n"
        "Then:\n\n>>> 1 + 1\n2\n\nThe end."
    )
    assert fence(text) == (
        "Does things.\n\nPublish it like this:\n\n```toml\n[project]\nname = 'x'\n```\n\n"
        "Then:\n\n```pycon\n>>> 1 + 1\n2\n```\n\nThe end."
    )


def test_empty_log_limit_means_no_limit_as_the_table_says(monkeypatch: pytest.MonkeyPatch) -> None:
    row = table_rows(hooks.settings_table())["`BATON_TASK_RUN_LOG_LIMIT`"]
    assert "Unset (empty) for no limit" in row[3]
    monkeypatch.setenv("BATON_TASK_RUN_LOG_LIMIT", "")
    assert Settings().task_run_log_limit is None
    monkeypatch.setenv("BATON_TASK_RUN_LOG_LIMIT", "5")
    assert Settings().task_run_log_limit == 5


# -- the conformance matrix -------------------------------------------------------------


def test_conformance_matrix_page_is_generated() -> None:
    page = (DOCS / "runners" / "matrix.md").read_text()
    assert "<!-- generated: conformance-matrix -->" in page
    rendered = hooks.render(page)
    assert "<!-- generated:" not in rendered
    table = rendered[rendered.index("| capability |") :].split("\n\n", 1)[0]
    header = [c.strip().strip("`") for c in table.splitlines()[0].strip("|").split("|")]
    assert header[1:4] == ["thread", "process", "sync"]
    rows = table_rows(table)
    assert len(rows) == 1 + len(baton_capabilities())


def baton_capabilities() -> list[str]:
    from baton import Capability

    return [c.value for c in Capability]


def test_the_builtin_runners_have_current_recorded_runs() -> None:
    import json

    from baton import get_runner
    from baton.testing._kit import conformance_tests

    recorded = json.loads(hooks.RESULTS.read_text())
    for name in ("thread", "process", "sync"):
        entry = recorded[name]
        assert set(entry["outcomes"]) == set(conformance_tests()), name
        assert entry["capabilities"] == sorted(c.value for c in get_runner(name).capabilities)
        failed = [t for t, o in entry["outcomes"].items() if o in ("failed", "error")]
        assert not failed, (name, failed)


def test_conformance_matrix_cells(tmp_path: Path) -> None:
    import json

    from baton.testing._kit import conformance_tests

    tests = conformance_tests()
    hard = [t for t, spec in tests.items() if "hard-timeouts" in {c.value for c in spec.requires}]
    outcomes = {
        t: ("skipped" if "hard-timeouts" not in {c.value for c in s.requires} else "failed")
        for t, s in tests.items()
    }
    outcomes.update({t: "passed" for t, s in tests.items() if not s.requires})
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {
                "liar": {
                    "capabilities": ["hard-timeouts"],
                    "kit_version": "0",
                    "level": 2,
                    "outcomes": outcomes,
                }
            }
        )
    )
    table = hooks.conformance_matrix(results).split("\n\n")[0]
    header = [c.strip().strip("`") for c in table.splitlines()[0].strip("|").split("|")]
    column = header.index("liar")
    rows = {name.split(" (")[0].strip("`"): row for name, row in table_rows(table).items()}
    assert rows["hard-timeouts"][column] == f"✗ {len(hard)} of {len(hard)} failed"
    assert rows["processes"][column].startswith("not declared (")
    assert rows["every runner"][column].startswith("✓ ")
    del outcomes[hard[0]]
    results.write_text(
        json.dumps({"liar": {"capabilities": [], "kit_version": "0", "level": 2, "outcomes": {}}})
    )
    with pytest.raises(ValueError, match=r"recorded conformance runs of liar are out of date"):
        hooks.conformance_matrix(results)


def test_only_a_whole_run_of_the_kit_is_merged(tmp_path: Path) -> None:
    import json

    from baton.testing import LATEST_LEVEL
    from baton.testing._kit import conformance_tests

    runner = {"name": "remote", "class": "x.Remote", "capabilities": ["async"]}
    tests = {name: {"outcome": "passed"} for name in conformance_tests()}
    outcome, results = tmp_path / "outcome.json", tmp_path / "results.json"
    partial = dict(list(tests.items())[1:])
    outcome.write_text(json.dumps({"runner": {**runner, "level": LATEST_LEVEL}, "tests": partial}))
    assert not hooks.merge_conformance("remote", outcome, results)
    assert not results.exists()
    other_tests = {**tests, "test_of_the_plugin_itself": {"outcome": "failed"}}
    outcome.write_text(
        json.dumps({"runner": {**runner, "level": LATEST_LEVEL}, "tests": other_tests})
    )
    assert hooks.merge_conformance("remote", outcome, results)
    entry = json.loads(results.read_text())["remote"]
    assert entry["capabilities"] == ["async"] and entry["level"] == LATEST_LEVEL
    assert set(entry["outcomes"]) == set(conformance_tests())
