"""Point-in-time feature values from the event log, in bulk: the batch twin of the stream.

`UserTimeline` sorts a window of events by (user, time) once and then answers "what were
this user's real-time features just before time t?" for millions of (user, t) queries
with a handful of vectorised searches. The values follow the definitions in
`features.aggregates` exactly (windows anchored at the user's last event, the recent-item
sequence most recent first); `tests/unit/test_timeline.py` holds them to a replay of the
stream's own code. Strictly-before-t is what makes training point-in-time correct: an
example never sees its own event or anything later.

`item_snapshot` gives the item features as of a cut-off time, the way the online store
would have shown them then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.aggregates import (
    HOUR_MS,
    INTERACTIONS,
    ITEM_COUNTED,
    ITEM_FEATURES,
    MINUTE_MS,
    WINDOW_HOURS,
    WINDOW_MINUTES,
    AggregateConfig,
)
from streamrec.errors import DataError
from streamrec.events import EVENT_TYPES

_MAX_KEY = np.iinfo(np.int64).max // 2


@dataclass(frozen=True)
class UserContexts:
    """Features of users as of query times: counts, the item sequence, and presence."""

    counts_1h: dict[str, np.ndarray]  # event type -> int64 [q]
    counts_24h: dict[str, np.ndarray]
    last_seen_ms: np.ndarray  # int64 [q]; 0 where the user had no earlier event
    seq: np.ndarray  # int64 [q, L]: item codes of recent interactions, most recent first
    seq_len: np.ndarray  # int64 [q]
    has_history: np.ndarray  # bool [q]

    def columns(self) -> dict[str, np.ndarray]:
        """The numeric user features by their Feast names (`n_click_1h`, …, `last_seen_ms`)."""
        out = {f"n_{t}_1h": self.counts_1h[t] for t in EVENT_TYPES}
        out |= {f"n_{t}_24h": self.counts_24h[t] for t in EVENT_TYPES}
        out["last_seen_ms"] = self.last_seen_ms
        return out


class UserTimeline:
    """A window of events in (user, time) order with cumulative counts per event type.

    `item_codes` gives, per event row of `events`, the integer the sequences should hold
    (e.g. the model's item vocabulary index); 0 is the padding value.
    """

    def __init__(self, events: pd.DataFrame, item_codes: np.ndarray, recent_items: int) -> None:
        if len(item_codes) != len(events):
            raise DataError("item_codes must have one entry per event")
        users, codes = np.unique(events["user_id"].to_numpy(dtype=object), return_inverse=True)
        ts = events["ts_ms"].to_numpy(dtype=np.int64)
        order = np.lexsort((np.arange(len(ts)), ts, codes))  # stable: arrival breaks ties
        self.user_ids: np.ndarray = users
        self._code = codes[order].astype(np.int64)
        self._ts = ts[order]
        self._t0 = int(ts.min()) if len(ts) else 0
        self._span = (int(ts.max()) - self._t0 + 1) if len(ts) else 1
        if len(users) * (self._span + 1) >= _MAX_KEY:
            raise DataError("event window too long for this many users; retrain a shorter window")
        self._key = self._code * (self._span + 1) + (self._ts - self._t0)
        self._recent = recent_items
        etypes = events["event_type"].to_numpy(dtype=object)[order]
        self._cum = {t: _cumsum(etypes == t) for t in EVENT_TYPES}
        is_inter = np.isin(etypes, list(INTERACTIONS))
        self._cum_inter = _cumsum(is_inter)
        self._inter_items = np.asarray(item_codes, dtype=np.int64)[order][is_inter]
        self._block_start = np.searchsorted(self._code, np.arange(len(users)), side="left")

    def __len__(self) -> int:
        return len(self._ts)

    def user_codes(self, user_ids: np.ndarray) -> np.ndarray:
        """Codes of `user_ids` in this timeline; -1 for users it has never seen."""
        pos = np.searchsorted(self.user_ids, user_ids)
        pos = np.clip(pos, 0, max(len(self.user_ids) - 1, 0))
        found = len(self.user_ids) > 0 and self.user_ids[pos] == user_ids
        return np.where(found, pos, -1).astype(np.int64)

    def _search(self, codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        rel = np.clip(ts - self._t0, 0, self._span)
        return np.searchsorted(self._key, codes * (self._span + 1) + rel, side="left")

    def before(self, codes: np.ndarray, query_ms: np.ndarray) -> UserContexts:
        """Each user's features just before `query_ms` (events at or after it unseen)."""
        codes = np.asarray(codes, dtype=np.int64)
        query_ms = np.asarray(query_ms, dtype=np.int64)
        known = codes >= 0
        safe = np.where(known, codes, 0)
        row = self._search(safe, query_ms) - 1  # the user's last event strictly before
        start = self._block_start[safe] if len(self._block_start) else np.zeros_like(safe)
        has = known & (row >= start)
        row = np.where(has, row, 0)
        anchor = np.where(has, self._ts[row] if len(self._ts) else 0, 0)
        lo_1h = self._search(safe, (anchor // MINUTE_MS - WINDOW_MINUTES + 1) * MINUTE_MS)
        lo_24h = self._search(safe, (anchor // HOUR_MS - WINDOW_HOURS + 1) * HOUR_MS)
        end = row + 1
        counts_1h, counts_24h = {}, {}
        for t, cum in self._cum.items():
            counts_1h[t] = np.where(has, cum[end] - cum[lo_1h], 0)
            counts_24h[t] = np.where(has, cum[end] - cum[lo_24h], 0)
        inter_end = self._cum_inter[end]
        inter_begin = np.maximum(self._cum_inter[start], inter_end - self._recent)
        seq_len = np.where(has, inter_end - inter_begin, 0)
        offs = inter_end[:, None] - 1 - np.arange(self._recent)[None, :]
        inside = np.arange(self._recent)[None, :] < seq_len[:, None]
        items = self._inter_items
        gathered = items[np.clip(offs, 0, max(len(items) - 1, 0))] if len(items) else 0
        seq = np.where(inside, gathered, 0).astype(np.int64)
        return UserContexts(counts_1h, counts_24h, anchor, seq, seq_len, has)


def _cumsum(mask: np.ndarray) -> np.ndarray:
    out = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=out[1:])
    return out


def item_snapshot(events: pd.DataFrame, at_ms: int, cfg: AggregateConfig) -> pd.DataFrame:
    """Item features as of `at_ms` (events before it), indexed by item_id.

    Besides `ITEM_FEATURES` (anchored at each item's last event, as online), it carries
    `interactions_total`: the item's interactions over the whole window, a steadier
    popularity signal for the model than the 24 h count.
    """
    ev = events[events["ts_ms"] < at_ms]
    if ev.empty:
        return pd.DataFrame(columns=[*ITEM_FEATURES, "interactions_total"], dtype=float)
    last = ev.groupby("item_id")["ts_ms"].transform("max").to_numpy()
    ts = ev["ts_ms"].to_numpy()
    in_1h = ts // MINUTE_MS > last // MINUTE_MS - WINDOW_MINUTES
    in_24h = ts // HOUR_MS > last // HOUR_MS - WINDOW_HOURS
    etype = ev["event_type"].to_numpy(dtype=object)
    inter = np.isin(etype, list(INTERACTIONS))
    cols: dict[str, np.ndarray] = {}
    for t in ITEM_COUNTED:
        cols[f"{t}s_1h"] = (etype == t) & in_1h
        cols[f"{t}s_24h"] = (etype == t) & in_24h
    cols["popularity_24h"] = inter & in_24h
    cols["interactions_total"] = inter
    flags = pd.DataFrame(cols, index=ev.index).astype(np.int64)
    flags["item_id"] = ev["item_id"].to_numpy()
    out = flags.groupby("item_id").sum()
    out["ctr_smoothed"] = (out["clicks_24h"] + cfg.ctr_prior * cfg.ctr_prior_strength) / (
        out["impressions_24h"] + cfg.ctr_prior_strength
    )
    return out[[*ITEM_FEATURES, "interactions_total"]]
