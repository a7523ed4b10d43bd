"""Turns micro-batches of events into feature state, and dirty state into online rows.

Kafka-free on purpose: the worker feeds it `(partition, offset, event)` triples, so the
same code is driven by the confluent-kafka loop, by tests, or by any other consumer.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from features.aggregates import (
    MINUTE_MS,
    AggregateConfig,
    ItemWindows,
    UserState,
    apply_user_event,
    minute_increments,
    new_user_state,
    prune_user_state,
    user_features,
)
from features.online_state import BoardEntry
from features.online_writer import OnlineWriter, Row
from features.repo import ITEM_KEY, ITEM_VIEW, USER_KEY, USER_VIEW
from models.bandit_state import BanditDelta
from streamrec.events import Event
from streams import metrics
from streams.rewards import RewardJoiner
from streams.state import BatchUpdate, StreamState, owner_partition

log = logging.getLogger(__name__)

Message = tuple[int, int, Event | None]  # partition, offset, event (None if invalid)
_MAX_CACHED_USERS = 200_000


@dataclass
class BatchStats:
    applied: int = 0
    duplicates: int = 0
    replayed: int = 0
    invalid: int = 0


@dataclass
class Freshness:
    """Event time -> feature row written, per row, with a weight.

    A row's lag is taken from its oldest unwritten event: an upper bound for the others.
    User rows weigh the events they carried (the owner counts them); item rows weigh one
    each (their events come from every worker, and the state keeps only the oldest time).
    """

    lags_ms: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def add(self, lag_ms: int, count: int) -> None:
        self.lags_ms.append(lag_ms)
        self.counts.append(count)


class FeatureProcessor:
    def __init__(
        self,
        state: StreamState,
        writer: OnlineWriter,
        cfg: AggregateConfig,
        topic: str,
        partitions: int,
        rewards: RewardJoiner | None = None,
    ) -> None:
        self._state = state
        self._rewards = rewards
        self._writer = writer
        self._cfg = cfg
        self._topic = topic
        self._partitions = partitions
        self._applied: dict[int, int] = {}
        # Users of owned partitions: this worker is their only writer, so the cache is exact.
        self._users: dict[str, UserState] = {}
        self._pending: dict[str, tuple[int, int]] = {}  # user -> (oldest ts, events)
        self._item_windows = ItemWindows(cfg)  # items of owned partitions, by their deltas
        self.freshness = Freshness()  # user rows
        self.item_freshness = Freshness()  # item rows, one weight each
        # Labelled children looked up once: `labels()` costs a lock and a dict per row.
        self._user_lag = metrics.FRESHNESS.labels(USER_VIEW)
        self._item_lag = metrics.FRESHNESS.labels(ITEM_VIEW)

    # --- ownership ---------------------------------------------------------------------

    def assign(self, partitions: Iterable[int]) -> None:
        parts = list(partitions)
        self._applied.update(self._state.applied_offsets(self._topic, parts))
        self._users.clear()
        self._forget_items()

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._applied.pop(p, None)
        self._users.clear()
        self._forget_items()

    def _forget_items(self) -> None:
        """Items change owners with partitions: cached counters and sums go stale."""
        self._state.drop_caches()
        self._item_windows.clear()

    def applied_offset(self, partition: int) -> int:
        return self._applied.get(partition, -1)

    def is_new(self, partition: int, offset: int) -> bool:
        return offset > self._applied.get(partition, -1)

    # --- batches -----------------------------------------------------------------------

    def process(self, batch: Sequence[Message]) -> BatchStats:
        """Fold a batch into state and commit it atomically (with its offsets)."""
        stats = BatchStats()
        update = BatchUpdate(topic=self._topic)
        applied = self._applied
        fresh = [m for m in batch if m[1] > applied.get(m[0], -1)]
        stats.replayed = len(batch) - len(fresh)
        if not fresh:
            return stats
        users = self._users
        if len(users) > _MAX_CACHED_USERS:
            users.clear()
        missing = {ev.user_id for _, _, ev in fresh if ev and ev.user_id not in users}
        users.update(self._state.load_users(missing))
        delta = self._bandit_delta(fresh)
        rewards = self._rewards if delta is not None else None
        cfg = self._cfg
        offsets = update.offsets
        # The per-event loop only folds and tallies; everything per entity comes after it.
        touched: dict[str, _Touched] = {}
        tallies: dict[tuple[str, str, int], int] = {}  # (item, event type, minute) -> events
        spans: dict[str, list[int]] = {}  # item -> [oldest, latest event time]
        try:
            for p, offset, ev in fresh:
                offsets[p] = offset
                if ev is None:
                    stats.invalid += 1
                    continue
                t = touched.get(ev.user_id)
                if t is None:
                    state = users.get(ev.user_id)
                    if state is None:
                        state = users[ev.user_id] = new_user_state()
                    t = touched[ev.user_id] = _Touched(state, p)
                if not apply_user_event(t.state, ev, cfg):
                    stats.duplicates += 1
                    continue
                ts = ev.ts_ms
                t.applied += 1
                if ts < t.oldest_ms:
                    t.oldest_ms = ts
                if rewards is not None:
                    rewards.observe(t.state, ev, delta)  # type: ignore[arg-type]  # set with it
                item = ev.item_id
                key = (item, ev.event_type, ts // MINUTE_MS)
                tallies[key] = tallies.get(key, 0) + 1
                span = spans.get(item)
                if span is None:
                    spans[item] = [ts, ts]
                elif ts < span[0]:
                    span[0] = ts
                elif ts > span[1]:
                    span[1] = ts
            self._settle_users(touched, update)
            stats.applied = sum(t.applied for t in touched.values())
            if delta is not None and delta.touched:
                update.counters = delta.counters()
            update.item_counts = _item_counts(tallies)
            dirty_items: dict[int, dict[str, int]] = defaultdict(dict)
            for item, (oldest, latest) in spans.items():
                update.item_last[item] = latest
                dirty_items[owner_partition(item, self._partitions)][item] = oldest
            update.dirty_items = dict(dirty_items)
            self._state.commit(update)
        except BaseException:
            users.clear()  # the cache may hold changes that never committed
            raise
        self._applied.update(update.offsets)
        metrics.EVENTS.labels("applied").inc(stats.applied)
        metrics.EVENTS.labels("duplicate").inc(stats.duplicates)
        return stats

    def _settle_users(self, touched: dict[str, _Touched], update: BatchUpdate) -> None:
        """Prune the users a batch changed; mark them dirty and pending for their rows."""
        dirty: dict[int, set[str]] = defaultdict(set)
        pending = self._pending
        for user, t in touched.items():
            if not t.applied:
                continue  # only duplicates: nothing changed
            prune_user_state(t.state, self._cfg)
            if self._rewards is not None:
                self._rewards.prune(t.state)
            update.users[user] = t.state
            dirty[t.partition].add(user)
            seen = pending.get(user)
            pending[user] = (
                (t.oldest_ms, t.applied)
                if seen is None
                else (min(seen[0], t.oldest_ms), seen[1] + t.applied)
            )
        update.dirty_users = dict(dirty)

    def _bandit_delta(self, fresh: Sequence[Message]) -> BanditDelta | None:
        """A delta seeded with the current River weights, if the batch has anything to join."""
        if self._rewards is None or not any(ev and ev.request_id for _, _, ev in fresh):
            return None
        counters = self._state.load_counters()
        return BanditDelta({k[2:]: v for k, v in counters.items() if k.startswith("w.")})

    # --- online rows -------------------------------------------------------------------

    def materialize(self, owned: Iterable[int]) -> int:
        """Write the dirty entities this worker owns to the online store. Returns rows."""
        written = 0
        try:
            for p in owned:
                written += self._materialize(p)
        except BaseException:
            self._forget_items()  # a claim may have merged deltas no row has seen
            raise
        return written

    def _materialize(self, p: int) -> int:
        claimed = self._state.claim_dirty(p)
        if not claimed.users and not claimed.items:
            return 0
        missing = [u for u in claimed.users if u not in self._users]
        states = {u: self._users[u] for u in claimed.users if u in self._users}
        states.update(self._state.load_users(missing))
        user_rows: list[Row] = [(u, user_features(s), s["last"]) for u, s in states.items()]
        items = self._state.load_items(list(claimed.items))
        deltas = claimed.item_deltas
        windows = self._item_windows
        item_rows: list[Row] = []
        stale: dict[str, list[str]] = {}
        for i, (c, last) in items.items():
            row, stale[i] = windows.row(i, c, last, None if deltas is None else deltas.get(i))
            item_rows.append((i, row, last))
        if len(items) < len(claimed.items):  # claimed without a latest time: no row now
            for i in claimed.items.keys() - items.keys():
                windows.forget(i)
        if user_rows:
            self._writer.write(USER_VIEW, USER_KEY, user_rows)
        if item_rows:
            self._writer.write(ITEM_VIEW, ITEM_KEY, item_rows)
            self._state.write_board([_board_entry(i, row, last) for i, row, last in item_rows])
        self._state.release_dirty(p, stale)
        now_ms = int(time.time() * 1000)
        for u, _, _ in user_rows:
            pending = self._pending.pop(u, None)
            if pending is not None:
                lag = now_ms - pending[0]
                self.freshness.add(lag, pending[1])
                self._user_lag.observe(lag / 1000)
        for i, _, _ in item_rows:
            oldest = claimed.items[i]
            if oldest:  # 0: marked by an older version, which kept no times
                lag = now_ms - oldest
                self.item_freshness.add(lag, 1)  # per row: the state keeps no counts
                self._item_lag.observe(lag / 1000)
        metrics.ROWS.labels(USER_VIEW).inc(len(user_rows))
        metrics.ROWS.labels(ITEM_VIEW).inc(len(item_rows))
        return len(user_rows) + len(item_rows)


@dataclass(slots=True)
class _Touched:
    """A user one batch touched: its state, partition, and what it applied."""

    state: UserState
    partition: int
    oldest_ms: int = 1 << 62
    applied: int = 0


def _item_counts(tallies: dict[tuple[str, str, int], int]) -> dict[str, dict[str, int]]:
    """Counter increments per item from (item, event type, minute) tallies."""
    counts: dict[str, dict[str, int]] = {}
    for (item, event_type, minute), n in tallies.items():
        fields = minute_increments(event_type, minute)
        c = counts.get(item)
        if c is None:
            c = counts[item] = {}
        for f in fields:
            c[f] = c.get(f, 0) + n
    return counts


def _board_entry(item_id: str, row: dict[str, float], last_ms: int) -> BoardEntry:
    return BoardEntry(
        item_id,
        float(row["popularity_24h"]),
        float(row["ctr_smoothed"]),
        float(row["clicks_24h"]),
        float(row["impressions_24h"]),
        last_ms,
        last_ms,  # the first write of an item keeps its first-seen time (min on upsert)
    )
