"""From the event archive to the two-tower's arrays: training examples and a time holdout.

- Positives are the first time a user clicked, carted or bought an item (configurable):
  "the next positive item" the model learns to retrieve. Repeats are not new targets.
- Every example's user context (recent-item sequence and real-time features) is the one
  the online store held just before the event (`features.timeline`), so nothing leaks
  from the future and training sees the features serving will see.
- The holdout is by time: the last `holdout_fraction` of positives. Test users are
  described as of the cut, and their truth is what they went on to engage with that
  they had not touched before (the items a retrieval model is for).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.aggregates import INTERACTIONS, AggregateConfig
from features.timeline import UserContexts, UserTimeline, item_snapshot
from features.vectors import ITEM_DENSE_NAMES, item_dense, user_dense
from models.data import FIRST_ITEM, Examples, ItemTable, ItemVocab, hash_ids
from offline.config import DatasetSection
from streamrec.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserBatch:
    """Model inputs for a set of users at given times (test users, batch recommendations)."""

    user_ids: np.ndarray  # object [u]
    user_bucket: np.ndarray  # int64 [u]
    seq: np.ndarray  # int64 [u, L], vocabulary indices
    user_dense: np.ndarray  # float32 [u, Fu]
    seen: list[np.ndarray]  # per user, vocabulary indices interacted with before


@dataclass(frozen=True)
class TrainingSet:
    vocab: ItemVocab
    items: ItemTable
    train: Examples
    test: UserBatch
    truth: list[np.ndarray]  # per test user, item codes in `catalog` (may be unknown to vocab)
    catalog: np.ndarray  # object: every item id of the window, sorted
    split_ms: int
    stats: dict[str, Any] = field(default_factory=dict)

    def catalog_codes(self, item_ids: np.ndarray) -> np.ndarray:
        """Codes of item ids in `catalog` (-1 for ids outside it, e.g. padding)."""
        pos = np.clip(np.searchsorted(self.catalog, item_ids), 0, len(self.catalog) - 1)
        return np.where(self.catalog[pos] == item_ids, pos, -1)


def first_positives(events: pd.DataFrame, positive_events: tuple[str, ...]) -> pd.DataFrame:
    """The first positive event of each (user, item), in time order."""
    pos = events[events["event_type"].isin(positive_events)]
    return pos.drop_duplicates(["user_id", "item_id"], keep="first")


def contexts_to_inputs(
    ctx: UserContexts, user_ids: np.ndarray, now_ms: np.ndarray, buckets: int
) -> tuple[np.ndarray, np.ndarray]:
    """(user_bucket, user_dense) for contexts computed at `now_ms`."""
    return hash_ids(list(user_ids), buckets), user_dense(ctx.columns(), now_ms)


def _seen_lists(events: pd.DataFrame, item_codes: np.ndarray, users: np.ndarray) -> list[Any]:
    inter = events["event_type"].isin(INTERACTIONS).to_numpy()
    frame = pd.DataFrame({"user_id": events["user_id"].to_numpy()[inter], "c": item_codes[inter]})
    grouped = frame.groupby("user_id")["c"].unique()
    empty = np.zeros(0, dtype=np.int64)
    return [np.asarray(grouped.get(u, empty), dtype=np.int64) for u in users]


def user_batch(
    events: pd.DataFrame,
    timeline: UserTimeline,
    item_codes: np.ndarray,
    user_ids: np.ndarray,
    at_ms: int,
    buckets: int,
) -> UserBatch:
    """Inputs for `user_ids` as of just before `at_ms` (and what each had interacted with)."""
    at = np.full(len(user_ids), at_ms, dtype=np.int64)
    ctx = timeline.before(timeline.user_codes(user_ids), at)
    bucket, dense = contexts_to_inputs(ctx, user_ids, at, buckets)
    before = events["ts_ms"].to_numpy() < at_ms
    seen = _seen_lists(events[before], item_codes[before], user_ids)
    return UserBatch(user_ids, bucket, ctx.seq, dense, seen)


def build_training_set(
    events: pd.DataFrame,
    opts: DatasetSection,
    user_buckets: int,
    agg: AggregateConfig | None = None,
) -> TrainingSet:
    """Examples before the holdout cut, test users after it; users hashed into `user_buckets`."""
    agg = agg or AggregateConfig(recent_items=opts.recent_items)
    if not events["ts_ms"].is_monotonic_increasing:
        events = events.sort_values("ts_ms", kind="stable").reset_index(drop=True)
    positives = first_positives(events, opts.positive_events)
    if len(positives) < opts.min_train_examples:
        raise DataError(
            f"only {len(positives)} positive events ({', '.join(opts.positive_events)}) in the "
            f"window; need at least {opts.min_train_examples}. Widen --since/--until or import "
            "history with `streamrec import`."
        )
    split_ms = int(np.quantile(positives["ts_ms"].to_numpy(), 1.0 - opts.holdout_fraction))
    before_split = events["ts_ms"].to_numpy() < split_ms
    vocab = ItemVocab.from_ids(events.loc[before_split, "item_id"])
    item_codes = vocab.lookup(list(events["item_id"]))
    timeline = UserTimeline(events, item_codes, opts.recent_items)

    train_pos = positives[positives["ts_ms"] < split_ms]
    users = train_pos["user_id"].to_numpy(dtype=object)
    ts = train_pos["ts_ms"].to_numpy(dtype=np.int64)
    ctx = timeline.before(timeline.user_codes(users), ts)
    bucket, dense = contexts_to_inputs(ctx, users, ts, user_buckets)
    target = item_codes[train_pos.index.to_numpy()]
    train = Examples(user_bucket=bucket, seq=ctx.seq, user_dense=dense, target=target, ts_ms=ts)

    snap = item_snapshot(events, split_ms, agg).reindex(vocab.ids[FIRST_ITEM:]).fillna(0)
    table = np.zeros((len(vocab), len(ITEM_DENSE_NAMES)), dtype=np.float32)
    table[FIRST_ITEM:] = item_dense({c: snap[c].to_numpy() for c in snap.columns})
    items = ItemTable(table)

    catalog = np.unique(events["item_id"].to_numpy(dtype=object))
    test_pos = positives[positives["ts_ms"] >= split_ms]
    test_users = np.unique(test_pos["user_id"].to_numpy(dtype=object))
    test = user_batch(events, timeline, item_codes, test_users, split_ms, user_buckets)
    seen_ids = [set(np.asarray(vocab.ids, dtype=object)[s]) for s in test.seen]
    by_user = test_pos.groupby("user_id")["item_id"].unique()
    truth, keep = [], []
    for i, user in enumerate(test_users):
        novel = [it for it in by_user[user] if it not in seen_ids[i]]
        if novel:
            keep.append(i)
            pos = np.searchsorted(catalog, np.asarray(novel, dtype=object))
            truth.append(pos.astype(np.int64))
    test = _select(test, np.asarray(keep, dtype=np.int64))
    stats = {
        "events": len(events),
        "users": int(events["user_id"].nunique()),
        "items": len(catalog),
        "vocab_items": len(vocab) - FIRST_ITEM,
        "positives": len(positives),
        "train_examples": len(train),
        "test_users": len(truth),
        "split_ms": split_ms,
    }
    log.info("training set: %s", stats)
    return TrainingSet(vocab, items, train, test, truth, catalog, split_ms, stats)


def _select(batch: UserBatch, idx: np.ndarray) -> UserBatch:
    return UserBatch(
        batch.user_ids[idx],
        batch.user_bucket[idx],
        batch.seq[idx],
        batch.user_dense[idx],
        [batch.seen[i] for i in idx],
    )
