"""Reading real-time features back from the Feast online store.

- `read_features` goes through Feast's own `get_online_features`: the slow twin, the
  reference the tests hold the fast readers to (`import feast` alone costs seconds).
- `RedisLayoutReader` and `SqliteLayoutReader` decode Feast's layout directly, for the
  serving API's hot path: one round trip per call, no Feast import. `open_reader` picks one.

Per id the fast readers return a dict of the view's features by name, or None for an entity
the store holds nothing for, i.e. exactly where Feast returns None for every feature. A known
entity that lacks one feature gets None for it, as from Feast. Rows are fresh dicts.

Feature TTL is not applied: our views have `ttl=None`, and Feast 0.67's
`get_online_features` does not filter by age either, so the readers return what is stored,
however old. `last_seen_ms` says how fresh a user row is; a caller that wants a cut-off
applies it to that.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from features import online_layout as layout
from features import redis_wire
from features.aggregates import ITEM_FEATURES, USER_FEATURES
from features.repo import ITEM_KEY, ITEM_VIEW, USER_KEY, USER_VIEW
from streamrec.errors import StoreError

if TYPE_CHECKING:
    import redis
    from feast import FeatureStore

    from streamrec.settings import Settings

VIEWS = {
    "user": (USER_VIEW, USER_KEY, USER_FEATURES),
    "item": (ITEM_VIEW, ITEM_KEY, ITEM_FEATURES),
}

# A Redis that does not answer must become a StoreError (and serving's popularity fallback)
# within a fraction of a second, not after redis-py's default retries with backoff.
REDIS_CONNECT_TIMEOUT_S = 0.25
REDIS_TIMEOUT_S = 0.5
# Decoded counters repeat across items and requests; past this many the memo starts over.
MEMO_MAX = 1 << 16

Row = dict[str, Any]
Raw = bytes | None


def read_features(store: FeatureStore, kind: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per id, in order; features of an unknown entity come back as None."""
    view, key, names = VIEWS[kind]
    response = store.get_online_features(
        features=[f"{view}:{n}" for n in names], entity_rows=[{key: i} for i in ids]
    ).to_dict()
    return [{n: response[n][row] for n in (key, *names)} for row in range(len(ids))]


class OnlineReader(Protocol):
    """Reads feature rows by entity id. A store that is down or not set up raises StoreError."""

    def users(self, ids: Sequence[str]) -> list[Row | None]:
        """USER_FEATURES by name per id, in order; None for an unknown user."""
        ...

    def items(self, ids: Sequence[str]) -> list[Row | None]:
        """ITEM_FEATURES by name per id, in order; None for an unknown item."""
        ...

    def close(self) -> None: ...


def _memo_decoder() -> Callable[[Raw], Any]:
    """`decode_value`, memoised for immutable values; absent or empty bytes read as None."""
    memo: dict[bytes, Any] = {}
    get = memo.get

    def decode(raw: Raw) -> Any:
        if not raw:  # no such field/row, or an unset Value: Feast reads both as None
            return None
        value = get(raw)
        if value is None:
            value = layout.decode_value(raw)
            if type(value) is not list:  # a list is mutable: every row gets its own
                if len(memo) >= MEMO_MAX:
                    memo.clear()
                memo[raw] = value
        return value

    return decode


class _RowBuilder:
    """Raw feature bytes per entity -> rows in request order (shared by both readers)."""

    def __init__(self) -> None:
        self._decode = _memo_decoder()

    def rows(
        self,
        view: str,
        names: Sequence[str],
        ids: Sequence[str],
        unique: Sequence[str],
        raws: Iterable[Sequence[Raw] | None],
    ) -> list[Row | None]:
        """`raws` holds one entry per id of `unique`: bytes in `names` order, or None."""
        raw_by_id = dict(zip(unique, raws, strict=True))
        decode, unknown = self._decode, [None] * len(names)
        out: list[Row | None] = []
        for entity in ids:  # a repeated id is decoded again: no two rows share a dict or list
            raw = raw_by_id[entity]
            if raw is None:
                out.append(None)
                continue
            try:
                values = [*map(decode, raw)]
            except ValueError as exc:
                raise _bad_value(view, entity, names, raw, exc) from exc
            out.append(None if values == unknown else dict(zip(names, values, strict=True)))
        return out


def _bad_value(
    view: str, entity: str, names: Sequence[str], raw: Sequence[Raw], exc: Exception
) -> StoreError:
    bad = [n for n, r in zip(names, raw, strict=True) if r and _fails(r)]
    return StoreError(
        f"Feature {view}:{','.join(bad) or '?'} of {entity!r} is not in the layout streamrec"
        f" writes ({exc}). Rewrite the row with the stream worker or FeastSdkWriter."
    )


def _fails(raw: bytes) -> bool:
    try:
        layout.decode_value(raw)
    except ValueError:
        return True
    return False


