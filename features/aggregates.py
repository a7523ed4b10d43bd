"""Real-time feature definitions as code: windowed counts, recent items, smoothed CTR.

Windows are anchored at the entity's latest event time (its `last_seen`), so a feature
row says "as of that event" and the same events give the same values whatever order or
worker split they arrive in:

- 1 h  = events whose minute bucket lies in (minute(anchor) - 60, minute(anchor)]
- 24 h = events whose hour bucket lies in (hour(anchor) - 24, hour(anchor)]

User state is a small JSON document owned by one Kafka partition (events are keyed by
user); item state is a bag of commutative counters shared by all workers.
`reference_user_features` / `reference_item_features` compute the same values straight
from a list of events: the slow twin the tests hold the fast path to.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streamrec.events import EVENT_TYPES, Event

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
WINDOW_MINUTES = 60
WINDOW_HOURS = 24
ITEM_COUNTED = ("impression", "click", "purchase")
INTERACTIONS = frozenset({"click", "add_to_cart", "purchase", "view"})

USER_FEATURES: tuple[str, ...] = (
    "recent_items",
    *(f"n_{t}_1h" for t in EVENT_TYPES),
    *(f"n_{t}_24h" for t in EVENT_TYPES),
    "last_seen_ms",
)
ITEM_FEATURES: tuple[str, ...] = (
    *(f"{t}s_1h" for t in ITEM_COUNTED),
    *(f"{t}s_24h" for t in ITEM_COUNTED),
    "ctr_smoothed",
    "popularity_24h",
)

UserState = dict[str, Any]
FeatureRow = dict[str, Any]


@dataclass(frozen=True)
class AggregateConfig:
    """The knobs of feature computation (from Settings)."""

    recent_items: int = 50
    dedupe_window_ms: int = 3_600_000
    dedupe_max_ids: int = 512
    ctr_prior: float = 0.05
    ctr_prior_strength: float = 20.0


def _in_1h(minute: int, anchor_ms: int) -> bool:
    return anchor_ms // MINUTE_MS - WINDOW_MINUTES < minute <= anchor_ms // MINUTE_MS


def _in_24h(hour: int, anchor_ms: int) -> bool:
    return anchor_ms // HOUR_MS - WINDOW_HOURS < hour <= anchor_ms // HOUR_MS


# --- users -------------------------------------------------------------------------


def new_user_state() -> UserState:
    return {"last": 0, "m": {}, "h": {}, "recent": [], "ids": {}}


def apply_user_event(state: UserState, ev: Event, cfg: AggregateConfig) -> bool:
    """Fold one event into a user's state. Returns False (and changes nothing) on a duplicate."""
    ids: dict[str, int] = state["ids"]
    if ev.event_id in ids:
        return False
    ids[ev.event_id] = ev.ts_ms
    if ev.ts_ms > state["last"]:
        state["last"] = ev.ts_ms
    minute, hour = str(ev.ts_ms // MINUTE_MS), str(ev.ts_ms // HOUR_MS)
    by_min = state["m"].setdefault(ev.event_type, {})
    by_min[minute] = by_min.get(minute, 0) + 1
    by_hour = state["h"].setdefault(ev.event_type, {})
    by_hour[hour] = by_hour.get(hour, 0) + 1
    if ev.event_type in INTERACTIONS:
        # Kept sorted by (ts, arrival) ascending; a late event slots in where it belongs.
        recent: list[list[Any]] = state["recent"]
        if not recent or ev.ts_ms >= recent[-1][0]:
            recent.append([ev.ts_ms, ev.item_id])  # in order: the common case
        else:
            keys = [r[0] for r in recent]
            recent.insert(bisect.bisect_right(keys, ev.ts_ms), [ev.ts_ms, ev.item_id])
        if len(recent) > cfg.recent_items:
            del recent[: len(recent) - cfg.recent_items]
    return True


def prune_user_state(state: UserState, cfg: AggregateConfig) -> None:
    """Drop buckets outside both windows and event ids outside the dedupe window."""
    last = state["last"]
    for kind, in_window in (("m", _in_1h), ("h", _in_24h)):
        for etype in list(state[kind]):
            buckets = state[kind][etype]
            for b in [b for b in buckets if not in_window(int(b), last)]:
                del buckets[b]
            if not buckets:
                del state[kind][etype]
    ids: dict[str, int] = state["ids"]
    horizon = last - cfg.dedupe_window_ms
    if ids and min(ids.values()) < horizon:  # usually none is: the scan in C decides
        for k in [k for k, ts in ids.items() if ts < horizon]:
            del ids[k]
    if len(ids) > cfg.dedupe_max_ids:
        for k, _ in sorted(ids.items(), key=lambda kv: kv[1])[: len(ids) - cfg.dedupe_max_ids]:
            del ids[k]


def user_features(state: UserState) -> FeatureRow:
    last = state["last"]
    row: FeatureRow = {"recent_items": [item for _, item in reversed(state["recent"])]}
    # _in_1h / _in_24h inlined as bounds: this runs for every written user row.
    m_hi, h_hi = last // MINUTE_MS, last // HOUR_MS
    m_lo, h_lo = m_hi - WINDOW_MINUTES, h_hi - WINDOW_HOURS
    by_min, by_hour = state["m"], state["h"]
    for etype in EVENT_TYPES:
        buckets = by_min.get(etype)
        row[f"n_{etype}_1h"] = (
            sum(n for m, n in buckets.items() if m_lo < int(m) <= m_hi) if buckets else 0
        )
    for etype in EVENT_TYPES:
        buckets = by_hour.get(etype)
        row[f"n_{etype}_24h"] = (
            sum(n for h, n in buckets.items() if h_lo < int(h) <= h_hi) if buckets else 0
        )
    row["last_seen_ms"] = last
    return row


# --- items -------------------------------------------------------------------------


def item_increments(ev: Event) -> tuple[str, ...]:
    """The item counter fields one event bumps by one."""
    return minute_increments(ev.event_type, ev.ts_ms // MINUTE_MS)


@functools.lru_cache(maxsize=1 << 12)
def minute_increments(event_type: str, minute: int) -> tuple[str, ...]:
    """The item counter fields an event of this type in this minute bumps (cached)."""
    hour = minute // (HOUR_MS // MINUTE_MS)
    fields: list[str] = []
    if event_type in ITEM_COUNTED:
        fields.append(f"{event_type}:m{minute}")
        fields.append(f"{event_type}:h{hour}")
    if event_type in INTERACTIONS:
        fields.append(f"i:h{hour}")
    return tuple(fields)


@functools.lru_cache(maxsize=1 << 16)
def _split(field: str) -> tuple[str, str, int]:
    """`click:m29922107` -> ("click", "m", 29922107); cached: every item shares its buckets."""
    name, bucket = field.split(":", 1)
    return name, bucket[0], int(bucket[1:])


def _window_sums(
    counters: Iterable[tuple[str, int]], last_ms: int, sums: dict[str, int], stale: list[str]
) -> None:
    """Add counter fields into window sums (`popularity` included); list those outside."""
    for field, n in counters:
        name, unit, bucket = _split(field)
        if name == "i":
            if _in_24h(bucket, last_ms):
                sums["popularity"] += n
            else:
                stale.append(field)
        elif unit == "m":
            if _in_1h(bucket, last_ms):
                sums[f"{name}s_1h"] += n
            else:
                stale.append(field)
        elif _in_24h(bucket, last_ms):
            sums[f"{name}s_24h"] += n
        else:
            stale.append(field)


def _new_sums() -> dict[str, int]:
    sums = {f"{t}s_{w}": 0 for t in ITEM_COUNTED for w in ("1h", "24h")}
    sums["popularity"] = 0
    return sums


def _item_row(sums: dict[str, int], cfg: AggregateConfig) -> FeatureRow:
    row: FeatureRow = {f: sums[f] for f in ITEM_FEATURES if f in sums}
    row["ctr_smoothed"] = (sums["clicks_24h"] + cfg.ctr_prior * cfg.ctr_prior_strength) / (
        sums["impressions_24h"] + cfg.ctr_prior_strength
    )
    row["popularity_24h"] = sums["popularity"]
    return row


def item_features(counters: dict[str, int], last_ms: int, cfg: AggregateConfig) -> FeatureRow:
    sums = _new_sums()
    _window_sums(counters.items(), last_ms, sums, [])
    return _item_row(sums, cfg)


def stale_item_fields(counters: Iterable[str], last_ms: int) -> list[str]:
    """Counter fields no window can see any more (safe to delete)."""
    stale = []
    for field in counters:
        _, unit, bucket = _split(field)
        fresh = _in_1h(bucket, last_ms) if unit == "m" else _in_24h(bucket, last_ms)
        if not fresh:
            stale.append(field)
    return stale


def _advance(
    counters: dict[str, int],
    delta: dict[str, int],
    sums: dict[str, int],
    before: int,
    anchor: int,
    stale: list[str],
) -> None:
    """Move window sums from anchor minute `before` to `anchor` (less than an hour on):
    subtract the buckets left behind, as the counters held them before `delta`."""
    left: list[tuple[str, str]] = [  # (field, sum it leaves)
        (f"{t}:m{m}", f"{t}s_1h")
        for m in range(before - WINDOW_MINUTES + 1, anchor - WINDOW_MINUTES + 1)
        for t in ITEM_COUNTED
    ]
    per_hour = HOUR_MS // MINUTE_MS
    for h in range(before // per_hour - WINDOW_HOURS + 1, anchor // per_hour - WINDOW_HOURS + 1):
        left += [(f"{t}:h{h}", f"{t}s_24h") for t in ITEM_COUNTED]
        left.append((f"i:h{h}", "popularity"))
    for field, total in left:
        n = counters.get(field)
        if n is not None:
            sums[total] -= n - delta.get(field, 0)
            stale.append(field)


class ItemWindows:
    """Item rows kept current by counter deltas, not by summing every bucket each time.

    An item that sees each event type every minute carries ~276 counter fields; summing
    them per row write cost ~0.5 ms an item (measured), 20x a fresh item. Here a row's
    window sums are cached with their anchor minute. The next row adds the fields that
    changed; when the anchor moves on (every item's does at each minute), the buckets it
    leaves behind are subtracted by name. Only with nothing cached, or an anchor that
    jumped past the hour window, is a row summed in full. `item_features` is the
    reference it must equal.

    Deltas must be all that changed since the item's previous row, none in a bucket after
    the previous anchor but for those that came with a later anchor (true of the Redis
    state's claims: an item's latest time rises in the commit that adds its counts).
    """

    def __init__(self, cfg: AggregateConfig, max_items: int = 1 << 18) -> None:
        self._cfg = cfg
        self._max = max_items
        self._sums: dict[str, tuple[int, dict[str, int]]] = {}  # item -> (anchor minute, sums)

    def clear(self) -> None:
        self._sums.clear()

    def forget(self, item: str) -> None:
        """Drop an item whose changes will not all reach `row` (it was claimed unread)."""
        self._sums.pop(item, None)

    def row(
        self,
        item: str,
        counters: dict[str, int],
        last_ms: int,
        delta: dict[str, int] | None,
    ) -> tuple[FeatureRow, list[str]]:
        """The item's row and its stale fields, from `counters` (which already include
        `delta`, the fields changed since this item's previous row; None: unknown)."""
        anchor = last_ms // MINUTE_MS
        cached = self._sums.get(item)
        stale: list[str] = []
        if delta is not None and cached is not None and 0 <= anchor - cached[0] < WINDOW_MINUTES:
            before, sums = cached
            if anchor != before:
                _advance(counters, delta, sums, before, anchor, stale)
                self._sums[item] = (anchor, sums)
            left = set(stale)  # buckets just left behind: a late event may have hit one
            changed = ((f, n) for f, n in delta.items() if f not in left)
            _window_sums(changed, last_ms, sums, stale)
        else:
            if len(self._sums) >= self._max:
                self._sums.clear()
            sums = _new_sums()
            _window_sums(counters.items(), last_ms, sums, stale)
            self._sums[item] = (anchor, sums)
        return _item_row(sums, self._cfg), stale


# --- the slow twin -----------------------------------------------------------------


def _dedupe(events: Iterable[Event]) -> list[Event]:
    seen: set[str] = set()
    out = []
    for ev in events:
        if ev.event_id not in seen:
            seen.add(ev.event_id)
            out.append(ev)
    return out


def reference_user_features(events: Iterable[Event], cfg: AggregateConfig) -> FeatureRow:
    """A user's features computed directly from the definition (no buckets, no state)."""
    evs = _dedupe(events)
    last = max(ev.ts_ms for ev in evs)
    interactions = sorted(
        ((ev.ts_ms, i) for i, ev in enumerate(evs) if ev.event_type in INTERACTIONS)
    )
    row: FeatureRow = {
        "recent_items": [evs[i].item_id for _, i in reversed(interactions[-cfg.recent_items :])]
    }
    for w, inside in (
        ("1h", lambda e: _in_1h(e.ts_ms // MINUTE_MS, last)),
        ("24h", lambda e: _in_24h(e.ts_ms // HOUR_MS, last)),
    ):
        for t in EVENT_TYPES:
            row[f"n_{t}_{w}"] = sum(1 for e in evs if e.event_type == t and inside(e))
    row["last_seen_ms"] = last
    return {f: row[f] for f in USER_FEATURES}


def reference_item_features(events: Iterable[Event], cfg: AggregateConfig) -> FeatureRow:
    """An item's features computed directly from the definition."""
    evs = _dedupe(events)
    last = max(ev.ts_ms for ev in evs)

    def count(types: set[str], window: str) -> int:
        if window == "1h":
            return sum(
                1 for e in evs if e.event_type in types and _in_1h(e.ts_ms // MINUTE_MS, last)
            )
        return sum(1 for e in evs if e.event_type in types and _in_24h(e.ts_ms // HOUR_MS, last))

    row: FeatureRow = {f"{t}s_{w}": count({t}, w) for t in ITEM_COUNTED for w in ("1h", "24h")}
    row["ctr_smoothed"] = (row["clicks_24h"] + cfg.ctr_prior * cfg.ctr_prior_strength) / (
        row["impressions_24h"] + cfg.ctr_prior_strength
    )
    row["popularity_24h"] = count(set(INTERACTIONS), "24h")
    return {f: row[f] for f in ITEM_FEATURES}
