"""Item counters as a stream that has already run for hours would have left them.

A bench that starts from empty state measures the first minute of a stream: every item
row is computed from a handful of minute buckets. After an hour at the same rate, an
item that sees each event type every minute carries 60 minute buckets per counted type
plus 24 hour buckets (up to 276 counter fields), and every row write reads and sums them.
`warm_item_counters` writes that history through the stream state's own `commit`, drawn
from the simulated events' per-item, per-type frequencies at the offered rate (Poisson
counts per minute), so a timed run measures the steady state instead.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from features.aggregates import MINUTE_MS, WINDOW_HOURS, minute_increments
from streams.state import BatchUpdate, StreamState

log = logging.getLogger(__name__)
_CHUNK = 200  # items per commit


def warm_item_counters(
    state: StreamState,
    topic: str,
    payloads: Iterable[dict[str, Any]],
    rate: int,
    hours: int,
    seed: int = 11,
) -> int:
    """Commit `hours` of item counters ending a minute ago; return the fields written."""
    freq = Counter((ev["item_id"], ev["event_type"]) for ev in payloads)
    sampled = sum(freq.values())
    if not freq or hours <= 0:
        return 0
    rng = np.random.default_rng(seed)
    keys = list(freq)
    per_minute = np.array([freq[k] for k in keys], dtype=float) * (rate * 60 / sampled)
    now_minute = int(time.time() * 1000) // MINUTE_MS
    # Minute by minute from the start of the hour an hour ago (so both hours that the
    # 1 h window spans get whole hour buckets), whole hours before that.
    first_minute = (now_minute - 60) // 60 * 60
    first_hour = now_minute // 60 - min(hours, WINDOW_HOURS) + 1
    spans = [(h * 60, 60) for h in range(first_hour, first_minute // 60)]
    spans += [(m, 1) for m in range(first_minute, now_minute)]
    counts: dict[str, dict[str, int]] = {}
    for minute, length in spans:
        drawn = rng.poisson(per_minute * length)
        keep_minutes = length == 1 and minute > now_minute - 60  # older ones are stale
        for k in np.flatnonzero(drawn):
            item, event_type = keys[k]
            n = int(drawn[k])
            fields = counts.setdefault(item, {})
            for f in minute_increments(event_type, minute):
                if keep_minutes or f[f.index(":") + 1] != "m":
                    fields[f] = fields.get(f, 0) + n
    last_ms = (now_minute - 1) * MINUTE_MS
    items = list(counts)
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        state.commit(
            BatchUpdate(
                topic=topic,
                item_counts={i: counts[i] for i in chunk},
                item_last=dict.fromkeys(chunk, last_ms),
            )
        )
    written = sum(len(f) for f in counts.values())
    log.info(
        "warmed %d items with %d hours of counters (%.0f fields an item)",
        len(items),
        hours,
        written / max(len(items), 1),
    )
    return written
