"""Learned models: the two-tower retrieval model and the bandit rerankers (torch-only imports).

Importing `models` needs torch, numpy, pydantic and safetensors only (no Feast, Faust or
pandas), so training runs on a GPU machine that has nothing else.

    cfg = load_config()                      # models/two_tower.toml, or a path
    vocab = ItemVocab.from_ids(item_ids)     # 0 pad, 1 unknown, items from 2
    examples = Examples(user_bucket=hash_ids(user_ids, cfg.user_buckets), seq=..., ...)
    result = train_two_tower(examples, ItemTable(item_dense), cfg)
    save_model(result.model, cfg, out_dir)   # weights.safetensors + model.json
"""

from __future__ import annotations

from models.config import DEFAULT_CONFIG_PATH, TwoTowerConfig, load_config
from models.data import FIRST_ITEM, PAD, UNKNOWN, Examples, ItemTable, ItemVocab, hash_ids
from models.embed import item_embeddings, score_top_k, user_embeddings
from models.io import load_model, save_model
from models.train import TrainResult, sampling_log_q, train_two_tower, validation_loss
from models.two_tower import TwoTower, in_batch_softmax_loss

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "FIRST_ITEM",
    "PAD",
    "UNKNOWN",
    "Examples",
    "ItemTable",
    "ItemVocab",
    "TrainResult",
    "TwoTower",
    "TwoTowerConfig",
    "hash_ids",
    "in_batch_softmax_loss",
    "item_embeddings",
    "load_config",
    "load_model",
    "sampling_log_q",
    "save_model",
    "score_top_k",
    "train_two_tower",
    "user_embeddings",
    "validation_loss",
]
