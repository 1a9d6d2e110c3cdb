"""The default ports of Dask and Ray, and holding one (see tests/conftest.py)."""

from __future__ import annotations

import socket

DEFAULT_PORTS = {
    8786: "Dask scheduler",
    8787: "Dask dashboard",
    6379: "Ray head (GCS)",
    8265: "Ray dashboard",
}


def hold_port(port: int) -> socket.socket | None:
    """A socket listening on 127.0.0.1:`port`, or None if something else holds it."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.bind(("127.0.0.1", port))
        held.listen()
    except OSError:
        held.close()
        return None
    return held
