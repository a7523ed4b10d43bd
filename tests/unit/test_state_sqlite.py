"""SqliteStreamState: atomic batch commits, additive item counters, the dirty-set protocol."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.state import BatchUpdate, owner_partition
from streams.state_sqlite import SqliteStreamState

USER = {
    "last": 1000,
    "m": {"click": {"0": 2}},
    "h": {"click": {"0": 2}},
    "recent": [[900, "i1"], [1000, "i2"]],
    "ids": {"e1": 900, "e2": 1000},
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "state.db"


@pytest.fixture
def state(db_path: Path) -> Iterator[SqliteStreamState]:
    s = SqliteStreamState(db_path)
    yield s
    s.close()


def batch(**kw: Any) -> BatchUpdate:
    return BatchUpdate(topic="events", **kw)


def first_batch() -> BatchUpdate:
    return batch(
        offsets={0: 5, 1: 9},
        users={"u1": USER},
        item_counts={
            "i1": Counter({"click:m1": 2, "i:h0": 1}),
            "i2": Counter({"impression:h0": 1}),
        },
        item_last={"i1": 100, "i2": 70},
        dirty_users={0: {"u1"}},
        dirty_items={1: {"i1": 90, "i2": 70}},
    )


def test_commit_round_trip(state: SqliteStreamState, db_path: Path) -> None:
    assert state.applied_offsets("events", [0, 1]) == {0: -1, 1: -1}
    state.commit(first_batch())
    assert state.applied_offsets("events", [0, 1, 2]) == {0: 5, 1: 9, 2: -1}
    assert state.applied_offsets("other", [0]) == {0: -1}
    assert state.load_users(["u1", "nobody"]) == {"u1": USER}
    assert state.load_items(["i1", "i2", "nothing"]) == {
        "i1": ({"click:m1": 2, "i:h0": 1}, 100),
        "i2": ({"impression:h0": 1}, 70),
    }
    reopened = SqliteStreamState(db_path)  # durable, and visible to a second connection
    try:
        assert reopened.applied_offsets("events", [0, 1]) == {0: 5, 1: 9}
        assert reopened.load_users(["u1"]) == {"u1": USER}
    finally:
        reopened.close()


def test_offsets_and_users_are_replaced(state: SqliteStreamState) -> None:
    state.commit(first_batch())
    newer = {**USER, "last": 2000}
    state.commit(batch(offsets={0: 7}, users={"u1": newer}))
    assert state.applied_offsets("events", [0, 1]) == {0: 7, 1: 9}
    assert state.load_users(["u1"]) == {"u1": newer}


def test_item_counts_add_and_last_keeps_max(state: SqliteStreamState) -> None:
    state.commit(first_batch())
    state.commit(
        batch(
            item_counts={"i1": Counter({"click:m1": 3, "view:h0": 4})},
            item_last={"i1": 50, "i2": 200},
        )
    )
    items = state.load_items(["i1", "i2"])
    assert items["i1"] == ({"click:m1": 5, "i:h0": 1, "view:h0": 4}, 100)
    assert items["i2"] == ({"impression:h0": 1}, 200)


def test_many_ids_load_across_chunks(state: SqliteStreamState) -> None:
    users = {f"u{k}": {**USER, "last": k} for k in range(1200)}
    state.commit(
        batch(
            users=users,
            item_counts={f"i{k}": Counter({"x:h1": k + 1}) for k in range(1200)},
            item_last={f"i{k}": k for k in range(1200)},
        )
    )
    assert state.load_users(list(users)) == users
    items = state.load_items([f"i{k}" for k in range(1200)])
    assert len(items) == 1200 and items["i1199"] == ({"x:h1": 1200}, 1199)


def test_claim_returns_dirty_entities_per_partition(state: SqliteStreamState) -> None:
    state.commit(first_batch())
    state.commit(batch(dirty_users={0: {"u2"}, 2: {"u3"}}))
    c0 = state.claim_dirty(0)
    assert sorted(c0.users) == ["u1", "u2"] and c0.items == {}
    c1 = state.claim_dirty(1)
    assert c1.users == [] and c1.items == {"i1": 90, "i2": 70}
    assert state.claim_dirty(3).users == []
    again = state.claim_dirty(0)  # claimed but never released (a crash): claimed again
    assert sorted(again.users) == ["u1", "u2"]
    state.release_dirty(0, {})
    assert state.claim_dirty(0).users == []
    assert state.claim_dirty(2).users == ["u3"]  # other partitions are untouched


def test_items_keep_their_oldest_unwritten_event(state: SqliteStreamState) -> None:
    state.commit(first_batch())
    state.commit(batch(dirty_items={1: {"i1": 95, "i2": 60}, 2: {"i3": 5}}))
    assert state.claim_dirty(1).items == {"i1": 90, "i2": 60}
    assert state.claim_dirty(2).items == {"i3": 5}


def test_redirtied_after_claim_survives_release(state: SqliteStreamState) -> None:
    state.commit(batch(dirty_users={0: {"u1", "u2"}}, dirty_items={0: {"i1": 10}}))
    claimed = state.claim_dirty(0)
    assert sorted(claimed.users) == ["u1", "u2"] and claimed.items == {"i1": 10}
    state.commit(batch(dirty_users={0: {"u1"}}, dirty_items={0: {"i1": 30}}))  # writing
    state.release_dirty(0, {})
    after = state.claim_dirty(0)  # only the events that came during the write wait now
    assert after.users == ["u1"] and after.items == {"i1": 30}
    state.release_dirty(0, {})
    assert state.claim_dirty(0).users == [] and state.claim_dirty(0).items == {}


def test_a_state_database_without_item_marks_gains_them(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    old.execute(
        "CREATE TABLE dirty (part INTEGER, kind TEXT, entity TEXT,"
        " claimed INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (part, kind, entity))"
    )
    old.execute("INSERT INTO dirty (part, kind, entity) VALUES (1, 'i', 'i7')")
    old.commit()
    old.close()
    state = SqliteStreamState(db_path)
    try:
        assert state.claim_dirty(1).items == {"i7": 0}  # marked before marks existed
        state.release_dirty(1, {})
        state.commit(first_batch())
        assert state.claim_dirty(1).items == {"i1": 90, "i2": 70}
    finally:
        state.close()


def test_release_deletes_stale_item_fields(state: SqliteStreamState) -> None:
    state.commit(first_batch())
    state.claim_dirty(1)
    state.release_dirty(1, {"i1": ["click:m1", "not-there"], "i2": []})
    assert state.load_items(["i1", "i2"]) == {
        "i1": ({"i:h0": 1}, 100),
        "i2": ({"impression:h0": 1}, 70),
    }
    assert state.claim_dirty(1).items == {}


def _snapshot(state: SqliteStreamState) -> tuple[Any, ...]:
    return (
        state.applied_offsets("events", [0, 1, 3]),
        state.load_users(["u1", "u9"]),
        state.load_items(["i1", "i2", "i9"]),
        state.claim_dirty(0),
        state.claim_dirty(3),
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"users": {"u9": {"x": object()}}},  # fails before any statement
        {"users": {"u9": USER}, "item_counts": {"i9": Counter({"f": object()})}},  # midway
        {
            "users": {"u9": USER},
            "item_counts": {"i1": Counter({"click:m1": 1})},
            "item_last": {"i9": 5},
            "dirty_users": {3: {object()}},
        },  # after three statements
    ],
)
def test_failed_commit_applies_nothing(state: SqliteStreamState, bad: dict[str, Any]) -> None:
    state.commit(first_batch())
    before = _snapshot(state)
    with pytest.raises(Exception):  # noqa: B017 - TypeError or sqlite3 binding errors
        state.commit(batch(offsets={0: 99, 3: 4}, **bad))
    assert _snapshot(state) == before
    state.commit(batch(offsets={0: 100}))  # the connection is not stuck in a transaction
    assert state.applied_offsets("events", [0]) == {0: 100}


def test_owner_partition_is_stable_and_in_range() -> None:
    assert owner_partition("i1", 4) == owner_partition("i1", 4)
    parts = {owner_partition(f"i{k}", 4) for k in range(200)}
    assert parts == {0, 1, 2, 3}
    assert owner_partition("i1", 1) == 0
