"""A tiny two-tower model shared by the model and artifact tests."""

from __future__ import annotations

import torch

from models import TwoTower, TwoTowerConfig

TINY = TwoTowerConfig(embedding_dim=8, id_dim=4, user_buckets=50, user_hidden=(16,), item_hidden=())


def tiny_model(seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(TINY, n_items=12, user_dense_dim=2, item_dense=torch.randn(12, 3))
