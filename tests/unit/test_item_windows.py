"""Item rows kept by deltas equal the reference sum over every counter, step by step."""

from __future__ import annotations

import random

from features.aggregates import (
    EVENT_TYPES,
    MINUTE_MS,
    AggregateConfig,
    ItemWindows,
    item_features,
    minute_increments,
    stale_item_fields,
)

CFG = AggregateConfig()


def test_rows_by_deltas_equal_rows_from_all_counters() -> None:
    rng = random.Random(3)
    windows = ItemWindows(CFG)
    counters: dict[str, dict[str, int]] = {"a": {}, "b": {}}
    last = {"a": 50_000 * MINUTE_MS, "b": 50_000 * MINUTE_MS}
    incremental = 0
    for step in range(3000):
        item = rng.choice("ab")
        move = rng.random()
        if move < 0.05:
            last[item] += rng.randint(1, 30) * 60 * MINUTE_MS  # hours on: buckets expire
        elif move < 0.3:
            last[item] += rng.randint(1, 3) * MINUTE_MS  # the anchor minute moves
        elif move < 0.6:
            last[item] += rng.randint(0, 999)  # within the same minute, mostly
        delta: dict[str, int] = {}
        anchor = last[item] // MINUTE_MS
        for _ in range(rng.randint(0, 6)):
            age = rng.choice([0, 0, 1, 5, 59, 60, 61, 300, 24 * 60, 30 * 60])  # late ones too
            for f in minute_increments(rng.choice(EVENT_TYPES), anchor - age):
                delta[f] = delta.get(f, 0) + rng.randint(1, 4)
        c = counters[item]
        for f, n in delta.items():
            c[f] = c.get(f, 0) + n
        unknown = step % 97 == 0  # a store that tracks no deltas
        if step % 501 == 0:
            windows.clear()  # ownership moved
        row, stale = windows.row(item, c, last[item], None if unknown else delta)
        assert row == item_features(c, last[item], CFG), step
        for f in stale:  # what release_dirty deletes
            del c[f]
        assert stale_item_fields(c, last[item]) == [], step  # nothing stale left behind
        incremental += not unknown and bool(delta)
    assert incremental > 1000  # the delta path, not only full sums, was exercised
