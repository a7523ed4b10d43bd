"""Serving's numpy user tower against the torch model it was read from (the slow twin)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
