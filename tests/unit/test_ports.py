"""Port picks for the servers tests start: a port handed to a Ray process or moto must still be free when it binds."""
from __future__ import annotations

import socket

import pytest

from tests import ports
from tests.ports import _ephemeral_ports, free_port


def test_ports_are_below_the_ephemeral_range_and_never_handed_out_twice():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & set(_ephemeral_ports()), "an outgoing connection could take an ephemeral port"


@pytest.mark.parametrize("host", ["127.0.0.1", ""])
def test_a_port_something_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch, host: str):
    with socket.socket() as taken:
        for port in range(30000, _ephemeral_ports().start):
            try:
                taken.bind((host, port))
                break
            except OSError:
                continue
        taken.listen()
        first_pick = lambda population, k: [port, *(p for p in population if p != port)]  # noqa: E731
        monkeypatch.setattr(ports.random, "sample", first_pick)
        monkeypatch.setattr(ports, "_handed_out", set())  # only the bind can pass it over
        assert free_port() != port
