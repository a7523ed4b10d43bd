"""The fast feature path (bucketed state) equals the slow reference on random streams."""

from __future__ import annotations

import copy
import random
from collections import Counter, defaultdict

import pytest

from features.aggregates import (
    HOUR_MS,
    MINUTE_MS,
    USER_FEATURES,
    AggregateConfig,
    apply_user_event,
    item_features,
    item_increments,
    new_user_state,
    prune_user_state,
    reference_item_features,
    reference_user_features,
    stale_item_fields,
    user_features,
)
from streamrec.events import EVENT_TYPES, Event

T0 = 1_790_000_000_000 // HOUR_MS * HOUR_MS  # hour-aligned, so bucket edges are exercised
CFG = AggregateConfig(recent_items=5)


def make_stream(seed: int, n: int = 400) -> list[Event]:
    """~30 h of events for a few users and items, in a shuffled arrival order.

    Most events arrive up to 25 min late; 5 % arrive up to 30 h late. Duplicates (same
    event_id, same content) are re-sent at most 30 min after the original arrived, so
    they always fall inside the 1 h dedupe window.
    """
    rng = random.Random(seed)
    arrivals: list[tuple[float, Event]] = []
    t = T0
    for k in range(n):
        gap = rng.randrange(18 * MINUTE_MS)
        t += rng.choice([0, MINUTE_MS, gap, rng.randrange(18 * MINUTE_MS)])
        ev = Event(
            f"e{seed}-{k}",
            rng.choice(EVENT_TYPES),
            f"u{rng.randrange(4)}",
            f"i{rng.randrange(6)}",
            t,
        )
        if rng.random() < 0.05:
            arrivals.append((t + rng.uniform(0, 30 * HOUR_MS), ev))
            continue
        arrive = t + rng.uniform(0, 25 * MINUTE_MS)
        arrivals.append((arrive, ev))
        if rng.random() < 0.15:
            arrivals.append((arrive + rng.uniform(0, 30 * MINUTE_MS), ev))
    arrivals.sort(key=lambda a: a[0])
    return [ev for _, ev in arrivals]


@pytest.mark.parametrize("seed", range(20))
def test_fast_path_equals_reference(seed: int) -> None:
    stream = make_stream(seed)
    assert len({e.event_id for e in stream}) < len(stream)  # duplicates were injected
    assert max(e.ts_ms for e in stream) - T0 > 24 * HOUR_MS
    users: dict[str, dict] = defaultdict(new_user_state)
    counters: dict[str, Counter[str]] = defaultdict(Counter)
    item_last: dict[str, int] = {}
    seen: dict[str, list[Event]] = defaultdict(list)
    seen_items: dict[str, list[Event]] = defaultdict(list)
    accepted = 0
    for k, ev in enumerate(stream):
        seen[ev.user_id].append(ev)
        seen_items[ev.item_id].append(ev)
        state = users[ev.user_id]
        if apply_user_event(state, ev, CFG):
            accepted += 1
            counters[ev.item_id].update(item_increments(ev))
            item_last[ev.item_id] = max(item_last.get(ev.item_id, 0), ev.ts_ms)
        prune_user_state(state, CFG)
        item, last = ev.item_id, item_last.get(ev.item_id)
        if last is not None:
            before = item_features(counters[item], last, CFG)
            for f in stale_item_fields(counters[item], last):
                del counters[item][f]
            assert item_features(counters[item], last, CFG) == before
        if k % 25 == 0 or k == len(stream) - 1:
            assert user_features(state) == reference_user_features(seen[ev.user_id], CFG)
            if last is not None:
                assert item_features(counters[item], last, CFG) == reference_item_features(
                    seen_items[item], CFG
                )
    assert accepted == len({e.event_id for e in stream})
    for uid, state in users.items():
        row = user_features(state)
        assert list(row) == list(USER_FEATURES)
        assert row == reference_user_features(seen[uid], CFG), uid
    for iid, c in counters.items():
        assert item_features(c, item_last[iid], CFG) == reference_item_features(
            seen_items[iid], CFG
        ), iid


def _ev(i: int, ts: int, etype: str = "click", item: str = "i1") -> Event:
    return Event(f"e{i}", etype, "u1", item, ts)


def _user_row(events: list[Event]) -> dict:
    state = new_user_state()
    for ev in events:
        apply_user_event(state, ev, CFG)
        prune_user_state(state, CFG)
    row = user_features(state)
    assert row == reference_user_features(events, CFG)
    return row


def _item_row(events: list[Event]) -> dict:
    c: Counter[str] = Counter()
    for ev in events:
        c.update(item_increments(ev))
    row = item_features(c, max(e.ts_ms for e in events), CFG)
    assert row == reference_item_features(events, CFG)
    return row


ANCHOR_MIN = T0 // MINUTE_MS + 500  # anchor event lands 45 s into this minute
ANCHOR = ANCHOR_MIN * MINUTE_MS + 45_000


