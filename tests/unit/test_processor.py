"""FeatureProcessor over SqliteStreamState: online rows equal the reference features,
replays and duplicates change nothing, and a two-worker split gives the same rows."""

from __future__ import annotations

import copy
import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from features.aggregates import (
    HOUR_MS,
    MINUTE_MS,
    AggregateConfig,
    reference_item_features,
    reference_user_features,
)
from features.repo import ITEM_KEY, ITEM_VIEW, USER_KEY, USER_VIEW
from streamrec.events import Event, validate_event
from streamrec.simulation import World, WorldParams
from streams.processor import FeatureProcessor, Message
from streams.state import BatchUpdate
from streams.state_sqlite import SqliteStreamState

P = 4
TOPIC = "events"
CFG = AggregateConfig(recent_items=10)
T0 = 1_790_000_000_000 // HOUR_MS * HOUR_MS
FAR = T0 + 1000 * HOUR_MS


class FakeWriter:
    """The online store as a dict: (view, entity) -> (last row written, event time)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}

    def write(self, view: str, join_key: str, rows: Sequence[tuple[str, dict, int]]) -> None:
        assert join_key == {USER_VIEW: USER_KEY, ITEM_VIEW: ITEM_KEY}[view]
        for entity, values, ts_ms in rows:
            self.rows[(view, entity)] = (copy.deepcopy(values), ts_ms)

    def close(self) -> None:
        pass


def make_messages(seed: int, n: int = 1500) -> list[Message]:
    """~30 h of simulated events, keyed to partitions by user, a little out of order,
    with a few invalid messages and producer re-sends of recent events."""
    world = World(WorldParams(users=40, items=30, slate=5, seed=seed))
    rng = random.Random(seed)
    offsets = [0] * P
    msgs: list[Message] = []

    def send(p: int, ev: Event | None) -> None:
        msgs.append((p, offsets[p], ev))
        offsets[p] += 1

    t = T0
    for raw in world.events(n):
        t += rng.randrange(150_000)
        ev = validate_event({**raw, "ts": t - rng.randrange(10 * MINUTE_MS)}, now_ms=FAR)
        p = zlib.crc32(ev.user_id.encode()) % P
        send(p, ev)
        if rng.random() < 0.02:
            send(p, None)
        if rng.random() < 0.03:
            send(p, ev)  # the same event again, moments later
    return msgs


def expected_rows(msgs: Sequence[Message]) -> dict[tuple[str, str], tuple[dict, int]]:
    by_user: dict[str, list[Event]] = defaultdict(list)
    by_item: dict[str, list[Event]] = defaultdict(list)
    for _, _, ev in msgs:
        if ev is not None:
            by_user[ev.user_id].append(ev)
            by_item[ev.item_id].append(ev)
    rows = {}
    for view, groups, ref in (
        (USER_VIEW, by_user, reference_user_features),
        (ITEM_VIEW, by_item, reference_item_features),
    ):
        for entity, evs in groups.items():
            rows[(view, entity)] = (ref(evs, CFG), max(e.ts_ms for e in evs))
    return rows


def new_processor(path: Path, parts: Sequence[int]) -> tuple[FeatureProcessor, FakeWriter]:
    writer = FakeWriter()
    proc = FeatureProcessor(SqliteStreamState(path), writer, CFG, TOPIC, P)
    proc.assign(parts)
    return proc, writer


def run(
    proc: FeatureProcessor, msgs: Sequence[Message], parts: Sequence[int], batch: int = 97
) -> None:
    for k, i in enumerate(range(0, len(msgs), batch)):
        proc.process(msgs[i : i + batch])
        if k % 3 == 0:
            proc.materialize(parts)
    proc.materialize(parts)


@pytest.fixture(scope="module")
def msgs() -> list[Message]:
    m = make_messages(seed=1)
    assert max(ev.ts_ms for _, _, ev in m if ev) - T0 > 24 * HOUR_MS
    return m


def test_rows_equal_reference(tmp_path: Path, msgs: list[Message]) -> None:
    proc, writer = new_processor(tmp_path / "s.db", range(P))
    stats = [proc.process(msgs[i : i + 200]) for i in range(0, len(msgs), 200)]
    unique = len({ev.event_id for _, _, ev in msgs if ev})
    assert sum(s.applied for s in stats) == unique
    assert sum(s.duplicates for s in stats) == sum(1 for _, _, ev in msgs if ev) - unique > 0
    assert sum(s.invalid for s in stats) == sum(1 for _, _, ev in msgs if ev is None) > 0
    written = proc.materialize(range(P))
    expected = expected_rows(msgs)
    assert written == len(expected)
    assert writer.rows == expected
    assert sum(proc.freshness.counts) == unique
    items = {ev.item_id for _, _, ev in msgs if ev}
    assert len(proc.item_freshness.lags_ms) == len(items)  # one lag per item row written
    assert min(proc.item_freshness.lags_ms) >= 0
    assert proc.materialize(range(P)) == 0  # nothing dirty any more


def test_interleaved_materialize_equals_reference(tmp_path: Path, msgs: list[Message]) -> None:
    proc, writer = new_processor(tmp_path / "s.db", range(P))
    run(proc, msgs, range(P))
    assert writer.rows == expected_rows(msgs)


def test_replay_changes_nothing(tmp_path: Path, msgs: list[Message]) -> None:
    path = tmp_path / "s.db"
    proc, writer = new_processor(path, range(P))
    run(proc, msgs, range(P))
    before = copy.deepcopy(writer.rows)
    offsets = proc._state.applied_offsets(TOPIC, range(P))
    users_before = proc._state.load_users({ev.user_id for _, _, ev in msgs if ev})
    for p2 in (proc, new_processor(path, range(P))[0]):  # same worker, and after a restart
        stats = p2.process(msgs[:700])
        assert (stats.replayed, stats.applied, stats.duplicates) == (700, 0, 0)
        assert p2.materialize(range(P)) == 0
    assert writer.rows == before
    assert proc._state.applied_offsets(TOPIC, range(P)) == offsets
    assert proc._state.load_users(users_before) == users_before


def test_seen_event_ids_at_new_offsets_are_duplicates(tmp_path: Path, msgs: list[Message]) -> None:
    path = tmp_path / "s.db"
    proc, writer = new_processor(path, range(P))
    run(proc, msgs, range(P))
    before = copy.deepcopy(writer.rows)
    newest: dict[str, tuple[int, Event]] = {}
    for p, _, ev in msgs:  # each user's newest event: inside the dedupe window
        if ev and (ev.user_id not in newest or ev.ts_ms >= newest[ev.user_id][1].ts_ms):
            newest[ev.user_id] = (p, ev)
    restarted, _ = new_processor(path, range(P))
    nxt = {p: restarted.applied_offset(p) + 1 for p in range(P)}
    dups: list[Message] = []
    for p, ev in newest.values():
        dups.append((p, nxt[p], ev))
        nxt[p] += 1
    stats = restarted.process(dups)
    assert (stats.duplicates, stats.applied, stats.replayed) == (len(dups), 0, 0)
    assert restarted.materialize(range(P)) == 0
    assert writer.rows == before
    assert proc._state.applied_offsets(TOPIC, range(P)) == {p: nxt[p] - 1 for p in range(P)}


def test_two_workers_match_one(tmp_path: Path, msgs: list[Message]) -> None:
    single, single_writer = new_processor(tmp_path / "one.db", range(P))
    run(single, msgs, range(P))
    shared = tmp_path / "shared.db"
    owned = {"a": [0, 1], "b": [2, 3]}
    workers = {name: new_processor(shared, parts) for name, parts in owned.items()}
    split = {name: [m for m in msgs if m[0] in parts] for name, parts in owned.items()}
    for k, i in enumerate(range(0, len(msgs), 61)):
        for name, (proc, _) in workers.items():
            proc.process(split[name][i : i + 61])
            if k % 4 == (0 if name == "a" else 2):
                proc.materialize(owned[name])
    for name, (proc, _) in workers.items():
        proc.materialize(owned[name])
    rows_a, rows_b = workers["a"][1].rows, workers["b"][1].rows
    assert rows_a.keys().isdisjoint(rows_b.keys())  # one writer per entity
    assert {**rows_a, **rows_b} == single_writer.rows == expected_rows(msgs)


def test_rebalance_hands_partitions_over(tmp_path: Path, msgs: list[Message]) -> None:
    """Partitions 2, 3 move from worker a to b and back; both write one online store."""
    path, store = tmp_path / "s.db", FakeWriter()
    a = FeatureProcessor(SqliteStreamState(path), store, CFG, TOPIC, P)
    b = FeatureProcessor(SqliteStreamState(path), store, CFG, TOPIC, P)
    a.assign(range(P))
    third = len(msgs) // 3
    run(a, msgs[:third], range(P))

    def a_off(p: int) -> int:
        return max(o for q, o, _ in msgs[:third] if q == p)

    a.revoke([2, 3])
    b.assign([2, 3])
    assert [b.applied_offset(p) for p in (2, 3)] == [a_off(p) for p in (2, 3)]
    run(a, [m for m in msgs[third : 2 * third] if m[0] < 2], [0, 1])
    # b re-reads 2, 3 from the start (its offsets may lag): the old part is skipped.
    run(b, [m for m in msgs[: 2 * third] if m[0] >= 2], [2, 3])
    b.revoke([2, 3])
    a.assign([2, 3])
    run(a, msgs[2 * third :], range(P))
    assert store.rows == expected_rows(msgs)


class FailingOnce:
    """A StreamState whose next commit fails once `fail` is set (after the batch is folded)."""

    def __init__(self, inner: SqliteStreamState) -> None:
        self.inner, self.fail = inner, False

    def commit(self, update: BatchUpdate) -> None:
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        self.inner.commit(update)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_failed_commit_can_be_retried(tmp_path: Path, msgs: list[Message]) -> None:
    writer = FakeWriter()
    state = FailingOnce(SqliteStreamState(tmp_path / "s.db"))
    proc = FeatureProcessor(state, writer, CFG, TOPIC, P)
    proc.assign(range(P))
    proc.process(msgs[:300])
    state.fail = True
    with pytest.raises(OSError):
        proc.process(msgs[300:600])
    assert all(proc.applied_offset(p) < o for p, o, _ in msgs[300:600])
    proc.process(msgs[300:600])  # redelivered after the failure
    proc.process(msgs[600:])
    proc.materialize(range(P))
    assert writer.rows == expected_rows(msgs)
