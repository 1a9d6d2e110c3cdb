"""Large data between the `process` runner's workers and the flow's process through
shared memory instead of the socket.

What `encode_result`/`dumps` put out of band (pickle protocol 5 buffers: NumPy
arrays and the like, and large `bytes`) is written once into a file in
``/dev/shm`` (memory, not disk; the temporary directory where there is none). The
other side maps that file: a NumPy array is rebuilt on the mapped pages, with no
copy, and a `bytes` value is read once into its new object (reading, rather than
mapping, keeps the process's memory at one copy while it is made). Small buffers
travel in the message itself.

A result whose out-of-band data is only `bytes` skips the file on Linux: the worker
lends them (`lend_buffers`: where they are in its memory), the flow's process
copies them straight into its new `bytes` objects (`take_lent`, with
``process_vm_readv``: one copy, where the file costs two) and says so, and only then
does the worker let them go. Where that read is refused (a kernel setting, a
sandbox), the flow's process asks for the file instead, and the worker stops lending.
The same way, a run's arguments that are only large `bytes` are lent to its worker,
which copies them once, as long as the workers said, when they started, that they can
read this process's memory (`probe`, `can_read`); the flow's process holds them until
the run has ended.

Who removes a file:
- a result's file, the flow's process, as soon as it opened it (the mapping keeps
  the pages for as long as the value lives); if the worker dies first, the flow's
  process removes the files of that worker by their name
  (``baton-<flow pid>-<worker pid>-<n>``);
- the arguments' file of a run, the flow's process, when the run has ended;
- anything left when the flow's process exits (a result that was never read), the
  flow's process at exit.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import itertools
import mmap
import os
import pickle
import sys
import tempfile
from typing import Any

__all__ = [
    "INLINE_LIMIT",
    "BufferRef",
    "can_lend",
    "can_read",
    "file_prefix",
    "lend_buffers",
    "open_buffers",
    "probe",
    "remove",
    "remove_leftovers",
    "remove_ref",
    "remove_worker_files",
    "share_buffers",
    "take_lent",
]

INLINE_LIMIT = 1 << 20  # out-of-band data up to this size travels in the message
_ALIGN = 64  # NumPy wants its data aligned
_counter = itertools.count()

# ("inline", [entry, ...]), ("shm", path, [(offset, length, is_bytes), ...]) or
# ("lent", [(address, length), ...])
BufferRef = tuple[Any, ...]


def _directory() -> str:
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def file_prefix(driver_pid: int, owner: str) -> str:
    """The start of the names of the files of the flow's process `driver_pid` made by
    `owner` (a worker's pid, or "d" for the flow's process itself)."""
    return os.path.join(_directory(), f"baton-{driver_pid}-{owner}-")


def share_buffers(buffers: list[Any], prefix: str) -> BufferRef | None:
    """Put `buffers` (from `dumps(..., buffers)`) where the other side can read them:
    in the message if small, else in one new shared-memory file named from `prefix`
    (in the message after all when that file cannot be written: a full ``/dev/shm``,
    as containers often have a small one)."""
    if not buffers:
        return None
    views = [_raw(b) for b in buffers]
    total = sum(v.nbytes for v in views)
    if total >= INLINE_LIMIT:
        try:
            return _write_file(buffers, views, f"{prefix}{next(_counter)}")
        except OSError:
            pass
    inline = [b if type(b) is bytes else bytearray(v) for b, v in zip(buffers, views, strict=True)]
    return ("inline", inline)


def _write_file(buffers: list[Any], views: list[memoryview], path: str) -> BufferRef:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        parts: list[tuple[int, int, bool]] = []
        offset = 0
        for buffer, view in zip(buffers, views, strict=True):
            offset = -(-offset // _ALIGN) * _ALIGN
            parts.append((offset, view.nbytes, type(buffer) is bytes))
            _write_all(fd, view, offset)
            offset += view.nbytes
    except BaseException:
        os.close(fd)
        remove(path)
        raise
    os.close(fd)
    return ("shm", path, parts)


def _raw(buffer: Any) -> memoryview:
    if isinstance(buffer, pickle.PickleBuffer):
        return buffer.raw()
    return memoryview(buffer).cast("B")


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    written = 0
    size = view.nbytes
    while written < size:
        written += os.pwrite(fd, view[written : written + (1 << 30)], offset + written)


def open_buffers(ref: BufferRef | None, keep_file: bool = False) -> list[Any] | None:
    """The buffers `share_buffers` put in `ref`, for `loads`: `bytes` entries as
    `bytes`, the others writable (mapped from the file, without a copy). The file is
    removed once open, unless `keep_file` (its maker then removes it)."""
    if ref is None:
        return None
    if ref[0] == "inline":
        return list(ref[1])
    _, path, parts = ref
    fd = os.open(path, os.O_RDWR)
    try:
        if not keep_file:
            remove(path)
        end = max(
            (offset + length for offset, length, is_bytes in parts if not is_bytes), default=0
        )
        mapped = memoryview(mmap.mmap(fd, end)) if end else None
        entries: list[Any] = []
        for offset, length, is_bytes in parts:
            if is_bytes:
                entries.append(_read_exact(fd, offset, length))
            else:
                assert mapped is not None
                entries.append(mapped[offset : offset + length])
        return entries
    finally:
        os.close(fd)


def _read_exact(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise EOFError(f"shared-memory file ended {length - got} bytes early")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def _process_vm_readv() -> Any:
    """libc's ``process_vm_readv``, or None where there is none (or where a `bytes`
    object's address, from ctypes, may not be that of its own data: not CPython)."""
    if not sys.platform.startswith("linux") or sys.implementation.name != "cpython":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_ssize_t
    function.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    return function


