"""The `ray` runner as an installed plugin: found through its entry point, selected by
name or URL, and importing Ray only when it starts."""

from __future__ import annotations

import subprocess
import sys

import baton
from baton._plugins import lookup_runner


def test_the_runner_is_registered_through_the_entry_point() -> None:
    [info] = [r for r in baton.list_runners() if r.name == "ray"]
    assert info.distribution == "baton-ray"
    assert info.target == "baton_ray._runner:RayTaskRunner"
    assert info.url_schemes == ("ray",)
    assert "native-dependencies" in info.capabilities
    assert lookup_runner("ray://127.0.0.1:10001") is info


def test_ray_is_imported_only_when_a_runner_starts() -> None:
    code = (
        "import sys, baton; "
        "runner = baton.get_runner('ray'); "
        "import baton_ray; baton_ray.remote_options; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr
