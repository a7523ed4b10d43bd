"""RedisStreamState against a real redis-server: held to SqliteStreamState, and atomic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from features import redis_wire
from streamrec.errors import StoreError
from streams.state import BatchUpdate
from streams.state_redis import RedisStreamState, require_version
from streams.state_sqlite import SqliteStreamState

pytestmark = pytest.mark.integration

USER = {
    "last": 1000,
    "m": {"click": {"0": 2}},
    "h": {"click": {"0": 2}},
    "recent": [[900, "i1"], [1000, "ü-item"]],
    "ids": {"e1": 900, "e2": 1000},
}


def _batches() -> list[BatchUpdate]:
    first = BatchUpdate(
        topic="events",
        offsets={0: 5, 1: 9},
        users={"u1": USER, "u:2": {**USER, "last": 7}},
        item_counts={"i1": {"click:m1": 2, "i:h0": 1}, "i 2": {"impression:h0": 1}},
        item_last={"i1": 100, "i 2": 70},
        dirty_users={0: {"u1"}, 1: {"u:2"}},
        dirty_items={1: {"i1": 95, "i 2": 70}},
        counters={"w.bias": 0.25, "n.greedy": 1.0},
    )
    second = BatchUpdate(
        topic="events",
        offsets={0: 8},
        users={"u1": {**USER, "last": 2000}},
        item_counts={"i1": {"click:m1": 1}, 'ü"\\3': {"click:m1": 40_000_000}},  # JSON-escaped
        item_last={"i1": 90, 'ü"\\3': 1_800_000_000_000},  # i1: older: the max stays
        dirty_users={0: {"u1"}},
        dirty_items={1: {"i1": 90, 'ü"\\3': 1_799_999_999_999}},
        counters={"w.bias": -0.5},
    )
    return [first, second]


@pytest.fixture
def state(redis_url: str) -> Iterator[RedisStreamState]:
    s = RedisStreamState(redis_url, f"test-state-{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


def test_commits_read_back_like_the_sqlite_state(state: RedisStreamState, tmp_path: Path) -> None:
    sqlite = SqliteStreamState(tmp_path / "state.db")
    try:
        for update in _batches():
            state.commit(update)
            sqlite.commit(update)
        for s in (state, sqlite):
            assert s.applied_offsets("events", [0, 1, 2]) == {0: 8, 1: 9, 2: -1}
        assert state.load_users(["u1", "u:2", "nobody"]) == sqlite.load_users(
            ["u1", "u:2", "nobody"]
        )
        assert state.load_users(["u1"])["u1"]["last"] == 2000
        odd = 'ü"\\3'
        assert state.load_counters() == pytest.approx(sqlite.load_counters())
        assert state.load_counters() == pytest.approx({"w.bias": -0.25, "n.greedy": 1.0})
        marks = {"i1": 90, "i 2": 70, odd: 1_799_999_999_999}
        for p, users, its in ((0, ["u1"], {}), (1, ["u:2"], marks)):
            for s in (state, sqlite):
                claimed = s.claim_dirty(p)
                assert sorted(claimed.users) == users and claimed.items == its
        # Redis merges the commits' deltas at the claim and says what they were.
        assert claimed.item_deltas is None  # SQLite: unknown
        items = state.load_items(["i1", "i 2", odd, "none"])
        assert items == sqlite.load_items(["i1", "i 2", odd, "none"])
        assert items["i1"] == ({"click:m1": 3, "i:h0": 1}, 100)
        assert items[odd] == ({"click:m1": 40_000_000}, 1_800_000_000_000)
        assert state.load_items([odd, "i1"]) == {odd: items[odd], "i1": items["i1"]}  # cached
    finally:
        sqlite.close()


def test_claimed_item_deltas_reach_the_stored_counters_exactly_once(
    state: RedisStreamState, redis_url: str
) -> None:
    def bump(counts: dict[str, dict[str, int]]) -> BatchUpdate:
        return BatchUpdate(
            topic="events",
            item_counts=counts,
            item_last=dict.fromkeys(counts, 100),
            dirty_items={1: dict.fromkeys(counts, 100)},
        )

    def owner() -> RedisStreamState:  # another process: nothing cached
        return RedisStreamState(redis_url, state._ns)

    state.commit(bump({"a": {"click:m1": 2, "i:h0": 2}, "b": {"view:h0": 1}}))
    assert state.load_items(["a"]) == {"a": ({}, 100)}  # not claimed yet: nothing stored
    state.drop_caches()
    first = state.claim_dirty(1)
    assert first.item_deltas == {"a": {"click:m1": 2, "i:h0": 2}, "b": {"view:h0": 1}}
    assert state.load_items(["a", "b"]) == {
        "a": ({"click:m1": 2, "i:h0": 2}, 100),
        "b": ({"view:h0": 1}, 100),
    }
    state.commit(bump({"a": {"click:m1": 5, "click:m2": 1}}))  # while the claim is written
    state.release_dirty(1, {"a": ["i:h0"]})  # stored, less a stale field
    second = state.claim_dirty(1)
    assert second.item_deltas == {"a": {"click:m1": 5, "click:m2": 1}}
    expected = {"a": ({"click:m1": 7, "click:m2": 1}, 100)}
    assert state.load_items(["a"]) == expected  # the cache, updated by the delta
    crashed = owner()  # the owner died before releasing its second claim
    try:
        assert crashed.claim_dirty(1).item_deltas == {"a": {"click:m1": 5, "click:m2": 1}}
        state.commit(bump({"a": {"click:m2": 4}}))  # a newer delta joins the open claim
        assert crashed.claim_dirty(1).item_deltas == {"a": {"click:m2": 4}}  # what is new
        assert crashed.load_items(["a"]) == {"a": ({"click:m1": 7, "click:m2": 5}, 100)}
        crashed.release_dirty(1, {})
    finally:
        crashed.close()
    after = owner()
    try:
        # The third commit's mark still waits, but its delta went with the released claim.
        assert after.claim_dirty(1).item_deltas == {"a": {}}
        assert after.load_items(["a", "b"]) == {
            "a": ({"click:m1": 7, "click:m2": 5}, 100),
            "b": ({"view:h0": 1}, 100),
        }
    finally:
        after.close()


def test_counters_stored_seldom_still_come_back_whole_after_a_crash(
    state: RedisStreamState, redis_url: str
) -> None:
    """Between two stores the claimed deltas pile up in Redis; the owner takes only the
    new part each claim, and a new owner gets the stored counters plus the pile."""
    seldom = RedisStreamState(redis_url, state._ns, store_every_s=3600)

    def step(owner: RedisStreamState, n: int) -> dict[str, int] | None:
        state.commit(
            BatchUpdate(
                topic="events",
                item_counts={"a": {"click:m1": n}},
                item_last={"a": 100},
                dirty_items={1: {"a": 100}},
            )
        )
        deltas = owner.claim_dirty(1).item_deltas
        assert owner.load_items(["a"])  # the owner reads what it claimed
        owner.release_dirty(1, {})
        return None if deltas is None else deltas["a"]

    try:
        assert step(seldom, 1) == {"click:m1": 1}  # stored: never stored before
        assert step(seldom, 2) == {"click:m1": 2}  # not stored again for an hour
        assert step(seldom, 4) == {"click:m1": 4}
        assert seldom.load_items(["a"]) == {"a": ({"click:m1": 7}, 100)}
        reader = RedisStreamState(redis_url, state._ns)
        try:  # without a claim: only what was stored
            assert reader.load_items(["a"]) == {"a": ({"click:m1": 1}, 100)}
        finally:
            reader.close()
    finally:
        seldom.close()  # the owner dies with two claims' deltas unstored
    after = RedisStreamState(redis_url, state._ns)
    try:
        assert step(after, 8) == {"click:m1": 14}  # the pile and the new events
        assert after.load_items(["a"]) == {"a": ({"click:m1": 15}, 100)}
    finally:
        after.close()


def test_a_refused_command_aborts_the_whole_transaction(redis_client: redis.Redis) -> None:
    key = f"test-tx-{uuid.uuid4().hex[:8]}"
    with pytest.raises(redis.ResponseError):
        redis_wire.transaction(redis_client, [("SET", key, "1"), ("HSET", key)])  # arity
    assert redis_client.get(key) is None  # the SET before it never ran
    assert redis_wire.transaction(redis_client, [("SET", key, "1"), ("INCR", key)]) == [b"OK", 2]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        redis_wire.transaction(redis_client, [("HSET", key, "f", "v")])  # fails inside EXEC
    assert redis_client.ping()  # the connection was not left with unread replies
    redis_client.delete(key)


def test_a_failed_commit_is_a_store_error(redis_url: str) -> None:
    ns = f"test-state-{uuid.uuid4().hex[:8]}"
    state = RedisStreamState(redis_url, ns)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(f"{ns}:ilast", "not a sorted set")
        update = BatchUpdate(topic="events", offsets={0: 1}, item_last={"i1": 5})
        with pytest.raises(StoreError, match="commit failed"):
            state.commit(update)
    finally:
        client.delete(f"{ns}:ilast", f"{ns}:offsets:events")
        client.close()
        state.close()


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_item_marks_through_claims_crashes_and_rewrites(
    kind: str, state: RedisStreamState, tmp_path: Path
) -> None:
    """Both states: an item keeps its oldest wait until claimed; a claim outlives a crash;
    events that come while a claim is written wait, with their own times, for the next."""
    s = state if kind == "redis" else SqliteStreamState(tmp_path / "state.db")

    def dirty(marks: dict[str, int]) -> BatchUpdate:
        return BatchUpdate(topic="events", dirty_items={2: marks})

    try:
        s.commit(dirty({"a": 50, "b": 40}))
        s.commit(dirty({"a": 45, "b": 60}))
        assert s.claim_dirty(2).items == {"a": 45, "b": 40}
        assert s.claim_dirty(2).items == {"a": 45, "b": 40}  # crashed: claimed again
        s.commit(dirty({"a": 70}))  # while the claim is written
        s.release_dirty(2, {})
        assert s.claim_dirty(2).items == {"a": 70}
        s.release_dirty(2, {})
        assert s.claim_dirty(2).items == {}
    finally:
        if s is not state:
            s.close()


def test_a_redis_older_than_6_2_is_refused_by_name() -> None:
    with pytest.raises(StoreError, match=r"needs Redis >= 6.2; this server is 6.0.16"):
        require_version("6.0.16")
    for fine in ("6.2.0", "7.0.15", "10.1", "unknown"):
        require_version(fine)
