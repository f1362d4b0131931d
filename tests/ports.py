"""Ports for the servers tests start (Ray nodes, moto's S3): free, and safe from outgoing connections."""
from __future__ import annotations

import random
import socket
from pathlib import Path


# Ray's workers listen on 10002-19999 unless told otherwise (`--min-worker-port`, `--max-worker-port`).
_ABOVE_RAY_WORKER_PORTS = 20000
_handed_out: set[int] = set()


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A port nothing is bound to on any interface, below the kernel's ephemeral range.

    A port from `bind(0)` is an ephemeral one, and a Ray node that starts opens many outgoing
    connections, each taking an ephemeral port as its local end: one of them could take the port
    between this pick and the bind of the server it is for (a Ray process, moto's S3). When that
    server is the runtime env agent it exits, so every job fails with "runtime_env setup failed" and
    the raylet, then the node, soon follow.
    """
    ephemeral = _ephemeral_ports()
    below = range(_ABOVE_RAY_WORKER_PORTS, ephemeral.start)
    for port in random.sample(below, len(below)) if len(below) >= 1000 else []:
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("", port))  # all interfaces: Ray binds the node's IP, not only loopback
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # an unusual ephemeral range leaves no room below it
        sock.bind(("", 0))
        return sock.getsockname()[1]
