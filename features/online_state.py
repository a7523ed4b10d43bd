"""Shared online state: what the stream workers learn and serving reads, besides features.

Two things live here, next to the stream workers' own state (the SQLite stream-state
database in the embedded default, the Redis namespace in production):

- **counters**: additive float counters by name (bandit sufficient statistics, River
  weight deltas, impressions and clicks by policy). Workers add deltas inside their
  per-batch transaction, so a replay never counts twice; serving reads them all.
  SQLite table `counters(name, value)`; Redis hash `{ns}:counters`.
- **the item board**: per item, its latest popularity, smoothed CTR and 24 h counts,
  plus when the stream first saw it. Serving takes the hottest and the newest items
  from it for cold start, exploration of new items and the popularity fallback.
  SQLite table `board`; Redis hash `{ns}:board` (item -> JSON) with sorted sets
  `{ns}:board:pop` (by popularity) and `{ns}:board:first` (by first-seen time).

This module owns the layout: the workers' state classes write through the functions
below and serving reads through `open_state_reader`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from streamrec.errors import StoreError

if TYPE_CHECKING:
    import redis

    from streamrec.settings import Settings

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS board (item_id TEXT PRIMARY KEY, popularity REAL NOT NULL,
                                  ctr REAL NOT NULL, clicks REAL NOT NULL,
                                  impressions REAL NOT NULL, last_ms INTEGER NOT NULL,
                                  first_ms INTEGER NOT NULL);
-- In the readers' exact ORDER BY (ties broken by item id), so a top-n read walks n index
-- entries; single-column indexes left SQLite sorting every tied row (a board whose items
-- share first_ms: 20 ms per read of 20k rows, stalling serving every board refresh).
CREATE INDEX IF NOT EXISTS board_pop_id ON board (popularity DESC, item_id);
CREATE INDEX IF NOT EXISTS board_first_id ON board (first_ms DESC, item_id);
"""
# Run by the writer (the stream worker) only: readers should not need the write lock.
MIGRATE_SQL = """
DROP INDEX IF EXISTS board_pop;
DROP INDEX IF EXISTS board_first;
"""


@dataclass(frozen=True, slots=True)
class BoardEntry:
    """One item as the stream last wrote it."""

    item_id: str
    popularity: float  # popularity_24h
    ctr: float  # ctr_smoothed
    clicks: float  # clicks_24h
    impressions: float  # impressions_24h
    last_ms: int
    first_ms: int

    def stats(self) -> tuple[float, float, float, float, float]:
        """(ctr, popularity, first_ms, clicks, impressions): the bandit's inputs, in the
        column order of serving's item-statistics table."""
        return (self.ctr, self.popularity, float(self.first_ms), self.clicks, self.impressions)


def namespace(settings: Settings) -> str:
    """The Redis key prefix of the stream workers' group."""
    return f"streamrec:{settings.consumer_group}"


def state_db_path(settings: Settings) -> Path:
    """The SQLite stream-state database (embedded default)."""
    return settings.data_dir / "stream_state.db"


# --- writers (called by the stream workers' state classes) -----------------------------


def sqlite_add_counters(db: sqlite3.Connection, deltas: dict[str, float]) -> None:
    db.executemany(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET"
        " value = value + excluded.value",
        list(deltas.items()),
    )


def sqlite_write_board(db: sqlite3.Connection, entries: Sequence[BoardEntry]) -> None:
    db.executemany(
        "INSERT INTO board VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET"
        " popularity = excluded.popularity, ctr = excluded.ctr, clicks = excluded.clicks,"
        " impressions = excluded.impressions, last_ms = excluded.last_ms,"
        " first_ms = min(first_ms, excluded.first_ms)",
        [
            (e.item_id, e.popularity, e.ctr, e.clicks, e.impressions, e.last_ms, e.first_ms)
            for e in entries
        ],
    )


def redis_counter_commands(ns: str, deltas: dict[str, float]) -> list[tuple[str, str, float]]:
    """The commands that add deltas to the shared counters (for `redis_wire`)."""
    key = f"{ns}:counters"
    return [("HINCRBYFLOAT", key, name, value) for name, value in deltas.items()]  # type: ignore[misc]


_BOARD_ENCODER = msgspec.json.Encoder()


