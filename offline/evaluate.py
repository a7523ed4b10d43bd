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

from models.data import FIRST_ITEM, ItemVocab, hash_ids
from models.embed import score_top_k, user_embeddings
from models.io import load_model
from models.two_tower import TwoTower
from offline.dataset import TrainingSet, UserBatch
from offline.metrics import popularity_baseline, ranking_metrics
from streamrec.errors import ArtifactError

log = logging.getLogger(__name__)


def user_vectors(model: TwoTower, batch: UserBatch) -> np.ndarray:
    """float32 [U, D] user-tower vectors of the users of `batch`."""
    return user_embeddings(model, batch.user_bucket, batch.seq, batch.user_dense)


def model_recommendations(model: TwoTower, batch: UserBatch, k: int) -> np.ndarray:
    """Top-k vocabulary indices of `model` for the users of `batch` (seen items excluded)."""
    return score_top_k(model, batch.user_bucket, batch.seq, batch.user_dense, k, batch.seen)


def popularity_recommendations(ts: TrainingSet, k: int) -> np.ndarray:
    """The most frequent training targets, minus what each test user already touched."""
    return popularity_baseline(ts.train.target, len(ts.test.user_ids), k, ts.test.seen)


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
