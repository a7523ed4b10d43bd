"""Stream state in SQLite (the embedded default): one transaction per batch, WAL mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from features import online_state
from features.aggregates import UserState
from features.online_state import BoardEntry
from streams.state import (
    BatchUpdate,
    Claimed,
    ItemCounters,
    decode_user_state,
    encode_user_state,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (topic TEXT, part INTEGER, off INTEGER,
                                    PRIMARY KEY (topic, part));
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS item_counts (item_id TEXT, field TEXT, n INTEGER NOT NULL,
                                        PRIMARY KEY (item_id, field));
CREATE TABLE IF NOT EXISTS item_last (item_id TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dirty (part INTEGER, kind TEXT, entity TEXT,
                                  claimed INTEGER NOT NULL DEFAULT 0,
                                  PRIMARY KEY (part, kind, entity));
"""
# An item's oldest unwritten event time, added after the first release: a state database
# of an older version gains the column on open (its marks read as 0: unknown).
_ADD_OLDEST = "ALTER TABLE dirty ADD COLUMN oldest INTEGER NOT NULL DEFAULT 0"
_CHUNK = 500  # SQLite's bound-parameter limit is well above this


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class SqliteStreamState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(path), timeout=60, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if "oldest" not in {row[1] for row in self._db.execute("PRAGMA table_info(dirty)")}:
            self._db.execute(_ADD_OLDEST)
        self._db.executescript(online_state.SCHEMA_SQL + online_state.MIGRATE_SQL)

    def applied_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        rows = dict(self._db.execute("SELECT part, off FROM offsets WHERE topic = ?", (topic,)))
        return {p: rows.get(p, -1) for p in partitions}

    def load_users(self, user_ids: Iterable[str]) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        for chunk in _chunks(list(user_ids)):
            marks = ",".join("?" * len(chunk))
            for uid, blob in self._db.execute(
                f"SELECT user_id, state FROM users WHERE user_id IN ({marks})", chunk
            ):
                out[uid] = decode_user_state(blob)
        return out

    def commit(self, update: BatchUpdate) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO users VALUES (?, ?) ON CONFLICT(user_id) DO UPDATE SET"
                " state = excluded.state",
                [(u, encode_user_state(s).decode()) for u, s in update.users.items()],
            )
            db.executemany(
                "INSERT INTO item_counts VALUES (?, ?, ?) ON CONFLICT(item_id, field)"
                " DO UPDATE SET n = n + excluded.n",
                [(i, f, n) for i, c in update.item_counts.items() for f, n in c.items()],
            )
            db.executemany(
                "INSERT INTO item_last VALUES (?, ?) ON CONFLICT(item_id)"
                " DO UPDATE SET last = max(last, excluded.last)",
                list(update.item_last.items()),
            )
            dirty = [(p, "u", e, 0) for p, es in update.dirty_users.items() for e in es]
            dirty += [
                (p, "i", e, ts)
                for p, oldest in update.dirty_items.items()
                for e, ts in oldest.items()
            ]
            # Re-dirtying a claimed entity un-claims it, so release() keeps it for next time;
            # its oldest wait then starts from the new events (the claim's are being written).
            db.executemany(
                "INSERT INTO dirty (part, kind, entity, oldest) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(part, kind, entity) DO UPDATE SET claimed = 0,"
                " oldest = CASE WHEN claimed THEN excluded.oldest"
                " ELSE min(oldest, excluded.oldest) END",
                dirty,
            )
            if update.counters:
                online_state.sqlite_add_counters(db, update.counters)
            db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT(topic, part)"
                " DO UPDATE SET off = excluded.off",
                [(update.topic, p, o) for p, o in update.offsets.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def claim_dirty(self, partition: int) -> Claimed:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("UPDATE dirty SET claimed = 1 WHERE part = ?", (partition,))
            rows = db.execute(
                "SELECT kind, entity, oldest FROM dirty WHERE part = ? AND claimed = 1",
                (partition,),
            ).fetchall()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Claimed(
            users=[e for k, e, _ in rows if k == "u"],
            items={e: oldest for k, e, oldest in rows if k == "i"},
        )

    def load_items(self, item_ids: Iterable[str]) -> dict[str, tuple[ItemCounters, int]]:
        ids = list(item_ids)
        counters: dict[str, ItemCounters] = {i: {} for i in ids}
        out: dict[str, tuple[ItemCounters, int]] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for item, fld, n in self._db.execute(
                f"SELECT item_id, field, n FROM item_counts WHERE item_id IN ({marks})", chunk
            ):
                counters[item][fld] = n
            for item, last in self._db.execute(
                f"SELECT item_id, last FROM item_last WHERE item_id IN ({marks})", chunk
            ):
                out[item] = (counters[item], last)
        return out

    def release_dirty(self, partition: int, stale_item_fields: dict[str, list[str]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "DELETE FROM item_counts WHERE item_id = ? AND field = ?",
                [(i, f) for i, fs in stale_item_fields.items() for f in fs],
            )
            db.execute("DELETE FROM dirty WHERE part = ? AND claimed = 1", (partition,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def drop_caches(self) -> None:
        """Nothing cached: every read goes to the database (and claims return no deltas)."""

    def load_counters(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._db.execute("SELECT name, value FROM counters")}

    def write_board(self, entries: list[BoardEntry]) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            online_state.sqlite_write_board(self._db, entries)

    def close(self) -> None:
        self._db.close()
