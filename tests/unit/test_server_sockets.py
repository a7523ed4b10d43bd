"""`bind_reuseport`: several listening sockets on one port, the kernel spreading
connections over them (what `streamrec serve --workers N` gives each process)."""

from __future__ import annotations

import select
import socket

import pytest

from online.server import bind_reuseport, ensure_port_free, reuseport_supported
from streamrec.errors import StreamrecError
from streams.broker import free_port

pytestmark = pytest.mark.skipif(not reuseport_supported(), reason="SO_REUSEPORT balances on Linux")


def test_connections_spread_over_sockets_bound_to_one_port() -> None:
    port = free_port()
    listeners = [bind_reuseport("127.0.0.1", port) for _ in range(2)]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
    try:
        accepted = [0, 0]
        while sum(accepted) < len(clients):
            ready, _, _ = select.select(listeners, [], [], 5)
            assert ready, f"only {sum(accepted)} of {len(clients)} connections arrived"
            for sock in ready:
                conn, _ = sock.accept()
                conn.close()
                accepted[listeners.index(sock)] += 1
        assert min(accepted) >= 8, accepted  # all on one socket: odds 2 in 2**64
    finally:
        for s in [*clients, *listeners]:
            s.close()


def test_a_port_taken_without_reuseport_is_a_clear_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(StreamrecError, match=r"cannot listen on 127\.0\.0\.1"):
            bind_reuseport("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_a_port_someone_listens_on_is_refused_before_joining_it() -> None:
    """SO_REUSEPORT would join leftover listeners and share their traffic: checked first."""
    port = free_port()
    leftover = bind_reuseport("127.0.0.1", port)
    try:
        with pytest.raises(StreamrecError, match="cannot listen"):
            ensure_port_free("127.0.0.1", port)
    finally:
        leftover.close()
    ensure_port_free("127.0.0.1", port)  # free again: no error
