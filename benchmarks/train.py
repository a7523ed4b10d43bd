"""`streamrec bench train`: two-tower training speed on a million simulated interactions.

Interactions come from the planted world's click model in bulk (`World.click_log`), go
through the same example builder as `streamrec retrain` (point-in-time user contexts,
first positive per user-item pair, a time holdout), and train for a fixed number of
epochs with early stopping off, so the epoch time is comparable run to run. The final
holdout metrics of the model and of popularity come with it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.config import load_config
from models.train import train_two_tower
from offline.config import DatasetSection
from offline.dataset import build_training_set
from offline.evaluate import evaluate, model_recommendations, popularity_recommendations, to_catalog
from streamrec.simulation import World, WorldParams

log = logging.getLogger(__name__)

START_MS = 1_780_000_000_000
DAY_MS = 86_400_000


def click_frame(world: World, n: int, days: int = 30) -> pd.DataFrame:
    log_ = world.click_log(n, START_MS, days * DAY_MS)
    return pd.DataFrame(
        {
            "event_id": np.char.add("c", np.arange(n).astype(str)).astype(object),
            "event_type": "click",
            "user_id": np.char.add("u", log_["user"].astype(str)).astype(object),
            "item_id": np.char.add("i", log_["item"].astype(str)).astype(object),
            "ts_ms": log_["ts_ms"],
        }
    )


def run_train_bench(
    interactions: int = 1_000_000,
    users: int = 100_000,
    items: int = 50_000,
    epochs: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    t0 = time.monotonic()
    world = World(WorldParams(users=users, items=items, seed=seed))
    events = click_frame(world, interactions)
    gen_s = time.monotonic() - t0
    t1 = time.monotonic()
    base = load_config()
    ts = build_training_set(events, DatasetSection(), base.user_buckets)
    build_s = time.monotonic() - t1
    config = base.model_copy(
        update={"max_epochs": epochs, "validation_fraction": 0.0, "seed": seed}
    )
    result = train_two_tower(ts.train, ts.items, config)
    epoch_s = [h["epoch_s"] for h in result.history]
    kmax = 100
    recs = {
        "two_tower": to_catalog(ts, ts.vocab, model_recommendations(result.model, ts.test, kmax)),
        "popularity": to_catalog(ts, ts.vocab, popularity_recommendations(ts, kmax)),
    }
    metrics = evaluate(ts, recs, (10, 50, 100))
    return {
        "interactions": interactions,
        "train_examples": len(ts.train),
        "test_users": len(ts.truth),
        "items": len(ts.vocab) - 2,
        "epochs": len(epoch_s),
        "epoch_s": round(float(np.mean(epoch_s)), 2),
        "examples_per_s": round(len(ts.train) / float(np.mean(epoch_s))),
        "generate_s": round(gen_s, 2),
        "build_examples_s": round(build_s, 2),
        "device": result.device,
        "torch_threads": torch.get_num_threads(),
        "recall@50": round(metrics["two_tower"]["recall@50"], 4),
        "recall@50_popularity": round(metrics["popularity"]["recall@50"], 4),
        "metrics": {n: {k: round(v, 4) for k, v in m.items()} for n, m in metrics.items()},
    }
