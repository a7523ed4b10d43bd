"""The fast layout readers against Feast's own `get_online_features` (`read_features`).

Mapping under test: where Feast returns None for every feature of an id, the fast reader
returns None for that id; otherwise a dict of the view's features by name, equal to Feast's.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
import redis

from features.aggregates import ITEM_FEATURES, USER_FEATURES
from features.online_layout import entity_key
from features.online_reader import (
    REDIS_TIMEOUT_S,
    OnlineReader,
    RedisLayoutReader,
    SqliteLayoutReader,
    open_reader,
    read_features,
)
from features.online_writer import (
    FeastSdkWriter,
    OnlineWriter,
    RedisLayoutWriter,
    Row,
    SqliteLayoutWriter,
)
from features.repo import ITEM_KEY, ITEM_VIEW, USER_KEY, USER_VIEW, apply
from streamrec.errors import StoreError
from streamrec.settings import Settings
from streams.broker import free_port

if TYPE_CHECKING:
    from tests.conftest import SettingsFactory

pytestmark = pytest.mark.integration

TS = 1_790_000_123_456
USERS = [f"u{k}" for k in range(12)] + ["ü-ßer", "😀", "用户", "a b/c?d"]
ITEMS = [f"item-{k}" for k in range(12)] + ["ïtem-ü", "🛒"]


def _user_row(k: int) -> dict[str, Any]:
    row: dict[str, Any] = {f: k * 3 + i for i, f in enumerate(USER_FEATURES)}
    # every third user has an empty sequence; others carry unicode and large ints
    row["recent_items"] = [f"i{k}", "ü-item", "😀"] if k % 3 else []
    row["last_seen_ms"] = TS + k
    row[USER_FEATURES[1]] = 2**40 + k
    return row


def _item_row(k: int) -> dict[str, Any]:
    row: dict[str, Any] = {f: k * 200 + i for i, f in enumerate(ITEM_FEATURES)}
    row["ctr_smoothed"] = 1 / (k + 3)
    return row


def _fast_writer(settings: Settings) -> OnlineWriter:
    if settings.redis_url:
        return RedisLayoutWriter(redis.Redis.from_url(settings.redis_url), settings.feast_project)
    return SqliteLayoutWriter(settings.feature_repo_dir / "online.db", settings.feast_project)


def _expected(store: Any, kind: str, ids: list[str]) -> list[dict[str, Any] | None]:
    """Feast's answer in the readers' shape: None where every feature is None."""
    names = USER_FEATURES if kind == "user" else ITEM_FEATURES
    rows: list[dict[str, Any] | None] = []
    for r in read_features(store, kind, ids):
        features = {n: r[n] for n in names}
        rows.append(None if all(v is None for v in features.values()) else features)
    return rows


Written = tuple[Settings, Any, list[Row], list[Row]]


@pytest.fixture
def written(
    make_settings: SettingsFactory, redis_url: str, request: pytest.FixtureRequest
) -> Written:
    """(settings, Feast store, users, items) after writing with the fast or the SDK writer."""
    store_kind, writer_kind = request.param
    settings = make_settings(store_kind, redis_url=redis_url)
    store = apply(settings)
    users: list[Row] = [(u, _user_row(k), TS + k) for k, u in enumerate(USERS)]
    items: list[Row] = [(i, _item_row(k), TS - k) for k, i in enumerate(ITEMS)]
    writer: OnlineWriter = FeastSdkWriter(store) if writer_kind == "sdk" else _fast_writer(settings)
    writer.write(USER_VIEW, USER_KEY, users)
    writer.write(ITEM_VIEW, ITEM_KEY, items)
    writer.close()
    return settings, store, users, items


BOTH = [("sqlite", "fast"), ("redis", "fast"), ("sqlite", "sdk"), ("redis", "sdk")]


@pytest.mark.parametrize("written", BOTH, indirect=True, ids=["-".join(p) for p in BOTH])
def test_fast_reader_returns_what_feast_returns(written: Written) -> None:
    settings, store, users, items = written
    reader = open_reader(settings)
    user_ids = ["nobody", USERS[0], "ü-ßer", "", USERS[4], "nobody", USERS[4], "😀", "a b/c?d"]
    item_ids = [*ITEMS[::-1], "no-such-item", ITEMS[3], ITEMS[3], "🛒"]

    got_users, got_items = reader.users(user_ids), reader.items(item_ids)

    assert got_users == _expected(store, "user", user_ids)
    assert got_items == _expected(store, "item", item_ids)
    # ...and both equal what was written, so neither side can be silently empty
    written_users = {u: row for u, row, _ in users}
    written_items = {i: row for i, row, _ in items}
    assert got_users == [written_users.get(u) for u in user_ids]
    assert got_items == [written_items.get(i) for i in item_ids]
    first, fifth = got_users[1], got_users[4]
    assert first is not None and first["recent_items"] == []
    assert fifth is not None and type(fifth["last_seen_ms"]) is int
    reader.close()


@pytest.mark.parametrize("written", BOTH[:2], indirect=True, ids=["sqlite", "redis"])
def test_duplicate_ids_get_rows_of_their_own(written: Written) -> None:
    settings, *_ = written
    reader = open_reader(settings)
    a, b, c = reader.users([USERS[1], USERS[1], USERS[2]])
    assert a is not None and b is not None
    assert a == b == _user_row(1)
    assert a is not b and a["recent_items"] is not b["recent_items"]
    a["recent_items"].append("mutated")
    assert b["recent_items"] == _user_row(1)["recent_items"]
    assert c == _user_row(2)
    assert reader.users([]) == [] and reader.items([]) == []
    reader.close()


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_partial_rows_and_rewrites(
    make_settings: SettingsFactory, redis_url: str, store_kind: str
) -> None:
    """A known entity missing features reads as None per feature; rewrites are seen at once."""
    settings = make_settings(store_kind, redis_url=redis_url)
    store = apply(settings)
    writer = _fast_writer(settings)
    writer.write(USER_VIEW, USER_KEY, [("half", {"last_seen_ms": 7, "recent_items": ["x"]}, TS)])
    reader = open_reader(settings)

    got = reader.users(["half", "none"])
    assert got == _expected(store, "user", ["half", "none"])
    assert got[0] == {n: None for n in USER_FEATURES} | {"last_seen_ms": 7, "recent_items": ["x"]}
    assert got[1] is None

    writer.write(USER_VIEW, USER_KEY, [("half", _user_row(5), TS + 1)])
    assert reader.users(["half"]) == [_user_row(5)] == _expected(store, "user", ["half"])
    writer.close()
    reader.close()


def test_sqlite_reader_from_many_threads(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    apply(settings)
    writer = _fast_writer(settings)
    writer.write(ITEM_VIEW, ITEM_KEY, [(i, _item_row(k), TS) for k, i in enumerate(ITEMS)])
    writer.close()
    reader: OnlineReader = open_reader(settings)
    want = [_item_row(k) for k in range(len(ITEMS))]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: reader.items(ITEMS), range(60)))
    assert results == [want] * 60
    reader.close()
    with pytest.raises(StoreError, match="closed"):
        reader.items(ITEMS[:1])


def test_sqlite_missing_file_raises_store_error_until_created(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    reader = open_reader(settings)  # connects to nothing yet
    with pytest.raises(StoreError, match="features apply"):
        reader.users(["u1"])
    assert not (settings.feature_repo_dir / "online.db").exists()  # read-only: never created

    apply(settings)
    writer = _fast_writer(settings)
    writer.write(USER_VIEW, USER_KEY, [("u1", _user_row(1), TS)])
    writer.close()
    assert reader.users(["u1"]) == [_user_row(1)]
    reader.close()


def test_sqlite_store_of_another_project_raises_store_error(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    apply(settings)
    reader = SqliteLayoutReader(settings.feature_repo_dir / "online.db", "not_applied")
    with pytest.raises(StoreError, match="no such table"):
        reader.items(["i1"])
    reader.close()


def test_sqlite_undecodable_value_raises_store_error(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    apply(settings)
    db = settings.feature_repo_dir / "online.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            f'INSERT INTO "{settings.feast_project}_{ITEM_VIEW}" (entity_key, feature_name, value)'
            " VALUES (?, 'clicks_1h', ?)",
            (entity_key(ITEM_KEY, "bad"), b"\x0a\x01x"),  # Value.bytes_val: never ours
        )
    conn.close()
    reader = open_reader(settings)
    with pytest.raises(StoreError, match="item_realtime:clicks_1h of 'bad'"):
        reader.items(["bad"])
    reader.close()


def test_redis_nothing_listening_raises_store_error_quickly(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings("redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    reader = open_reader(settings)  # connects to nothing yet
    started = time.monotonic()
    with pytest.raises(StoreError, match="STREAMREC_REDIS_URL"):
        reader.users(["u1"])
    with pytest.raises(StoreError):
        reader.items(["i1"])
    assert time.monotonic() - started < 2.0
    reader.close()


def test_redis_that_never_answers_raises_store_error_after_the_timeout(
    make_settings: SettingsFactory,
) -> None:
    """A hung Redis (TCP accepted, no reply) must not hold a request forever."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel completes handshakes; nobody ever reads or replies
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        reader = open_reader(make_settings("redis", redis_url=url))
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                reader.users(["u1"])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        started = time.monotonic()
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(timeout=30)
        elapsed = time.monotonic() - started
    assert outcome and isinstance(outcome[0], StoreError), outcome
    # one try and one retry, each bounded by the socket timeout (redis-py's default: none)
    assert REDIS_TIMEOUT_S <= elapsed < 4 * REDIS_TIMEOUT_S + 2


def test_redis_reader_survives_killed_connections_and_bad_keys(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    settings = make_settings("redis", redis_url=redis_url)
    writer = _fast_writer(settings)
    writer.write(USER_VIEW, USER_KEY, [("u1", _user_row(1), TS)])
    writer.close()
    reader = open_reader(settings)
    assert isinstance(reader, RedisLayoutReader)
    assert reader.users(["u1"]) == [_user_row(1)]

    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_type="normal", skipme=True)  # as a Redis restart would
    assert reader.users(["u1"]) == [_user_row(1)]  # the pooled connection is replaced

    # a key of another type makes Redis answer that one HMGET with an error
    admin.set(entity_key(USER_KEY, "clash") + settings.feast_project.encode(), b"string")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        reader.users(["u1", "clash", "u1"])
    assert reader.users(["u1", "u2"]) == [_user_row(1), None]  # no stale replies left behind
    admin.close()
    reader.close()
