"""redis_wire against a real redis-server: the fast reply path is held to redis-py's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis

from features import redis_wire

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    tag = f"test-wire-{uuid.uuid4().hex[:8]}"
    yield tag
    keys = list(redis_client.scan_iter(f"{tag}*"))
    if keys:
        redis_client.delete(*keys)


def _commands(prefix: str) -> list[tuple[Any, ...]]:
    """Every reply shape the project reads: ints, statuses, bulks, nils, maps, arrays."""
    big = "x" * 200_000  # one reply spread over many socket reads
    return [
        ("HSET", f"{prefix}:h", "a", "1", "b", b"\x00\xff"),
        ("SET", f"{prefix}:s", big),
        ("GET", f"{prefix}:s"),
        ("GET", f"{prefix}:missing"),
        ("HGETALL", f"{prefix}:h"),
        ("HMGET", f"{prefix}:h", "a", "nope", "b"),
        ("ZADD", f"{prefix}:z", 1.5, "m1", 2, "m2"),
        ("ZMSCORE", f"{prefix}:z", "m1", "nope"),
        *[("INCR", f"{prefix}:n") for _ in range(2_000)],
        ("PING",),
    ]


def _read_response_path(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    conn = client.connection_pool.get_connection()
    try:
        conn.send_packed_command([b"".join(hiredis.pack_command(c) for c in commands)])
        return [conn.read_response() for _ in commands]
    finally:
        client.connection_pool.release(conn)


@pytest.mark.parametrize("protocol", [2, 3])
def test_fast_replies_equal_read_response(redis_url: str, prefix: str, protocol: int) -> None:
    client = redis.Redis.from_url(redis_url, protocol=protocol)
    try:
        fast = redis_wire.run(client, _commands(prefix))
        client.delete(f"{prefix}:h", f"{prefix}:s", f"{prefix}:z", f"{prefix}:n")
        slow = _read_response_path(client, _commands(prefix))
    finally:
        client.close()
    assert fast == slow
    assert fast[2] == b"x" * 200_000 and fast[-2] == 2_000 and fast[-1] in (b"PONG", "PONG")


def test_the_fast_path_is_taken(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """With hiredis installed, replies never go through read_response (else it is moot)."""
    redis_wire.run(redis_client, [("PING",)])  # connect first: the handshake reads its own
    calls = []
    original = redis.connection.AbstractConnection.read_response

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", counting)
    assert len(redis_wire.run(redis_client, [("PING",)] * 50)) == 50
    assert calls == []


def test_an_error_reply_raises_and_leaves_the_client_usable(
    redis_client: redis.Redis, prefix: str
) -> None:
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        redis_wire.run(redis_client, [("SET", f"{prefix}:a", "1"), ("HSET", f"{prefix}:b")])
    # The replies after the error were never read: that connection must not be reused.
    assert redis_wire.run(redis_client, [("GET", f"{prefix}:a"), ("PING",)])[0] == b"1"


def test_a_dead_server_is_a_redis_error() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        redis_wire.run(client, [("PING",)])


def test_frames_from_cached_pieces_equal_packed_commands() -> None:
    args = (b"HSET", b"key", b"f", b"\x00\r\n", b"", b"v" * 300)
    assert redis_wire.header(len(args)) + b"".join(map(redis_wire.bulk, args)) == (
        hiredis.pack_command(args)  # type: ignore[arg-type]
    )
