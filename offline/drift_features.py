"""The features drift is measured on, computed from the archive the same way for the
training reference and for recent traffic (the list is in `offline.drift`'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.aggregates import HOUR_MS, WINDOW_HOURS, AggregateConfig
from features.timeline import UserTimeline, item_snapshot
from features.vectors import ITEM_DENSE_NAMES, USER_DENSE_NAMES, item_dense, user_dense

if TYPE_CHECKING:
    from models.data import ItemVocab
    from models.two_tower import TwoTower
    from offline.drift import DriftConfig


_MAX_SCORE_ROWS = 20_000
LOOKBACK_MS = WINDOW_HOURS * HOUR_MS  # history before a window, so 24 h counts are whole


@dataclass
class Features:
    """Feature values of one window: numeric arrays and categorical label arrays."""

    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    rows: int = 0
    since_ms: int | None = None
    until_ms: int | None = None


@dataclass(frozen=True)
class ModelScorer:
    """The serving model's score of (user, item) at a moment: user tower · item tower."""

    model: TwoTower
    vocab: ItemVocab
    user_buckets: int
    recent_items: int

    def scores(
        self, events: pd.DataFrame, users: np.ndarray, items: np.ndarray, at_ms: np.ndarray
    ) -> np.ndarray:
        from models.data import FIRST_ITEM, hash_ids
        from models.embed import item_embeddings, user_embeddings

        codes = self.vocab.lookup(list(events["item_id"]))
        timeline = UserTimeline(events, codes, self.recent_items)
        ctx = timeline.before(timeline.user_codes(users), at_ms)
        dense = user_dense(ctx.columns(), at_ms)
        uvec = user_embeddings(self.model, hash_ids(list(users), self.user_buckets), ctx.seq, dense)
        item_codes = self.vocab.lookup(list(items))
        known = item_codes >= FIRST_ITEM
        ivec = item_embeddings(self.model)[item_codes[known]]
        return np.einsum("ij,ij->i", uvec[known], ivec).astype(np.float64)


def window_features(
    events: pd.DataFrame,
    since_ms: int,
    until_ms: int,
    cfg: DriftConfig,
    scorer: ModelScorer | None = None,
) -> Features:
    """The drift features of `[since_ms, until_ms)`; `events` may start a day earlier."""
    ts = events["ts_ms"].to_numpy(dtype=np.int64)
    hist = events[(ts >= since_ms - LOOKBACK_MS) & (ts < until_ms)].reset_index(drop=True)
    hts = hist["ts_ms"].to_numpy(dtype=np.int64)
    inside = (hts >= since_ms) & (hts < until_ms)
    etype = hist["event_type"].to_numpy(dtype=object)
    out = Features(since_ms=since_ms, until_ms=until_ms)
    if not inside.any():
        return out
    moments = np.flatnonzero(inside & (etype == "impression"))
    if len(moments) == 0:
        moments = np.flatnonzero(inside)
    rng = np.random.default_rng(cfg.seed)
    if len(moments) > cfg.max_rows:
        moments = np.sort(rng.choice(moments, size=cfg.max_rows, replace=False))
    users = hist["user_id"].to_numpy(dtype=object)[moments]
    items = hist["item_id"].to_numpy(dtype=object)[moments]
    at = hts[moments]
    timeline = UserTimeline(hist, np.zeros(len(hist), dtype=np.int64), 1)
    ctx = timeline.before(timeline.user_codes(users), at)
    udense = user_dense(ctx.columns(), at)
    out.numeric |= {n: udense[:, j].astype(np.float64) for j, n in enumerate(USER_DENSE_NAMES)}
    idense = _item_features_at(hist, items, at, since_ms, until_ms)
    out.numeric |= {n: idense[:, j].astype(np.float64) for j, n in enumerate(ITEM_DENSE_NAMES)}
    out.categorical["event_type"] = etype[inside]
    if scorer is not None:
        pick = rng.permutation(len(moments))[:_MAX_SCORE_ROWS]
        out.numeric["score"] = scorer.scores(hist, users[pick], items[pick], at[pick])
    out.rows = len(moments)
    return out


def _item_features_at(
    hist: pd.DataFrame, items: np.ndarray, at: np.ndarray, since_ms: int, until_ms: int
) -> np.ndarray:
    """Item features of each (item, moment) as of the start of the moment's hour.

    The online store changes as traffic flows, so one snapshot per window would put a
    few popular items' momentary values under most impressions (a lumpy distribution
    whose PSI jumps between identical windows); hourly snapshots follow what serving saw.
    """
    out = np.zeros((len(items), len(ITEM_DENSE_NAMES)), dtype=np.float32)
    # Integer item codes: grouping ints is several times faster than grouping strings.
    codes, uniques = pd.factorize(hist["item_id"])
    slim = pd.DataFrame(
        {"event_type": hist["event_type"], "item_id": codes, "ts_ms": hist["ts_ms"]}
    )
    wanted = pd.Index(uniques).get_indexer(items)  # -1: an item without events (no row)
    hours = (at - since_ms) // HOUR_MS
    agg = AggregateConfig()
    for h in np.unique(hours):
        rows = np.flatnonzero(hours == h)
        cut = min(since_ms + int(h) * HOUR_MS, until_ms)
        snap = item_snapshot(slim, cut, agg).reindex(wanted[rows]).fillna(0)
        out[rows] = item_dense({c: snap[c].to_numpy() for c in snap.columns})
    return out
