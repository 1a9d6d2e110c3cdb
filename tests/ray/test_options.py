"""Options of the `ray` runner and of `remote_options`, checked without a Ray."""

from __future__ import annotations

import pytest
from baton import InvalidOptionsError, get_runner
from baton_ray import RayTaskRunner, remote_options
from baton_ray._options import current_options, options_from_tags


def test_blocks_nest_and_merge() -> None:
    with remote_options(num_cpus=2, resources={"a": 1}, runtime_env={"env_vars": {"X": "1"}}):
        with remote_options(num_gpus=0.5, resources={"b": 2}) as inner:
            assert inner == {
                "num_cpus": 2,
                "num_gpus": 0.5,
                "resources": {"a": 1, "b": 2},
                "runtime_env": {"env_vars": {"X": "1"}},
            }
            with remote_options(num_cpus=1, runtime_env={"env_vars": {"Y": "2"}, "pip": ["z"]}):
                assert current_options() == {
                    "num_cpus": 1,
                    "num_gpus": 0.5,
                    "resources": {"a": 1, "b": 2},
                    "runtime_env": {"env_vars": {"X": "1", "Y": "2"}, "pip": ["z"]},
                }
        assert current_options()["resources"] == {"a": 1}
    assert current_options() == {}


def test_memory_is_whole_bytes() -> None:
    with remote_options(memory=1.5e9) as options:
        assert options == {"memory": 1_500_000_000}


def test_every_bad_option_is_named() -> None:
    with pytest.raises(InvalidOptionsError) as info:
        with remote_options(  # type: ignore[call-overload]
            num_cpus=-1,
            num_gpus=True,
            memory="lots",
            resources={"CPU": 1, "tpu": -2, "": 1},
            runtime_env=["pip"],
        ):
            pass
    text = str(info.value)
    assert "num_cpus: must be a number >= 0 (got -1)" in text
    assert "num_gpus: must be a number >= 0 (got True)" in text
    assert "memory: must be a number >= 0 (bytes)" in text
    assert "use num_cpus= instead of resources['CPU']" in text
    assert "resources['tpu']: must be a number >= 0 (got -2)" in text
    assert "names must be non-empty strings" in text
    assert "runtime_env: must be a dict" in text


def test_tags_set_options() -> None:
    tags = frozenset({"etl", "ray:num_cpus=2", "ray:num_gpus=0.5", "ray:resources.tpu=1"})
    assert options_from_tags(tags, "train") == {
        "num_cpus": 2,
        "num_gpus": 0.5,
        "resources": {"tpu": 1.0},
    }
    assert options_from_tags(frozenset({"etl"}), "train") == {}


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("ray:num_cpus", "expected ray:NAME=NUMBER"),
        ("ray:num_cpus=many", "expected ray:NAME=NUMBER"),
        ("ray:runtime_env=x", "cannot be set by a tag"),
        ("ray:num_gpus=-1", "num_gpus: must be a number >= 0"),
    ],
)
def test_bad_tags_are_named(tag: str, message: str) -> None:
    with pytest.raises(InvalidOptionsError, match="task 'train'") as info:
        options_from_tags(frozenset({tag}), "train")
    assert message in str(info.value)


def test_runner_options_are_checked() -> None:
    with pytest.raises(InvalidOptionsError) as info:
        RayTaskRunner(address=" x", init_kwargs={"address": "auto"}, max_pending=0)
    text = str(info.value)
    assert "address: must be None" in text
    assert "init_kwargs: pass 'address' as RayTaskRunner(address=...)" in text
    assert "max_pending: must be a whole number >= 1 (got 0)" in text
    with pytest.raises(InvalidOptionsError, match="init_kwargs: must be a dict"):
        RayTaskRunner(init_kwargs=["num_cpus"])  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionsError, match="max_pending"):
        RayTaskRunner(max_pending=True)


def test_urls() -> None:
    runner = get_runner("ray://127.0.0.1:10001")
    assert isinstance(runner, RayTaskRunner)
    assert runner.address == "ray://127.0.0.1:10001"
    assert get_runner("ray://").address is None  # type: ignore[attr-defined]
    assert get_runner("ray", address="auto").address == "auto"  # type: ignore[attr-defined]
    for bad in ("ray://host", "ray://host:1/path", "ray://host:1?x=1", "ray://host:port"):
        with pytest.raises(InvalidOptionsError, match="ray://HOST:PORT"):
            get_runner(bad)


def test_duplicate_keeps_the_configuration() -> None:
    runner = RayTaskRunner(address="auto", init_kwargs={"num_cpus": 1}, max_pending=5)
    copy = runner.duplicate()
    assert (copy.address, copy.init_kwargs, copy.max_pending) == ("auto", {"num_cpus": 1}, 5)
    assert not copy.started


def test_task_resources_become_ray_options() -> None:
    from baton_ray._options import options_from_resources

    assert options_from_resources({"GPU": 1, "memory": 4e9, "CPU": 2, "TPU": 0.5}) == {
        "num_cpus": 2,
        "num_gpus": 1,
        "memory": 4_000_000_000,
        "resources": {"TPU": 0.5},
    }