class RedisLayoutReader:
    """Feast's Redis layout: HMGET of the view's mmh3 fields, pipelined, one round trip.

    The HMGETs are packed here, once per view for the fields, instead of by redis-py's
    pipeline, which spends more time encoding 200 commands than Redis spends answering
    them. Connections, timeouts, auth and retries are still the client's own.
    """

    def __init__(self, client: redis.Redis, project: str) -> None:
        self._client = client
        self._suffix = project.encode()
        self._rows = _RowBuilder()
        # per kind: view, join key, feature names, and the RESP frame around each key
        self._views: dict[str, tuple[str, str, tuple[str, ...], bytes, bytes]] = {}
        for kind, (view, key, names) in VIEWS.items():
            fields = [layout.redis_field(view, n) for n in names]
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
            tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
            self._views[kind] = (view, key, names, head, tail)

    def users(self, ids: Sequence[str]) -> list[Row | None]:
        return self._read("user", ids)

    def items(self, ids: Sequence[str]) -> list[Row | None]:
        return self._read("item", ids)

    def _read(self, kind: str, ids: Sequence[str]) -> list[Row | None]:
        if not ids:
            return []
        view, key, names, head, tail = self._views[kind]
        unique = list(dict.fromkeys(ids))
        keys = layout.entity_keys(key, unique, self._suffix)
        packed = b"".join([b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in keys])
        replies = self._round_trip(packed, len(keys))
        return self._rows.rows(view, names, ids, unique, replies)

    def _round_trip(self, packed: bytes, n_replies: int) -> list[list[Raw]]:
        import redis

        try:
            return redis_wire.round_trip(self._client, packed, n_replies)
        except redis.RedisError as exc:
            raise _redis_down(exc) from exc

    def close(self) -> None:
        self._client.close()


def _redis_down(exc: Exception) -> StoreError:
    return StoreError(
        f"Reading the Redis online store failed ({exc}). Check that Redis is up and that"
        " STREAMREC_REDIS_URL points at it."
    )


class SqliteLayoutReader:
    """Feast's SQLite layout: table `{project}_{view}`, one row per (entity, feature).

    Read-only, one query per call. Each thread opens its own connection on first use, so
    concurrent requests do not queue on one lock. A missing file raises StoreError on each
    call (nothing is created), and calls work as soon as `streamrec features apply` (or the
    worker) has made it.
    """

    def __init__(self, path: Path, project: str) -> None:
        self._path = Path(path).resolve()
        self._project = project
        self._rows = _RowBuilder()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._closed = False

    def users(self, ids: Sequence[str]) -> list[Row | None]:
        return self._read("user", ids)

    def items(self, ids: Sequence[str]) -> list[Row | None]:
        return self._read("item", ids)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StoreError("This online store reader is closed; open a new one.")
            try:
                # mode=ro: never creates the file, never writes; reads see WAL commits
                conn = sqlite3.connect(
                    f"{self._path.as_uri()}?mode=ro", uri=True, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise StoreError(
                    f"Cannot open the online store at {self._path} ({exc}). Run `streamrec"
                    " features apply` (or start the stream worker) to create it."
                ) from exc
            # connections of threads that have ended would otherwise stay open until close()
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    def _read(self, kind: str, ids: Sequence[str]) -> list[Row | None]:
        if self._closed:
            raise StoreError("This online store reader is closed; open a new one.")
        if not ids:
            return []
        view, key, names = VIEWS[kind]
        unique = list(dict.fromkeys(ids))
        keys = layout.entity_keys(key, unique)
        table = f"{self._project}_{view}"
        conn = self._connection()
        # SQLite caps bound parameters per statement (32766 by default): chunk past that
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        found: list[tuple[bytes, str, Raw]] = []
        try:
            for start in range(0, len(keys), limit):
                chunk = keys[start : start + limit]
                found += conn.execute(
                    f'SELECT entity_key, feature_name, value FROM "{table}"'
                    f" WHERE entity_key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(
                f"Cannot read table {table!r} of the online store at {self._path} ({exc})."
                " Run `streamrec features apply` for this project first."
            ) from exc
        index = {n: i for i, n in enumerate(names)}
        slots: dict[bytes, list[Raw]] = {}
        for entity_key, name, value in found:
            i = index.get(name)  # a feature no longer in the view is ignored, as by Feast
            if i is not None:
                raw = slots.get(entity_key)
                if raw is None:
                    raw = slots[entity_key] = [None] * len(names)
                raw[i] = value
        raws = [slots.get(k) for k in keys]
        return self._rows.rows(view, names, ids, unique, raws)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()


def open_reader(settings: Settings) -> OnlineReader:
    """The fast reader for these settings: Redis if `redis_url` is set, else SQLite.

    Connects to nothing: while the store is down or not created yet, each call raises
    StoreError, and calls work again once it is back.
    """
    if settings.redis_url:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
            # one immediate retry covers a pooled connection that Redis closed while idle
            retry=Retry(NoBackoff(), 1),
        )
        return RedisLayoutReader(client, settings.feast_project)
    return SqliteLayoutReader(settings.feature_repo_dir / "online.db", settings.feast_project)