@pytest.mark.parametrize(
    ("ts", "inside"),
    [
        ((ANCHOR_MIN - 60) * MINUTE_MS, False),
        ((ANCHOR_MIN - 60) * MINUTE_MS + 59_999, False),  # < 60 min before anchor, still out
        ((ANCHOR_MIN - 59) * MINUTE_MS, True),
        (ANCHOR - 59 * MINUTE_MS, True),
        (ANCHOR, True),
    ],
)
def test_one_hour_window_edges(ts: int, inside: bool) -> None:
    row = _user_row([_ev(1, ANCHOR, "view"), _ev(2, ts, "click")])
    assert row["n_click_1h"] == int(inside)
    assert row["n_click_24h"] == 1
    assert row["last_seen_ms"] == ANCHOR
    item = _item_row([_ev(1, ANCHOR, "view"), _ev(2, ts, "impression")])
    assert item["impressions_1h"] == int(inside)
    assert item["impressions_24h"] == 1


ANCHOR_HOUR = T0 // HOUR_MS + 30
ANCHOR_H = ANCHOR_HOUR * HOUR_MS + 1_234_567


@pytest.mark.parametrize(
    ("ts", "inside"),
    [
        ((ANCHOR_HOUR - 24) * HOUR_MS, False),
        ((ANCHOR_HOUR - 23) * HOUR_MS - 1, False),
        ((ANCHOR_HOUR - 23) * HOUR_MS, True),
        (ANCHOR_H - 23 * HOUR_MS, True),
    ],
)
def test_24h_window_edges(ts: int, inside: bool) -> None:
    row = _user_row([_ev(1, ANCHOR_H, "view"), _ev(2, ts, "purchase")])
    assert row["n_purchase_24h"] == int(inside)
    assert row["n_purchase_1h"] == 0
    item = _item_row([_ev(1, ANCHOR_H, "view"), _ev(2, ts, "purchase")])
    assert item["purchases_24h"] == int(inside)
    assert item["popularity_24h"] == 1 + int(inside)


def test_recent_items_newest_first_and_capped() -> None:
    ts = [T0 + k * MINUTE_MS for k in range(8)]
    events = [
        _ev(0, ts[3], "click", "a"),
        _ev(1, ts[1], "view", "b"),
        _ev(2, ts[7], "purchase", "c"),
        _ev(3, ts[5], "impression", "z"),
        _ev(4, ts[6], "add_to_cart", "d"),
        _ev(5, ts[0], "click", "e"),
        _ev(6, ts[4], "view", "f"),
        _ev(7, ts[2], "click", "g"),
    ]
    row = _user_row(events)
    assert row["recent_items"] == ["c", "d", "f", "a", "g"]  # impressions excluded
    assert len(row["recent_items"]) == CFG.recent_items


def test_duplicate_event_id_changes_nothing() -> None:
    state = new_user_state()
    assert apply_user_event(state, _ev(1, T0), CFG) is True
    snapshot = copy.deepcopy(state)
    assert apply_user_event(state, _ev(1, T0 + HOUR_MS, "view", "other"), CFG) is False
    assert state == snapshot
    assert user_features(state)["n_click_1h"] == 1


def test_prune_forgets_old_ids_and_caps_them() -> None:
    cfg = AggregateConfig(dedupe_window_ms=HOUR_MS, dedupe_max_ids=3)
    state = new_user_state()
    times = [
        T0 - 30 * HOUR_MS,
        T0 + 2 * HOUR_MS,
        T0 + 2 * HOUR_MS + 1,
        T0 + 2 * HOUR_MS + 2,
        T0 + 3 * HOUR_MS - 1,
        T0 + 3 * HOUR_MS,
    ]
    for k, ts in enumerate(times):
        apply_user_event(state, _ev(k, ts), cfg)
    prune_user_state(state, cfg)
    assert set(state["ids"]) == {"e3", "e4", "e5"}  # e0 too old, then the 3 newest
    assert set(state["h"]["click"]) == {str(T0 // HOUR_MS + h) for h in (2, 3)}
    assert set(state["m"]["click"]) == {str((T0 + 3 * HOUR_MS) // MINUTE_MS - k) for k in (0, 1)}


def test_smoothed_ctr_known_value() -> None:
    events = [_ev(k, T0 + k, "click") for k in range(3)]
    events += [_ev(100 + k, T0 + k, "impression") for k in range(40)]
    row = _item_row(events)
    assert (row["clicks_24h"], row["impressions_24h"]) == (3, 40)
    assert row["ctr_smoothed"] == pytest.approx((3 + 1) / 60, rel=1e-12)
    assert _item_row([_ev(0, T0, "view")])["ctr_smoothed"] == pytest.approx(0.05, rel=1e-12)


def test_item_increments_fields() -> None:
    m, h = T0 // MINUTE_MS, T0 // HOUR_MS
    assert item_increments(_ev(0, T0, "click")) == (f"click:m{m}", f"click:h{h}", f"i:h{h}")
    assert item_increments(_ev(0, T0, "impression")) == (f"impression:m{m}", f"impression:h{h}")
    assert item_increments(_ev(0, T0, "view")) == (f"i:h{h}",)
    c = {f"click:m{m}": 1, f"click:m{m - 60}": 1, f"i:h{h - 24}": 2, f"click:h{h - 23}": 1}
    assert sorted(stale_item_fields(c, T0)) == sorted([f"click:m{m - 60}", f"i:h{h - 24}"])
