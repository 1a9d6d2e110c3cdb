"""Large results and arguments of the `process` runner through shared memory: they
arrive intact, and no shared-memory file is left behind, whatever happens."""

from __future__ import annotations

import glob
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from baton import flow, get_runner, task
from baton._runners._process_shm import (
    INLINE_LIMIT,
    file_prefix,
    open_buffers,
    share_buffers,
)
from baton._travel import LARGE_BYTES, dumps, loads

ENV = {**os.environ, "BATON_LOG_LEVEL": "WARNING"}
MB = 2**20


def _leftovers(pid: int | None = None) -> list[str]:
    prefix = file_prefix(os.getpid() if pid is None else pid, "")[:-1]  # "baton-<pid>-"
    return glob.glob(glob.escape(prefix) + "*")


@pytest.fixture
def runner() -> Any:
    yield get_runner("process", max_workers=2)
    assert _leftovers() == []


@task
def make_bytes(size: int, seed: int = 1) -> bytes:
    return bytes([seed]) * size


@task
def make_pieces(size: int) -> list[Any]:
    return [b"a" * size, {"b": b"b" * size}, bytearray(b"c" * size), "small"]


@task
def checksum(data: Any) -> int:
    return sum(memoryview(data).cast("B")[:: 4096 * 16]) + len(data)


def test_large_bytes_and_buffers_in_and_out(runner: Any) -> None:
    size = 3 * MB

    @flow(task_runner=runner)
    def pipeline() -> tuple[bytes, list[Any], int]:
        blob = make_bytes.submit(size, 7)
        return blob.result(), make_pieces.submit(size).result(), checksum.submit(blob).result()

    blob, pieces, total = pipeline()
    assert blob == bytes([7]) * size
    assert pieces == [b"a" * size, {"b": b"b" * size}, bytearray(b"c" * size), "small"]
    assert type(pieces[2]) is bytearray
    assert total == checksum.fn(blob)


