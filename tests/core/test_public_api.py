"""The public surface: one `__init__` with `__all__`, public module paths, a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import baton


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(baton) if not name.startswith("_")}
    # public modules: the hook specifications, the runner-author API, the kit
    modules = {"hookspecs", "runners", "testing"}
    assert set(baton.__all__) - {"__version__"} == public - modules
    assert len(baton.__all__) == len(set(baton.__all__))


def test_public_objects_report_the_public_module() -> None:
    for name in baton.__all__:
        obj = getattr(baton, name)
        module = getattr(obj, "__module__", None)
        if module is not None and isinstance(obj, type):
            assert module == "baton", f"{name} reports {module}"


def test_import_baton_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, json, baton; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_settings', 'asyncio', 'importlib_metadata', 'click'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_typed_marker_ships_with_the_package() -> None:
    from importlib.resources import files

    assert files("baton").joinpath("py.typed").is_file()


def test_runner_api_lists_its_names_and_reports_its_module() -> None:
    import baton.runners

    defined = {
        name
        for name, obj in vars(baton.runners).items()
        if not name.startswith("_") and getattr(obj, "__module__", "").startswith("baton")
    }
    constants = {"FINAL_STATE_TYPES", "AWAITING_RESOURCES"}
    assert set(baton.runners.__all__) - constants == defined - {"annotations"}
    for name in baton.runners.__all__:
        obj = getattr(baton.runners, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) or callable(obj):
            assert module in ("baton", "baton.runners"), f"{name} reports {module}"
