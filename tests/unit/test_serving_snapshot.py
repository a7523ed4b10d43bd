"""Serving's user-vector path against the slow twins it replaces: the numpy user tower
against torch, the one-row dense features and the one-id hash against their batch forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.aggregates import USER_FEATURES
from features.vectors import user_dense, user_dense_row
from models.data import hash_id, hash_ids
from online.snapshot import NumpyUserTower
from tests.unit.tiny_model import tiny_model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_user_tower_equals_torch(seed: int) -> None:
    model = tiny_model(seed)
    with torch.no_grad():  # trained-looking tables: the user table starts at zero
        model.user_emb.normal_(0, 0.3)
    model.eval()
    tower = NumpyUserTower(model)
    rng = np.random.default_rng(seed)
    for n_seq in (0, 1, 5):
        bucket = int(rng.integers(0, model.config.user_buckets))
        seq = rng.integers(0, model.n_items, n_seq)  # padding (0) included on purpose
        dense = rng.normal(size=model.user_dense_dim).astype(np.float32)
        padded = np.zeros((1, 6), dtype=np.int64)
        padded[0, :n_seq] = seq
        with torch.inference_mode():
            want = model.user_vectors(
                torch.tensor([bucket]), torch.from_numpy(padded), torch.from_numpy(dense[None])
            )[0].numpy()
        got = tower(bucket, seq, dense)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


def test_one_row_dense_features_equal_the_batch_transform() -> None:
    rng = np.random.default_rng(0)
    now = 1_800_000_000_000
    names = [f for f in USER_FEATURES if f != "recent_items"]
    for case in range(200):
        row: dict[str, object] = {
            f: int(rng.integers(0, 10 ** int(rng.integers(1, 7)))) for f in names
        }
        if case % 5 == 0:
            row[names[case % len(names)]] = None  # a feature the store has no value for
        row["last_seen_ms"] = [0, None, now, now + 5000, now - 7_200_000][case % 5]
        if case % 7 == 0:
            row["last_seen_ms"] = int(now - rng.integers(0, 10**10))
        columns = {f: np.asarray([row[f] or 0], dtype=np.int64) for f in names}
        want = user_dense(columns, now)[0]
        got = user_dense_row(row, now)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_one_id_hash_equals_the_batch_hash() -> None:
    ids = ["u1", "", "user-ü", "x" * 128, *(f"u{j}" for j in range(100))]
    for buckets in (1, 7, 1 << 20):
        assert [hash_id(u, buckets) for u in ids] == hash_ids(ids, buckets).tolist()
    with pytest.raises(ValueError, match="buckets"):
        hash_id("u1", 0)
