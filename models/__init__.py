"""Learned models: the two-tower retrieval model and the bandit rerankers.

Importing `models` needs torch, numpy, pydantic and safetensors only (no Feast, Faust or
pandas), so training runs on a GPU machine that has nothing else. Names load lazily, so
`models.bandit` (numpy + River) serves the stream workers without importing torch.

    cfg = load_config()                      # models/two_tower.toml, or a path
    vocab = ItemVocab.from_ids(item_ids)     # 0 pad, 1 unknown, items from 2
    examples = Examples(user_bucket=hash_ids(user_ids, cfg.user_buckets), seq=..., ...)
    result = train_two_tower(examples, ItemTable(item_dense), cfg)
    save_model(result.model, cfg, out_dir)   # weights.safetensors + model.json
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DEFAULT_CONFIG_PATH": "models.config",
    "TwoTowerConfig": "models.config",
    "load_config": "models.config",
    "FIRST_ITEM": "models.data",
    "PAD": "models.data",
    "UNKNOWN": "models.data",
    "Examples": "models.data",
    "ItemTable": "models.data",
    "ItemVocab": "models.data",
    "hash_ids": "models.data",
    "item_embeddings": "models.embed",
    "score_top_k": "models.embed",
    "user_embeddings": "models.embed",
    "load_model": "models.io",
    "save_model": "models.io",
    "TrainResult": "models.train",
    "sampling_log_q": "models.train",
    "train_two_tower": "models.train",
    "validation_loss": "models.train",
    "TwoTower": "models.two_tower",
    "in_batch_softmax_loss": "models.two_tower",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
