"""Offline ranking metrics and the popularity baseline every model is compared with.

Pure numpy and vectorised: a user's relevance test is a lookup of (user, item) keys, so
a million users cost a few array operations, not a Python loop.

Definitions (binary relevance; `truth[u]` = the items user u interacted with in the
holdout; users with an empty truth set are skipped and not counted):

- recall@K  = |top-K ∩ truth| / |truth|, averaged over users (the plain definition,
  as in RecBole or TorchMetrics; with one held-out item per user it equals hit rate).
- hitrate@K = share of users with at least one relevant item in their top K.
- ndcg@K    = DCG@K / IDCG@K, DCG = sum over ranks r < K of rel_r / log2(r + 2), IDCG the
  DCG of min(|truth|, K) relevant items ranked first.
- coverage@K = distinct items recommended in the top K of the evaluated users / n_items
  (the catalogue size, i.e. len(vocab) - 2 when pad/unknown are indices 0/1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamrec.errors import DataError

NONE = -1  # "no recommendation in this slot"
_USER_CHUNK = 16_384


def _truth_keys(
    truth: Sequence[np.ndarray], stride: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique user*stride+item keys of all truth sets, and each user's set size."""
    sets = [np.unique(np.asarray(t, dtype=np.int64)) for t in truth]
    sizes = np.fromiter((s.shape[0] for s in sets), dtype=np.int64, count=len(sets))
    if not sets or sizes.sum() == 0:
        return np.zeros(0, dtype=np.int64), sizes
    users = np.repeat(np.arange(len(sets), dtype=np.int64), sizes)
    items = np.concatenate(sets)
    if items.min() < 0:
        raise DataError(f"{name}: item indices must be >= 0.")
    return users * stride + items, sizes


def _in_sets(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Membership of `keys` in the sorted array `sorted_keys` (binary search)."""
    if sorted_keys.shape[0] == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, sorted_keys.shape[0] - 1)
    return sorted_keys[pos] == keys


def ranking_metrics(
    recommended: np.ndarray,
    truth: Sequence[np.ndarray],
    ks: Sequence[int] = (10, 50, 100),
    n_items: int | None = None,
) -> dict[str, float]:
    """Recall@K, coverage@K for each K, NDCG@10 and HitRate@10, averaged over users.

    `recommended` is [U, Kmax] item indices ranked best first (-1 = empty slot, never
    relevant); `truth[u]` the relevant items of user u. Coverage is reported only when
    `n_items` (the catalogue size) is given. Returns also `users`, the number evaluated.
    A K beyond Kmax is an error: the missing ranks would silently count as misses.
    """
    rec = np.asarray(recommended)
    if rec.ndim != 2 or not np.issubdtype(rec.dtype, np.integer):
        raise DataError(f"recommended: expected a 2-D integer array, got {rec.dtype} {rec.shape}.")
    if len(truth) != rec.shape[0]:
        raise DataError(f"truth: {len(truth)} sets for {rec.shape[0]} users in `recommended`.")
    kmax = rec.shape[1]
    wanted = sorted({*ks, 10})
    if min(wanted) < 1 or max(wanted) > kmax:
        raise DataError(f"ks {tuple(ks)} (and 10) must lie in [1, {kmax}] (columns given).")
    rec = rec.astype(np.int64, copy=False)
    if (rec < NONE).any():
        raise DataError("recommended: item indices must be >= 0 (or -1 for an empty slot).")
    # Duplicates in a row would count one relevant item twice.
    srt = np.sort(rec, axis=1)
    if ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != NONE)).any():
        raise DataError("recommended: a user's list repeats an item.")

    top_truth = max((int(np.max(t, initial=0)) for t in truth), default=0)
    stride = max(int(rec.max(initial=0)), top_truth) + 1
    keys, sizes = _truth_keys(truth, stride, "truth")
    users = np.flatnonzero(sizes > 0)
    out: dict[str, float] = {"users": float(users.shape[0])}
    if users.shape[0] == 0:
        return out

    rec_u = rec[users]
    hits = _in_sets(users[:, None] * stride + rec_u, keys) & (rec_u != NONE)
    n_true = sizes[users].astype(np.float64)
    for k in wanted:
        n_hit = hits[:, :k].sum(axis=1)
        if k in ks:
            out[f"recall@{k}"] = float(np.mean(n_hit / n_true))
            if n_items is not None:
                top = rec_u[:, :k]
                out[f"coverage@{k}"] = float(np.unique(top[top != NONE]).shape[0] / n_items)
        if k == 10:
            out["hitrate@10"] = float(np.mean(n_hit > 0))
            discounts = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = hits[:, :k] @ discounts
            idcg = np.cumsum(discounts)[np.minimum(sizes[users], k) - 1]
            out["ndcg@10"] = float(np.mean(dcg / idcg))
    return out


def popularity_baseline(
    train_targets: np.ndarray,
    n_users: int,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """int64 [n_users, k]: the most frequent training targets, best first, per user.

    Ties are broken by smaller item index (deterministic). `exclude[u]` lists items user
    u must not get (already seen); the next most popular items take their place, and
    slots left when too few items were ever seen hold -1.
    """
    if k < 1 or n_users < 0:
        raise ValueError(f"need k >= 1 and n_users >= 0, got k={k}, n_users={n_users}")
    targets = np.asarray(train_targets, dtype=np.int64)
    if targets.ndim != 1 or (targets.shape[0] and targets.min() < 0):
        raise DataError("train_targets: expected a 1-D array of item indices >= 0.")
    if exclude is not None and len(exclude) != n_users:
        raise DataError(f"exclude: {len(exclude)} lists for {n_users} users.")
    counts = np.bincount(targets) if targets.shape[0] else np.zeros(0, dtype=np.int64)
    seen = np.flatnonzero(counts)
    ranked = seen[np.lexsort((seen, -counts[seen]))]  # by count desc, then index asc
    out = np.full((n_users, k), NONE, dtype=np.int64)
    if exclude is None:
        top = ranked[:k]
        out[:, : top.shape[0]] = top
        return out
    for start in range(0, n_users, _USER_CHUNK):
        stop = min(start + _USER_CHUNK, n_users)
        chunk = [np.asarray(e, dtype=np.int64) for e in exclude[start:stop]]
        # A user can lose at most len(exclude[u]) of the first candidates.
        cand = ranked[: k + max((c.shape[0] for c in chunk), default=0)]
        stride = int(max(cand.max(initial=0), *(int(c.max(initial=0)) for c in chunk), 0)) + 1
        keys, _ = _truth_keys(chunk, stride, "exclude")
        rows = np.arange(stop - start, dtype=np.int64)[:, None]
        blocked = _in_sets(rows * stride + cand[None, :], keys)
        # Stable argsort on the mask moves allowed candidates first, in popularity order.
        order = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        picked = cand[order]
        picked[np.take_along_axis(blocked, order, axis=1)] = NONE
        out[start:stop, : picked.shape[1]] = picked
    return out
