"""free_port: ports for servers about to start, out of the way of outgoing connections."""

from __future__ import annotations

import socket

import pytest

from atelier.tools.process import _ephemeral_low, free_port

pytestmark = pytest.mark.unit


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), (low, ports)
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    low = _ephemeral_low()
    with socket.socket() as held:
        held.bind(("127.0.0.1", low - 3))  # a server's port in the drawing range
        held.listen()
        draws = iter([low - 3, low - 2])
        monkeypatch.setattr("atelier.tools.process._HANDED_OUT", set())
        monkeypatch.setattr("atelier.tools.process.random.randint", lambda a, b: next(draws))
        assert free_port() == low - 2
