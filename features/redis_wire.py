"""Many Redis commands in one round trip, packed by hiredis instead of redis-py's pipeline.

redis-py's `Pipeline` costs several microseconds of Python per command (a command stack,
per-command packing options, response callbacks), more than Redis spends answering an
HSET. The stream writes tens of thousands of feature rows a second and the API reads a
hundred rows per request, so both pack the RESP frames here and read the replies
straight off the connection. Connections, timeouts, auth and retries stay the client's.

`run` is not a transaction; `transaction` wraps the same packed frames in MULTI/EXEC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import hiredis
import redis.exceptions

if TYPE_CHECKING:
    import redis

Arg = bytes | str | int | float


def round_trip(client: redis.Redis, frames: Sequence[bytes] | bytes, n_replies: int) -> list[Any]:
    """Send packed frames in one write and read `n_replies` replies (RedisError if down).

    An error reply raises `redis.ResponseError` after the connection is dropped, so no
    unread reply is ever left for the next caller.
    """

    if not n_replies:
        return []
    pool = client.connection_pool
    conn = pool.get_connection()
    # One buffer, one sendall: redis-py sends each list item with its own syscall.
    payload = [frames if isinstance(frames, bytes) else b"".join(frames)]

    def send_and_read() -> list[Any]:
        conn.send_packed_command(payload)
        return [conn.read_response() for _ in range(n_replies)]

    try:
        return conn.retry.call_with_retry(send_and_read, lambda _err: conn.disconnect())
    except BaseException:  # an error reply, a dead server, or an interrupt mid-read
        conn.disconnect()  # replies may be left unread on the socket: never reuse it
        raise
    finally:
        pool.release(conn)


def run(client: redis.Redis, commands: Iterable[Sequence[Arg]]) -> list[Any]:
    """Run commands (each a sequence of arguments) in one round trip; their replies."""
    # (hiredis's stub types its argument as a one-element tuple)
    frames = [hiredis.pack_command(tuple(c)) for c in commands]  # type: ignore[arg-type]
    return round_trip(client, frames, len(frames))


_MULTI = hiredis.pack_command(("MULTI",))
_EXEC = hiredis.pack_command(("EXEC",))


def transaction(client: redis.Redis, commands: Iterable[Sequence[Arg]]) -> list[Any]:
    """Run commands atomically (MULTI ... EXEC, one round trip); their replies.

    A command Redis refuses while queueing (wrong arity, unknown command) aborts the
    whole transaction: its error reply raises before EXEC's reply is read, and EXEC
    discards the queue. An error while executing cannot be undone by Redis (none of our
    commands can fail that way on keys of the right type); it raises here all the same.
    """
    frames = [_MULTI]
    frames += [hiredis.pack_command(tuple(c)) for c in commands]  # type: ignore[arg-type]
    frames.append(_EXEC)
    replies = round_trip(client, frames, len(frames))
    results = replies[-1]
    if not isinstance(results, list):
        raise redis.exceptions.ResponseError(f"transaction aborted: {results!r}")
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results
