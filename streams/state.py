"""The stream workers' durable state: the protocol and what one batch commits.

Exactly-once effect on top of at-least-once Kafka delivery rests on three things:

1. **Offsets inside the state.** Each batch commits, in one transaction, the new user
   states, the item counter increments, the entities it dirtied, and the last Kafka offset
   it applied per partition. A replay after a crash skips offsets at or below that mark,
   so a redelivered message is never applied twice, whatever the batch boundaries.
2. **Event-id dedupe** inside each user's state (duplicates share the user key, hence the
   partition and the owner), for the same event sent twice by a producer.
3. **One writer per entity.** Users are owned by their partition; an item is owned by
   partition `owner_partition(item)`. Every commit marks touched entities dirty for their
   owner; only the owner drains its dirty set and writes rows to the online store, so
   rows are written in order and the last write holds the full state.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from features.aggregates import UserState
from features.online_state import BoardEntry

ItemCounters = dict[str, int]

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


def encode_user_state(state: UserState) -> bytes:
    """A user's state document as compact JSON (msgspec: several times json.dumps)."""
    return _ENCODER.encode(state)


def decode_user_state(blob: bytes | str) -> UserState:
    state: UserState = _DECODER.decode(blob)
    return state


@functools.lru_cache(maxsize=1 << 16)  # called per event; items repeat endlessly
def owner_partition(item_id: str, partitions: int) -> int:
    """The partition whose worker writes this item's feature row (stable across processes)."""
    return zlib.crc32(item_id.encode()) % partitions


@dataclass
class BatchUpdate:
    """Everything one micro-batch changes; committed atomically by `StreamState.commit`."""

    topic: str
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> last applied offset
    users: dict[str, UserState] = field(default_factory=dict)  # full new states
    item_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # increments
    item_last: dict[str, int] = field(default_factory=dict)  # candidate max event time
    dirty_users: dict[int, set[str]] = field(default_factory=dict)
    # owner partition -> item -> its oldest event time in this batch (the owner's freshness
    # measure: every worker changes items, so only the state knows how long one waited)
    dirty_items: dict[int, dict[str, int]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)  # shared additive counters


@dataclass
class Claimed:
    """Entities an owner must (re)write to the online store."""

    users: list[str]
    items: dict[str, int]  # item -> its oldest event not yet written (epoch ms)
    # item -> counter fields this claim changed since the item's previous claim, where
    # the store tracks them (Redis); None: unknown, recompute rows from all counters
    item_deltas: dict[str, ItemCounters] | None = None


class StreamState(Protocol):
    """Durable state of the stream workers (Redis in production, SQLite embedded)."""

    def applied_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Last applied offset per partition (-1 where nothing was applied)."""
        ...

    def load_users(self, user_ids: Iterable[str]) -> dict[str, UserState]:
        """Stored states of these users (absent users are left out)."""
        ...

    def commit(self, update: BatchUpdate) -> None:
        """Apply one batch atomically: all of it or none of it."""
        ...

    def claim_dirty(self, partition: int) -> Claimed:
        """Claim the dirty entities of an owner partition (plus any claimed before a crash)."""
        ...

    def load_items(self, item_ids: Iterable[str]) -> dict[str, tuple[ItemCounters, int]]:
        """Counters and latest event time of these items, as of the owner's latest claim
        (a store that tracks deltas folds in what the claim returned: load the claimed
        items). Callers must not mutate the counters: a store may cache them."""
        ...

    def drop_caches(self) -> None:
        """Forget cached reads: ownership changed, or a claim's outcome is unknown."""
        ...

    def release_dirty(self, partition: int, stale_item_fields: dict[str, list[str]]) -> None:
        """Mark the claimed entities written; drop counter fields no window can see."""
        ...

    def load_counters(self) -> dict[str, float]:
        """The shared additive counters (bandit statistics, learner weights, rewards)."""
        ...

    def write_board(self, entries: list[BoardEntry]) -> None:
        """Record items' latest popularity and CTR on the item board serving reads."""
        ...

    def close(self) -> None: ...
