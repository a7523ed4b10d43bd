"""The published model as serving holds it: towers, vocabulary, index, swapped atomically.

A `ModelSnapshot` is immutable once loaded. `SnapshotHolder` keeps the current one in a
single reference: a request takes the reference once and uses that snapshot to the end,
so a swap (reload, rollback) never mixes two versions inside one answer and never fails
a request. Loading happens off the request path; a version that fails verification is
refused and the old one keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from features.vectors import ITEM_DENSE_NAMES, user_dense_row
from index.item_index import ItemIndex
from models.data import FIRST_ITEM, PAD, ItemVocab, hash_id
from models.embed import item_embeddings
from models.io import load_model
from models.registry import Registry
from models.two_tower import TwoTower
from streamrec.errors import ArtifactError

log = logging.getLogger(__name__)

_POPULARITY = ITEM_DENSE_NAMES.index("log1p_popularity_24h")
_CTR = ITEM_DENSE_NAMES.index("ctr_smoothed")
_CLICKS = ITEM_DENSE_NAMES.index("log1p_clicks_24h")
_IMPRESSIONS = ITEM_DENSE_NAMES.index("log1p_impressions_24h")
_FALLBACK_ITEMS = 1000
# How strongly retrieval leans on the user's last items versus the whole-history tower
# (both unit vectors): 2 lets a burst of clicks redirect candidates within one request.
ANCHOR_WEIGHT = 2.0


class NumpyUserTower:
    """The user tower as a few numpy ops: torch's per-op dispatch costs more than the math
    at batch size 1. `tests/unit/test_serving_snapshot.py` holds it to `TwoTower.user_vectors`.
    """

    def __init__(self, model: TwoTower) -> None:
        self._user = model.user_emb.detach().cpu().numpy()
        self._item = model.item_emb.detach().cpu().numpy()
        self._layers: list[tuple[np.ndarray, np.ndarray]] = [
            (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
            for m in model.user_mlp
            if isinstance(m, torch.nn.Linear)
        ]

    def __call__(self, bucket: int, seq: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """float32 [D] for one user: bucket row, mean of non-padding seq rows, features."""
        items = seq[seq != PAD]
        pooled = self._item[items].mean(axis=0) if len(items) else np.zeros(self._item.shape[1])
        h = np.concatenate([self._user[bucket], pooled, dense]).astype(np.float32)
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            h = h @ w + b
            if i < last:
                np.maximum(h, 0.0, out=h)
        norm = float(np.linalg.norm(h))
        return (h / max(norm, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class ModelSnapshot:
    version: str
    model: TwoTower
    vocab: ItemVocab
    index: ItemIndex
    item_vectors: np.ndarray  # float32 [len(vocab), D], rows by vocabulary index
    recent_items: int
    popular: tuple[str, ...]  # the catalogue by popularity at training time (fallback)
    loaded_at: float
    # Item statistics as of training, by vocabulary index: the long tail's bandit inputs
    # (live values come from the item board for hot and new items).
    item_ctr: np.ndarray
    item_popularity: np.ndarray
    item_clicks: np.ndarray
    item_impressions: np.ndarray
    user_tower: NumpyUserTower
    # The index's rows as the request path needs them: item ids (an object array, so a
    # fetch's ids are one fancy-index) and vocabulary codes (for the statistics above).
    row_ids: np.ndarray
    row_codes: np.ndarray

    def user_vector(
        self, user_id: str, recent_codes: np.ndarray, row: Mapping[str, object], now_ms: int
    ) -> np.ndarray:
        """float32 [D]: the user tower on the user's live features (same transform as training).

        `recent_codes`: vocabulary codes of the user's recent items, newest first (`codes`);
        `row`: the user's online feature row.
        """
        seq = recent_codes[: self.recent_items]
        dense = user_dense_row(row, now_ms)
        bucket = hash_id(user_id, int(self.model.config.user_buckets))
        return self.user_tower(bucket, seq, dense)

    def anchor(self, recent_codes: np.ndarray) -> np.ndarray | None:
        """Unit mean vector of the user's last three known items ("what they just did")."""
        recent = recent_codes[:3]
        recent = recent[recent >= FIRST_ITEM]
        if not len(recent):
            return None
        mean = self.item_vectors[recent].mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return None if norm == 0.0 else (mean / norm).astype(np.float32)

    def query(self, user_vec: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
        """The retrieval query: the user tower's vector pulled toward the latest items.

        The tower pools the whole recent sequence; blending in the last few items keeps
        candidates responsive to what the user did a second ago.
        """
        if anchor is None:
            return user_vec
        q = user_vec + ANCHOR_WEIGHT * anchor
        norm = float(np.linalg.norm(q))
        return user_vec if norm == 0.0 else (q / norm).astype(np.float32)

    def affinity(self, codes: np.ndarray, anchor: np.ndarray | None) -> np.ndarray:
        """Cosine of each item (by vocabulary index, see `codes`) with the user's anchor;
        0 for no anchor or items unknown to this model."""
        if anchor is None or not len(codes):
            return np.zeros(len(codes), dtype=np.float64)
        out = (self.item_vectors[codes] @ anchor).astype(np.float64)  # rows below FIRST_ITEM exist
        out[codes < FIRST_ITEM] = 0.0
        return out

    def codes(self, item_ids: Sequence[str]) -> np.ndarray:
        """Vocabulary index of each item (1 = unknown to this model)."""
        return self.vocab.lookup(list(item_ids))


def load_snapshot(registry: Registry, name: str | None = None) -> ModelSnapshot:
    """Verify and load a version (default: the current one). Raises ArtifactError."""
    name = name or registry.current()
    if name is None:
        raise ArtifactError("No published model yet. Run `streamrec retrain` first.")
    vdir: Path = registry.verify(name)
    model = load_model(vdir / "model")
    model.eval()
    vocab = ItemVocab.load(vdir / "vocab.json")
    index = ItemIndex.load(vdir / "index", mmap=True)  # one copy for all API processes
    meta = json.loads((vdir / "meta.json").read_text())
    vectors = item_embeddings(model)
    dense = model.item_dense.cpu().numpy().astype(np.float64)
    if dense.shape[1] != len(ITEM_DENSE_NAMES):
        raise ArtifactError(
            f"{name}: item features {dense.shape[1]}, expected {len(ITEM_DENSE_NAMES)}"
        )
    pop = np.expm1(dense[:, _POPULARITY])
    ids = vocab.ids
    if len(pop) == len(ids):
        order = np.argsort(-pop[FIRST_ITEM:], kind="stable")[:_FALLBACK_ITEMS] + FIRST_ITEM
        popular = tuple(ids[i] for i in order)
    else:
        popular = tuple(ids[FIRST_ITEM : FIRST_ITEM + _FALLBACK_ITEMS])
    log.info("loaded model %s (%d items, index %s)", name, len(index), index.info.get("kind"))
    return ModelSnapshot(
        version=name,
        model=model,
        vocab=vocab,
        index=index,
        item_vectors=vectors,
        recent_items=int(meta.get("recent_items", 50)),
        popular=popular,
        loaded_at=time.time(),
        item_ctr=dense[:, _CTR],
        item_popularity=pop,
        item_clicks=np.expm1(dense[:, _CLICKS]),
        item_impressions=np.expm1(dense[:, _IMPRESSIONS]),
        user_tower=NumpyUserTower(model),
        row_ids=np.asarray(index.item_ids, dtype=object),
        row_codes=vocab.lookup(index.item_ids),
    )


class SnapshotHolder:
    """The current snapshot; `reload()` swaps in the registry's current version if new."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._snapshot: ModelSnapshot | None = None
        self._pinned: dict[str, ModelSnapshot] = {}  # versions experiments serve
        self._lock = threading.Lock()  # one load at a time; readers never take it
        self.last_error: str | None = None

    def pin(self, names: list[str]) -> None:
        """Load versions that experiment variants serve (kept beside the current one)."""
        with self._lock:
            for name in names:
                if name not in self._pinned:
                    self._pinned[name] = load_snapshot(self._registry, name)

    def get(self, name: str | None) -> ModelSnapshot | None:
        """A pinned version by name; the current snapshot for None or an unpinned name."""
        if name is not None and name in self._pinned:
            return self._pinned[name]
        return self._snapshot

    @property
    def current(self) -> ModelSnapshot | None:
        return self._snapshot

    def reload(self, force: bool = False) -> ModelSnapshot | None:
        """Load the registry's current version unless it is already serving."""
        with self._lock:
            try:
                name = self._registry.current()
            except ArtifactError as exc:
                self.last_error = exc.message
                return self._snapshot
            if name is None:
                self.last_error = "no published model"
                return self._snapshot
            if not force and self._snapshot is not None and self._snapshot.version == name:
                return self._snapshot
            try:
                snap = load_snapshot(self._registry, name)
            except (ArtifactError, OSError, ValueError) as exc:
                self.last_error = f"{name}: {exc}"
                log.error("model %s refused, keeping %s: %s", name, self.version, exc)
                return self._snapshot
            self._snapshot = snap  # the swap: one reference assignment
            self.last_error = None
            return snap

    @property
    def version(self) -> str | None:
        snap = self._snapshot
        return snap.version if snap else None