def redis_board_commands(ns: str, entries: Sequence[BoardEntry]) -> list[list[str | bytes | float]]:
    """The commands that record entries on the Redis item board (for `redis_wire.run`)."""
    if not entries:
        return []
    fields: list[str | bytes | float] = ["HSET", f"{ns}:board"]
    pop: list[str | bytes | float] = ["ZADD", f"{ns}:board:pop"]
    first: list[str | bytes | float] = ["ZADD", f"{ns}:board:first", "NX"]
    encode = _BOARD_ENCODER.encode
    for e in entries:
        fields += (e.item_id, encode((e.popularity, e.ctr, e.clicks, e.impressions, e.last_ms)))
        pop += (e.popularity, e.item_id)
        first += (e.first_ms, e.item_id)
    return [fields, pop, first]


# --- readers (serving) -------------------------------------------------------------------


class OnlineStateReader(Protocol):
    """Read side of the shared online state; every method raises StoreError when down."""

    def counters(self) -> dict[str, float]: ...

    def hottest(self, n: int) -> list[BoardEntry]:
        """The n most popular items (popularity_24h), most popular first."""
        ...

    def newest(self, n: int) -> list[BoardEntry]:
        """The n items the stream saw first most recently, newest first."""
        ...

    def close(self) -> None: ...


class SqliteStateReader:
    """Reads the embedded stream-state database; an absent database reads as empty."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None and self._path.exists():
            db = sqlite3.connect(str(self._path), timeout=5, check_same_thread=False)
            db.executescript(SCHEMA_SQL)  # a worker of an older version may not have made them
            self._db = db
        return self._db

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                db = self._conn()
                return [] if db is None else db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"Cannot read the stream state at {self._path}: {exc}") from exc

    def counters(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self._query("SELECT name, value FROM counters")}  # type: ignore[arg-type]  # SQLite gives REAL

    def _entries(self, order: str, n: int) -> list[BoardEntry]:
        rows = self._query(
            "SELECT item_id, popularity, ctr, clicks, impressions, last_ms, first_ms FROM board"
            f" ORDER BY {order} DESC, item_id LIMIT ?",
            (n,),
        )
        return [BoardEntry(*row) for row in rows]  # type: ignore[arg-type]  # column order above

    def hottest(self, n: int) -> list[BoardEntry]:
        return self._entries("popularity", n)

    def newest(self, n: int) -> list[BoardEntry]:
        return self._entries("first_ms", n)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RedisStateReader:
    def __init__(self, client: redis.Redis, ns: str) -> None:
        self._r = client
        self._ns = ns

    def counters(self) -> dict[str, float]:
        import redis as redis_mod

        try:
            raw = self._r.hgetall(f"{self._ns}:counters")
        except redis_mod.RedisError as exc:
            raise StoreError(f"Cannot read online state from Redis: {exc}") from exc
        return {_text(k): float(v) for k, v in raw.items()}

    def _entries(self, ids: list[Any]) -> list[BoardEntry]:
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(f"{self._ns}:board", ids)
        pipe.zmscore(f"{self._ns}:board:first", ids)
        blobs, firsts = pipe.execute()
        out = []
        for item, blob, first in zip(ids, blobs, firsts, strict=True):
            if blob is None:
                continue
            pop, ctr, clicks, imps, last = json.loads(blob)
            out.append(
                BoardEntry(_text(item), pop, ctr, clicks, imps, int(last), int(first or last))
            )
        return out

    def _top(self, key: str, n: int) -> list[BoardEntry]:
        import redis as redis_mod

        try:
            return self._entries(list(self._r.zrevrange(f"{self._ns}:{key}", 0, n - 1)))
        except redis_mod.RedisError as exc:
            raise StoreError(f"Cannot read the item board from Redis: {exc}") from exc

    def hottest(self, n: int) -> list[BoardEntry]:
        return self._top("board:pop", n)

    def newest(self, n: int) -> list[BoardEntry]:
        return self._top("board:first", n)

    def close(self) -> None:
        self._r.close()


def open_state_reader(settings: Settings) -> OnlineStateReader:
    """Redis when STREAMREC_REDIS_URL is set, else the embedded SQLite stream state."""
    if settings.redis_url:
        import redis as redis_mod

        client = redis_mod.Redis.from_url(
            settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.25
        )
        return RedisStateReader(client, namespace(settings))
    return SqliteStateReader(state_db_path(settings))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def merge_entries(*lists: Iterable[BoardEntry]) -> list[BoardEntry]:
    """Concatenate board lists keeping each item's first occurrence."""
    seen: set[str] = set()
    out: list[BoardEntry] = []
    for entries in lists:
        for e in entries:
            if e.item_id not in seen:
                seen.add(e.item_id)
                out.append(e)
    return out