_readv: Any = _process_vm_readv()


def can_lend(buffers: list[Any]) -> bool:
    """Whether `buffers` can be lent rather than written to a file: Linux, and large
    `bytes` only (each one its own object, which nothing changes)."""
    return (
        _readv is not None
        and bool(buffers)
        and all(type(b) is bytes and len(b) >= INLINE_LIMIT for b in buffers)
    )


def lend_buffers(buffers: list[bytes]) -> BufferRef:
    """Where the `bytes` `buffers` are in this process's memory, for `take_lent` in the
    flow's process; they must stay alive until it answered."""
    return ("lent", [(_address(b), len(b)) for b in buffers])


def _address(value: bytes) -> int:
    """Where the data of `value` is (in CPython, its own buffer, not a copy)."""
    address = ctypes.cast(ctypes.c_char_p(value), ctypes.c_void_p).value
    assert address is not None
    return address


def take_lent(ref: BufferRef, pid: int) -> list[Any] | None:
    """The `bytes` that process `pid` lent (`lend_buffers`), copied once into new
    objects here; None if this process may not read its memory."""
    entries: list[Any] = []
    for address, length in ref[1]:
        if length < INLINE_LIMIT:
            return None  # the small ones may be shared objects: never written into
        # bytes(n) comes from calloc: fresh, untouched pages, so the one write into
        # them is the copy itself. Nothing else holds the object before it is filled.
        value = bytes(length)
        if not _read_from(pid, address, _address(value), length):
            return None
        entries.append(value)
    return entries


def _read_from(pid: int, remote: int, local: int, length: int) -> bool:
    if _readv is None:
        return False
    done = 0
    while done < length:
        here = _IOVec(local + done, length - done)
        there = _IOVec(remote + done, length - done)
        got = _readv(pid, ctypes.byref(here), 1, ctypes.byref(there), 1, 0)
        if got <= 0:
            return False
        done += got
    return True


_PROBE = os.urandom(16)  # what a worker reads here to learn whether it may


def probe() -> tuple[int, bytes]:
    """Where this process holds a few known bytes, and what they are: a worker that can
    read them (`can_read`) can take arguments lent by this process."""
    return _address(_PROBE), _PROBE


def can_read(pid: int, where: tuple[int, bytes]) -> bool:
    """Whether this process can read the memory of process `pid` (`probe` there)."""
    if _readv is None:
        return False
    address, expected = where
    got = ctypes.create_string_buffer(len(expected))
    return _read_from(pid, address, ctypes.addressof(got), len(expected)) and got.raw == expected


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_ref(ref: BufferRef | None) -> None:
    """Remove the file of `ref`, if it has one (a message that will not be read)."""
    if ref is not None and ref[0] == "shm":
        remove(ref[1])


def remove_worker_files(worker_pid: int) -> None:
    """Remove the files a worker of this process made and did not hand over (it died)."""
    for path in glob.glob(glob.escape(file_prefix(os.getpid(), str(worker_pid))) + "*"):
        remove(path)


def remove_leftovers() -> None:
    """Remove every file of this process's pools that is still there (at exit)."""
    for path in glob.glob(glob.escape(os.path.join(_directory(), f"baton-{os.getpid()}-")) + "*"):
        remove(path)


atexit.register(remove_leftovers)
