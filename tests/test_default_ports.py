"""The session's hold of the default ports of Dask and Ray (see tests/conftest.py)."""

from __future__ import annotations

import os
import socket

import pytest
from held_ports import DEFAULT_PORTS, hold_port


def test_a_port_in_use_is_not_held() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        assert hold_port(taken.getsockname()[1]) is None
    finally:
        taken.close()


@pytest.mark.skipif(
    os.environ.get("BATON_HOLD_DEFAULT_PORTS") != "1", reason="BATON_HOLD_DEFAULT_PORTS=1 not set"
)
def test_the_default_ports_are_held_for_the_session(hold_default_ports: dict[int, str]) -> None:
    for port in DEFAULT_PORTS:
        probe = socket.socket()
        try:
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", port))
        finally:
            probe.close()
    assert set(hold_default_ports) <= set(DEFAULT_PORTS)