def test_numpy_results_come_back_writable_and_equal(runner: Any) -> None:
    np = pytest.importorskip("numpy")

    @task
    def array(n: int) -> Any:
        return np.arange(n, dtype=np.float64).reshape(-1, 4)

    @task
    def total(a: Any) -> float:
        return float(a.sum())

    n = 2 * MB  # 16 MB of float64

    @flow(task_runner=runner)
    def pipeline() -> tuple[Any, float]:
        a = array.submit(n)
        return a.result(), total.submit(a).result()

    a, sum_ = pipeline()
    assert a.shape == (n // 4, 4)
    assert (a.ravel() == np.arange(n, dtype=np.float64)).all()
    assert sum_ == float(np.arange(n, dtype=np.float64).sum())
    a[0, 0] = 42.0  # a value of its own, not a read-only view


class BigError(Exception):
    """An error that carries a large buffer (and says so briefly)."""

    def __init__(self, data: bytearray) -> None:
        super().__init__(data)
        self.data = data

    def __str__(self) -> str:
        return f"failed with {len(self.data)} bytes"


@task
def fails(size: int) -> None:
    raise BigError(bytearray(size))


def test_a_failure_carrying_a_large_buffer_leaves_no_file(runner: Any) -> None:
    @flow(task_runner=runner)
    def failing() -> tuple[str, int]:
        future = fails.submit(2 * MB)
        future.wait()
        error = future.state.error
        return type(error).__name__, len(getattr(error, "data", b""))

    assert failing() == ("BigError", 2 * MB)


def test_the_files_of_a_worker_that_died_are_removed(runner: Any) -> None:
    @task
    def dies() -> None:
        # What a worker that dies between writing a result and sending it leaves.
        path = file_prefix(os.getppid(), str(os.getpid())) + "999"
        with open(path, "wb") as file:
            file.write(b"x" * 1000)
        os._exit(3)

    @flow(task_runner=runner)
    def crashing() -> bool:
        future = dies.submit()
        future.wait()
        return future.state.is_crashed()

    assert crashing()
    # the runner fixture checks that nothing is left


def test_out_of_band_pickling_round_trip() -> None:
    big = b"z" * LARGE_BYTES
    value = {"one": [big, (big, "x")], "array": bytearray(b"q" * 100), "n": 3}
    buffers: list[Any] = []
    data = dumps(value, buffers)
    assert len(data) < LARGE_BYTES  # the large data went out of band
    assert loads(data, open_buffers(share_buffers(buffers, "unused-"))) == value
    # Large enough: through a file, removed once opened.
    prefix = file_prefix(os.getpid(), "t")
    huge = [bytearray(b"h" * INLINE_LIMIT), b"b" * LARGE_BYTES]
    buffers = []
    data = dumps(huge, buffers)
    ref = share_buffers(buffers, prefix)
    assert ref is not None and ref[0] == "shm"
    assert loads(data, open_buffers(ref)) == huge
    assert not os.path.exists(ref[1])
    assert pickle.loads(dumps(huge)) == huge  # without buffers: as before


INTERRUPTED = """
import os, sys, time
from baton import flow, task

@task
def big(i):
    if i == 0:
        open(sys.argv[1], "w").close()
    return b"x" * (8 * 2**20)

@flow(task_runner="process")
def many():
    return [len(b) for b in big.map(range(10_000)).result()]

print(os.getpid(), flush=True)
many()
"""


def test_ctrl_c_leaves_no_worker_and_no_shared_memory(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(INTERRUPTED))
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(started)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        driver = int(proc.stdout.readline())
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "no task started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in stderr
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert _leftovers(driver) == []


PEAK = """
import os, sys
os.environ["BATON_LOG_LEVEL"] = "WARNING"
from baton import flow, task

kind, size = sys.argv[1], int(sys.argv[2])

@task
def make(n):
    if kind == "numpy":
        import numpy
        return numpy.ones(n // 8)
    return b"x" * n

@flow(task_runner="process")
def run(n):
    value = make.submit(n).result()
    return value.nbytes if kind == "numpy" else len(value)

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise SystemExit("no " + field)

run(10)  # warm workers, imports done
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak
start = status("VmRSS:")
assert run(size) == size
print(start, status("VmHWM:"))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["bytes", "numpy"])
def test_a_large_result_grows_the_flows_memory_by_its_size_once(kind: str, tmp_path: Path) -> None:
    if kind == "numpy":
        pytest.importorskip("numpy")
    size = 128 * MB
    done = subprocess.run(
        [sys.executable, "-c", PEAK, kind, str(size)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    start, peak = (int(x) for x in done.stdout.split())
    assert peak - start < 1.5 * size  # one copy of the value, not the pickle's too


def test_buffers_travel_in_the_message_when_shared_memory_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from baton._runners import _process_shm

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_process_shm, "_write_all", full)
    data = [b"f" * LARGE_BYTES, "small"]
    buffers: list[Any] = []
    blob = dumps(data, buffers)
    ref = share_buffers(buffers, file_prefix(os.getpid(), "t"))
    assert ref is not None and ref[0] == "inline"
    assert loads(blob, open_buffers(ref)) == data
    assert _leftovers() == []


# -- large bytes lent: copied once, from one process's memory into the other -------------


def _kinds_opened(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The kinds of the buffer references of the results the flow's process opens."""
    from baton._runners import _process_pool

    kinds: list[str | None] = []

    def spy(ref: Any, keep_file: bool = False) -> Any:
        kinds.append(None if ref is None else ref[0])
        return open_buffers(ref, keep_file)

    monkeypatch.setattr(_process_pool, "open_buffers", spy)
    return kinds


def _kinds_sent(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The kinds of the buffer references of the arguments sent to the workers."""
    from baton._runners import _process_pool
    from baton._runners._process_jobs import pickle_arguments

    kinds: list[str | None] = []

    def spy(*args: Any) -> Any:
        payload, ref = pickle_arguments(*args)
        kinds.append(None if ref is None else ref[0])
        return payload, ref

    monkeypatch.setattr(_process_pool, "pickle_arguments", spy)
    return kinds


needs_process_vm_readv = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="lending needs Linux process_vm_readv"
)


@needs_process_vm_readv
def test_large_bytes_travel_without_a_file_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = _kinds_opened(monkeypatch)
    sent = _kinds_sent(monkeypatch)
    size = 3 * MB
    with get_runner("process", max_workers=1) as runner:

        @flow(task_runner=runner)
        def pipeline() -> tuple[bytes, int]:
            checksum.submit(b"").result()  # a worker said it can read this process
            blob = make_bytes.submit(size, 5).result()
            return blob, checksum.submit(blob).result()

        blob, total = pipeline()
    assert blob == bytes([5]) * size
    assert total == checksum.fn(blob)
    assert "shm" not in opened  # the result was copied from the worker's memory
    assert sent[-1] == "lent"  # and the argument lent to the worker
    assert _leftovers() == []


def test_a_worker_that_cannot_be_read_sends_its_large_bytes_in_a_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from baton._runners import _process_pool

    asked: list[int] = []

    def refused(ref: Any, pid: int) -> None:
        asked.append(pid)
        return None

    monkeypatch.setattr(_process_pool, "take_lent", refused)
    opened = _kinds_opened(monkeypatch)
    size = 2 * MB
    with get_runner("process", max_workers=1) as runner:

        @flow(task_runner=runner)
        def twice() -> list[bytes]:
            return [make_bytes.submit(size, seed).result() for seed in (3, 4)]

        assert twice() == [bytes([3]) * size, bytes([4]) * size]
    assert opened == ["shm", "shm"]
    assert len(asked) <= 1  # a worker that was refused once stops lending
    assert _leftovers() == []


def test_arguments_go_in_a_file_to_workers_that_cannot_read_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from baton._runners import _process_pool

    monkeypatch.setattr(_process_pool, "probe", lambda: (0, b"unreadable probe"))
    sent = _kinds_sent(monkeypatch)
    blob = b"q" * (2 * MB)
    with get_runner("process", max_workers=1) as runner:

        @flow(task_runner=runner)
        def pipeline() -> list[int]:
            return [checksum.submit(b"").result(), checksum.submit(blob).result()]

        assert pipeline() == [0, checksum.fn(blob)]
    assert sent[-1] == "shm"
    assert _leftovers() == []
