"""Writers of feature rows into the Feast online store. One protocol, three implementations.

- `RedisLayoutWriter` and `SqliteLayoutWriter` write Feast's own layout directly (fast path).
- `FeastSdkWriter` goes through `FeatureStore.write_to_online_store` (the slow twin: the
  reference the tests compare the fast writers with).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from features import online_layout as layout
from features import redis_wire
from features.aggregates import FeatureRow
from streamrec.errors import StoreError

if TYPE_CHECKING:
    import redis
    from feast import FeatureStore

# (entity id, feature values, event time in epoch ms)
Row = tuple[str, FeatureRow, int]


class OnlineWriter(Protocol):
    """Writes feature rows of one feature view; later writes replace earlier ones."""

    def write(self, view: str, join_key: str, rows: Sequence[Row]) -> None: ...

    def close(self) -> None: ...


class RedisLayoutWriter:
    """Feast's Redis layout: one hash per entity, mmh3 field names, `_ts:{view}` timestamps.

    Each row's HSET frame is joined from cached RESP pieces (field names, small counts)
    rather than packed argument by argument: most of a row repeats from row to row.
    """

    _MAX_CACHED_VALUES = 1 << 16

    def __init__(self, client: redis.Redis, project: str) -> None:
        self._client = client
        self._project = project.encode()
        self._fields: dict[tuple[str, str], bytes] = {}
        self._int_bulks: dict[int, bytes] = {}  # count -> its encoded value, as a bulk string

    def _field(self, view: str, feature: str) -> bytes:
        key = (view, feature)
        if key not in self._fields:
            self._fields[key] = redis_wire.bulk(layout.redis_field(view, feature))
        return self._fields[key]

    def write(self, view: str, join_key: str, rows: Sequence[Row]) -> None:
        if not rows:
            return
        bulk, encode = redis_wire.bulk, layout.encode_value
        ts_field = bulk(f"_ts:{view}".encode())
        keys = layout.entity_keys(join_key, [entity for entity, _, _ in rows], self._project)
        ints = self._int_bulks
        if len(ints) > self._MAX_CACHED_VALUES:
            ints.clear()
        names: tuple[str, ...] = ()
        fields: list[bytes] = []
        head = b""
        frames = []
        for key, (_, values, ts_ms) in zip(keys, rows, strict=True):
            if tuple(values) != names:  # rows of one view share their names: look up once
                names = tuple(values)
                fields = [self._field(view, n) for n in names]
                head = redis_wire.header(4 + 2 * len(names)) + _HSET
            parts = [head, bulk(key), ts_field, bulk(layout.encode_timestamp(ts_ms))]
            for f, value in zip(fields, values.values(), strict=True):
                if type(value) is int:
                    b = ints.get(value)
                    if b is None:
                        b = ints[value] = bulk(encode(value))
                else:
                    b = bulk(encode(value))
                parts += (f, b)
            frames.append(b"".join(parts))
        redis_wire.round_trip(self._client, frames, len(frames))

    def close(self) -> None:
        self._client.close()


_HSET = redis_wire.bulk(b"HSET")


def _sqlite_ts(ts_ms: int) -> int:
    # Feast 0.67 registers an epoch-seconds adapter/converter for `timestamp` columns.
    return ts_ms // 1000


class SqliteLayoutWriter:
    """Feast's SQLite layout: table `{project}_{view}`, one row per (entity, feature)."""

    def __init__(self, path: Path, project: str) -> None:
        if not path.exists():
            raise StoreError(f"No online store at {path}. Run `streamrec features apply` first.")
        self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._project = project

    def write(self, view: str, join_key: str, rows: Sequence[Row]) -> None:
        table = f"{self._project}_{view}"
        created = int(time.time())
        params: list[tuple[Any, ...]] = []
        for entity, values, ts_ms in rows:
            key = layout.entity_key(join_key, entity)
            ts = _sqlite_ts(ts_ms)
            for name, value in values.items():
                params.append(
                    (key, name, layout.encode_value(value), layout.value_text(value), ts, created)
                )
        with self._conn:
            self._conn.executemany(
                f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts,'
                " created_ts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name)"
                " DO UPDATE SET value = excluded.value, value_text = excluded.value_text,"
                " event_ts = excluded.event_ts, created_ts = excluded.created_ts",
                params,
            )

    def close(self) -> None:
        self._conn.close()


class FeastSdkWriter:
    """The reference: Feast's own `write_to_online_store` with a DataFrame."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store

    def write(self, view: str, join_key: str, rows: Sequence[Row]) -> None:
        import pandas as pd

        frame = pd.DataFrame(
            [
                {
                    join_key: entity,
                    **values,
                    "event_timestamp": datetime.fromtimestamp(ts / 1000, tz=UTC),
                }
                for entity, values, ts in rows
            ]
        )
        self._store.write_to_online_store(view, frame)

    def close(self) -> None:
        return None
