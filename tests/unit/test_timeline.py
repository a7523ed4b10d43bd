"""The bulk point-in-time features agree with the stream's definitions (the slow twin)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.aggregates import (
    INTERACTIONS,
    ITEM_FEATURES,
    AggregateConfig,
    reference_item_features,
    reference_user_features,
)
from features.timeline import UserTimeline, item_snapshot
from features.vectors import USER_DENSE_NAMES, user_dense
from streamrec.events import EVENT_TYPES, Event

CFG = AggregateConfig(recent_items=5)
T0 = 1_780_000_000_000


def random_events(seed: int, n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # Clustered times (bursts within minutes, gaps of hours) and deliberate ties.
    ts = T0 + np.sort(rng.integers(0, 3 * 86_400_000, size=n))
    ts[rng.random(n) < 0.1] = ts[0] + 3_600_000
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_type": rng.choice(EVENT_TYPES, size=n),
            "user_id": [f"u{u}" for u in rng.integers(0, 12, size=n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 30, size=n)],
            "ts_ms": ts,
        }
    ).sample(frac=1.0, random_state=seed)  # arrival order is not time order


def to_events(frame: pd.DataFrame) -> list[Event]:
    return [
        Event(r.event_id, r.event_type, r.user_id, r.item_id, int(r.ts_ms))
        for r in frame.itertuples()
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_user_context_equals_reference_before_each_query(seed: int) -> None:
    events = random_events(seed)
    item_codes = events["item_id"].str[1:].astype(int).to_numpy() + 2
    timeline = UserTimeline(events, item_codes, CFG.recent_items)
    rng = np.random.default_rng(seed)
    users = np.array([f"u{u}" for u in rng.integers(0, 14, size=80)], dtype=object)  # 2 unseen
    queries = rng.choice(events["ts_ms"].to_numpy(), size=80) + rng.integers(-1, 2, size=80)
    ctx = timeline.before(timeline.user_codes(users), queries)
    cols = ctx.columns()
    for q, (user, t) in enumerate(zip(users, queries, strict=True)):
        # Same-time ties keep arrival order, as the stream does.
        prior = events[(events["user_id"] == user) & (events["ts_ms"] < t)]
        if prior.empty:
            assert not ctx.has_history[q]
            assert ctx.seq_len[q] == 0 and cols["last_seen_ms"][q] == 0
            continue
        ref = reference_user_features(to_events(prior.sort_values("ts_ms", kind="stable")), CFG)
        for name, values in cols.items():
            assert values[q] == ref[name], (name, user, t)
        want_seq = [int(i[1:]) + 2 for i in ref["recent_items"]]
        assert ctx.seq[q, : ctx.seq_len[q]].tolist() == want_seq
        assert (ctx.seq[q, ctx.seq_len[q] :] == 0).all()


def test_query_at_an_event_time_excludes_that_event() -> None:
    events = pd.DataFrame(
        {
            "event_id": ["a", "b"],
            "event_type": ["click", "click"],
            "user_id": ["u", "u"],
            "item_id": ["x", "y"],
            "ts_ms": [T0, T0 + 1000],
        }
    )
    timeline = UserTimeline(events, np.array([5, 6]), 3)
    ctx = timeline.before(timeline.user_codes(np.array(["u", "u"], dtype=object)), [T0 + 1000, T0])
    assert ctx.seq[0].tolist() == [5, 0, 0] and ctx.counts_1h["click"][0] == 1
    assert not ctx.has_history[1]


def test_item_snapshot_equals_reference() -> None:
    events = random_events(7)
    cut = int(events["ts_ms"].quantile(0.7))
    snap = item_snapshot(events, cut, CFG)
    before = events[events["ts_ms"] < cut]
    for item, group in before.groupby("item_id"):
        ref = reference_item_features(to_events(group), CFG)
        for name in ITEM_FEATURES:
            assert snap.loc[item, name] == pytest.approx(ref[name]), (item, name)
        assert snap.loc[item, "interactions_total"] == group["event_type"].isin(INTERACTIONS).sum()
    assert set(snap.index) == set(before["item_id"])


def test_user_dense_scales_counts_and_recency() -> None:
    cols = {f"n_{t}_{w}": np.array([0, 3]) for t in EVENT_TYPES for w in ("1h", "24h")}
    cols["last_seen_ms"] = np.array([0, T0])
    dense = user_dense(cols, T0 + 2 * 3_600_000)
    assert dense.shape == (2, len(USER_DENSE_NAMES)) and dense.dtype == np.float32
    assert dense[0].tolist() == [0.0] * len(USER_DENSE_NAMES)
    assert dense[1, 0] == pytest.approx(np.log1p(3))
    assert dense[1, -2] == pytest.approx(np.log1p(2.0)) and dense[1, -1] == 1.0
