"""Feature rows to model inputs: the one transform training and serving share.

Training builds these columns from `features.timeline` (point in time), serving from the
Feast online store; both call the same function here, so the model never sees a feature
scaled one way in training and another way in production.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from features.aggregates import ITEM_COUNTED
from streamrec.events import EVENT_TYPES

USER_DENSE_NAMES: tuple[str, ...] = (
    *(f"log1p_n_{t}_1h" for t in EVENT_TYPES),
    *(f"log1p_n_{t}_24h" for t in EVENT_TYPES),
    "log1p_hours_since_seen",
    "has_history",
)
ITEM_DENSE_NAMES: tuple[str, ...] = (
    *(f"log1p_{t}s_1h" for t in ITEM_COUNTED),
    *(f"log1p_{t}s_24h" for t in ITEM_COUNTED),
    "ctr_smoothed",
    "log1p_popularity_24h",
    "log1p_interactions_total",
)


def user_dense(columns: Mapping[str, np.ndarray], now_ms: np.ndarray | int) -> np.ndarray:
    """float32 [n, len(USER_DENSE_NAMES)] from user feature columns as of `now_ms`.

    `columns` maps Feast feature names (`n_click_1h`, …, `last_seen_ms`) to arrays; a
    `last_seen_ms` of 0 means no history.
    """
    last = np.asarray(columns["last_seen_ms"], dtype=np.int64)
    parts = [np.log1p(np.asarray(columns[f"n_{t}_1h"], dtype=np.float64)) for t in EVENT_TYPES]
    parts += [np.log1p(np.asarray(columns[f"n_{t}_24h"], dtype=np.float64)) for t in EVENT_TYPES]
    has = last > 0
    hours = np.where(has, np.maximum(np.asarray(now_ms) - last, 0) / 3_600_000.0, 0.0)
    parts += [np.log1p(hours), has.astype(np.float64)]
    return np.stack(parts, axis=1).astype(np.float32)


_USER_COUNTS = tuple(f"n_{t}_{w}" for w in ("1h", "24h") for t in EVENT_TYPES)


def user_dense_row(row: Mapping[str, object], now_ms: int) -> np.ndarray:
    """`user_dense` for one user's online row (None counts as 0), in scalar arithmetic:
    serving's path, where ~30 numpy calls on one-element arrays cost ~100 us. The tests
    hold it to `user_dense`."""
    last = int(row["last_seen_ms"] or 0)  # type: ignore[call-overload]  # an int or None
    hours = max(now_ms - last, 0) / 3_600_000.0 if last > 0 else 0.0
    values = [math.log1p(float(row[f] or 0)) for f in _USER_COUNTS]  # type: ignore[arg-type]
    values += [math.log1p(hours), 1.0 if last > 0 else 0.0]
    return np.array(values, dtype=np.float32)


def item_dense(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 [n, len(ITEM_DENSE_NAMES)] from item feature columns (`item_snapshot`)."""
    parts = [
        np.log1p(np.asarray(columns[f"{t}s_{w}"], dtype=np.float64))
        for w in ("1h", "24h")
        for t in ITEM_COUNTED
    ]
    parts.append(np.asarray(columns["ctr_smoothed"], dtype=np.float64))
    parts.append(np.log1p(np.asarray(columns["popularity_24h"], dtype=np.float64)))
    parts.append(np.log1p(np.asarray(columns["interactions_total"], dtype=np.float64)))
    return np.stack(parts, axis=1).astype(np.float32)
