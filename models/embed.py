"""Batch inference: item and user vectors as numpy, and an exact top-k for evaluation.

`index/` builds its search structures from `item_embeddings`; `score_top_k` is the exact
(brute-force) retrieval that offline evaluation uses and that approximate indexes are
checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.data import FIRST_ITEM
from models.two_tower import TwoTower
from streamrec.errors import DataError


def _device(model: TwoTower) -> torch.device:
    return model.item_emb.device


def _as_tensor(a: np.ndarray, dtype: type, device: torch.device) -> torch.Tensor:
    # np.array copies: torch warns on (and must not write into) read-only or mapped arrays.
    return torch.from_numpy(np.array(a, dtype=dtype)).to(device)


@torch.inference_mode()
def item_embeddings(model: TwoTower, batch_size: int = 65_536) -> np.ndarray:
    """float32 [n_items, D]: one row per vocabulary index (rows 0/1 pad/unknown included)."""
    was_training = model.training
    model.eval()
    dev = _device(model)
    out = [
        model.item_vectors(torch.arange(s, min(s + batch_size, model.n_items), device=dev))
        for s in range(0, model.n_items, batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).cpu().numpy().astype(np.float32, copy=False)


def _check_users(model: TwoTower, ub: np.ndarray, seq: np.ndarray, ud: np.ndarray) -> None:
    n = ub.shape[0]
    if ub.ndim != 1 or seq.ndim != 2 or ud.ndim != 2 or seq.shape[0] != n or ud.shape[0] != n:
        raise DataError(
            f"user arrays disagree: user_bucket {ub.shape}, seq {seq.shape}, user_dense {ud.shape}."
        )
    if ud.shape[1] != model.user_dense_dim:
        raise DataError(
            f"user_dense: {ud.shape[1]} features, the model expects {model.user_dense_dim}."
        )
    if n and (ub.min() < 0 or ub.max() >= model.config.user_buckets):
        raise DataError(f"user_bucket: values must lie in [0, {model.config.user_buckets}).")
    if n and (seq.min() < 0 or seq.max() >= model.n_items):
        raise DataError(f"seq: item indices must lie in [0, {model.n_items}).")


@torch.inference_mode()
def user_embeddings(
    model: TwoTower,
    user_bucket: np.ndarray,
    seq: np.ndarray,
    user_dense: np.ndarray,
    batch_size: int = 8192,
) -> np.ndarray:
    """float32 [n, D] user vectors for the given (Examples-like) arrays."""
    _check_users(model, user_bucket, seq, user_dense)
    was_training = model.training
    model.eval()
    dev = _device(model)
    out = []
    for s in range(0, user_bucket.shape[0], batch_size):
        e = s + batch_size
        out.append(
            model.user_vectors(
                _as_tensor(user_bucket[s:e], np.int64, dev),
                _as_tensor(seq[s:e], np.int64, dev),
                _as_tensor(user_dense[s:e], np.float32, dev),
            )
        )
    model.train(was_training)
    if not out:
        return np.zeros((0, model.config.embedding_dim), dtype=np.float32)
    return torch.cat(out).cpu().numpy().astype(np.float32, copy=False)


def score_top_k(
    model: TwoTower,
    user_bucket: np.ndarray,
    seq: np.ndarray,
    user_dense: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """int64 [n, k]: each user's k best item indices by exact inner product, best first.

    Padding and unknown (0, 1) are never returned; `exclude[u]` lists item indices user u
    must not get (e.g. already seen). Slots left when too few items remain hold -1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = user_bucket.shape[0]
    if exclude is not None and len(exclude) != n:
        raise DataError(f"exclude: {len(exclude)} lists for {n} users.")
    items = torch.from_numpy(item_embeddings(model))
    users = torch.from_numpy(user_embeddings(model, user_bucket, seq, user_dense))
    kk = min(k, model.n_items - FIRST_ITEM)
    out = np.full((n, k), -1, dtype=np.int64)
    for s in range(0, n, batch_size):
        scores = users[s : s + batch_size] @ items.T
        scores[:, :FIRST_ITEM] = -torch.inf
        if exclude is not None:
            for r, seen in enumerate(exclude[s : s + batch_size]):
                seen = np.asarray(seen, dtype=np.int64)
                scores[r, torch.from_numpy(seen[(seen >= 0) & (seen < model.n_items)])] = -torch.inf
        vals, idx = torch.topk(scores, kk, dim=1)
        idx[torch.isneginf(vals)] = -1
        out[s : s + batch_size, :kk] = idx.numpy()
    return out
