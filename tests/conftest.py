"""Fixtures of the whole test session.

With ``BATON_HOLD_DEFAULT_PORTS=1`` (tox sets it), the session holds the default ports
of Dask and Ray on 127.0.0.1 while it runs: a test, example or docstring that starts a
cluster on a default port then fails here (Dask warns that the port is taken, and
``filterwarnings = error`` makes that an error), rather than on a machine where an
open Dask dashboard or a running Ray happens to hold that port. Start clusters on port
0 instead: ``dashboard_address=":0"``, ``include_dashboard=False``, ``--port 0``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

import pytest
from held_ports import DEFAULT_PORTS, hold_port

logger = logging.getLogger("baton.tests")


@pytest.fixture(scope="session", autouse=True)
def hold_default_ports() -> Iterator[dict[int, str]]:
    """The default ports this session holds (none unless BATON_HOLD_DEFAULT_PORTS=1)."""
    if os.environ.get("BATON_HOLD_DEFAULT_PORTS", "").strip().lower() not in ("1", "true", "yes"):
        yield {}
        return
    held: dict[int, socket.socket] = {}
    for port, what in DEFAULT_PORTS.items():
        sock = hold_port(port)
        if sock is None:
            # Taken already: it fails a test that uses it just as well.
            logger.warning("Port %d (%s) is in use by another program; not held", port, what)
        else:
            held[port] = sock
    try:
        yield {port: DEFAULT_PORTS[port] for port in held}
    finally:
        for sock in held.values():
            sock.close()
