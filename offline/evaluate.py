"""Score recommenders on the time holdout: the new model, popularity, and what serves now.

Every recommender is evaluated on the same test users, contexts and truth, with the
items a user already touched excluded, and by exact search (the index's own recall
against exact is measured separately, at build), so the figures compare models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.data import FIRST_ITEM, ItemVocab, hash_ids
from models.io import load_model
from models.two_tower import TwoTower
from offline.dataset import TrainingSet, UserBatch
from offline.metrics import ranking_metrics
from streamrec.errors import ArtifactError

log = logging.getLogger(__name__)


@torch.no_grad()
def user_vectors(model: TwoTower, batch: UserBatch, chunk: int = 4096) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(batch.user_ids), chunk):
        out.append(
            model.user_vectors(
                torch.from_numpy(batch.user_bucket[s : s + chunk]),
                torch.from_numpy(batch.seq[s : s + chunk]),
                torch.from_numpy(batch.user_dense[s : s + chunk]),
            ).float()
        )
    if not out:
        return np.zeros((0, model_dim(model)), dtype=np.float32)
    return torch.cat(out).numpy()


def model_dim(model: TwoTower) -> int:
    return int(model.all_item_vectors().shape[1])


@torch.no_grad()
def exact_top_k(
    users: np.ndarray, items: np.ndarray, k: int, exclude: Sequence[np.ndarray], chunk: int = 1024
) -> np.ndarray:
    """[U, k] item rows by inner product, skipping rows 0/1 and each user's `exclude`."""
    item_t = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    k = min(k, len(items) - FIRST_ITEM)
    out = np.full((len(users), max(k, 0)), -1, dtype=np.int64)
    for s in range(0, len(users), chunk):
        scores = torch.from_numpy(users[s : s + chunk]) @ item_t.T
        scores[:, :FIRST_ITEM] = -torch.inf
        for r, seen in enumerate(exclude[s : s + chunk]):
            if len(seen):
                scores[r, torch.from_numpy(np.asarray(seen, dtype=np.int64))] = -torch.inf
        top = torch.topk(scores, k, dim=1)
        rows = top.indices.numpy()
        rows[~np.isfinite(top.values.numpy())] = -1
        out[s : s + len(rows)] = rows
    return out


def model_recommendations(model: TwoTower, batch: UserBatch, k: int) -> np.ndarray:
    """Top-k vocabulary indices of `model` for the users of `batch` (seen items excluded)."""
    items = model.all_item_vectors().detach().float().numpy()
    return exact_top_k(user_vectors(model, batch), items, k, batch.seen)


def popularity_recommendations(ts: TrainingSet, k: int) -> np.ndarray:
    """The most frequent training targets, minus what each test user already touched."""
    counts = np.bincount(ts.train.target, minlength=len(ts.vocab)).astype(np.float32)
    scores = counts[None, :]
    return exact_top_k(np.ones((len(ts.test.user_ids), 1), np.float32), scores.T, k, ts.test.seen)


def to_catalog(ts: TrainingSet, vocab: ItemVocab, rows: np.ndarray) -> np.ndarray:
    """Vocabulary rows of `vocab` to the training set's catalog codes (-1 kept)."""
    ids = np.asarray(vocab.ids, dtype=object)
    codes = ts.catalog_codes(ids[np.clip(rows, 0, None)])
    return np.where(rows >= 0, codes, -1)


@dataclass(frozen=True)
class ServingModel:
    name: str
    model: TwoTower
    vocab: ItemVocab


def load_serving(version_dir: Path, name: str) -> ServingModel:
    return ServingModel(
        name, load_model(version_dir / "model"), ItemVocab.load(version_dir / "vocab.json")
    )


def serving_recommendations(ts: TrainingSet, serving: ServingModel, k: int) -> np.ndarray:
    """The serving model's top-k for the same test users, through its own vocabulary."""
    remap = serving.vocab.lookup(ts.vocab.ids)
    remap[:FIRST_ITEM] = np.arange(FIRST_ITEM)
    buckets = int(serving.model.config.user_buckets)
    test = ts.test
    if serving.model.user_dense_dim != test.user_dense.shape[1]:
        raise ArtifactError(
            f"serving model {serving.name} expects {serving.model.user_dense_dim} user "
            f"features, this code makes {test.user_dense.shape[1]}"
        )
    batch = UserBatch(
        test.user_ids,
        hash_ids(list(test.user_ids), buckets),
        remap[test.seq],
        test.user_dense,
        [remap[s] for s in test.seen],
    )
    rows = model_recommendations(serving.model, batch, k)
    return to_catalog(ts, serving.vocab, rows)


def evaluate(
    ts: TrainingSet, recs: dict[str, np.ndarray], ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Metrics per recommender (recs in catalog codes), coverage over the model's catalogue."""
    n_items = len(ts.vocab) - FIRST_ITEM
    return {name: ranking_metrics(r, ts.truth, ks=ks, n_items=n_items) for name, r in recs.items()}
