"""Hyperparameters of the two-tower model, read from a TOML file (`models/two_tower.toml`).

The pydantic defaults mirror the shipped file, so code that builds `TwoTowerConfig()`
and a run that loads the file train the same model; a test holds the two equal.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamrec.config_files import first_error, read_toml
from streamrec.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).with_name("two_tower.toml")
Width = Annotated[int, Field(ge=1)]


class TwoTowerConfig(BaseModel):
    """Architecture, optimisation and run settings of one two-tower training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- architecture ----------------------------------------------------------------
    embedding_dim: int = Field(
        default=64, ge=1, description="Size D of the shared user/item space."
    )
    id_dim: int = Field(
        default=32, ge=1, description="Width of the user-bucket and item-id embeddings."
    )
    user_buckets: int = Field(
        default=100_000, ge=1, description="Hash buckets for user ids (collisions accepted)."
    )
    user_hidden: tuple[Width, ...] = Field(
        default=(128,), description="Hidden layer widths of the user-tower MLP (empty = linear)."
    )
    item_hidden: tuple[Width, ...] = Field(
        default=(128,), description="Hidden layer widths of the item-tower MLP (empty = linear)."
    )
    dropout: float = Field(
        default=0.3, ge=0.0, lt=1.0, description="Dropout after each hidden layer."
    )

    # --- loss --------------------------------------------------------------------------
    temperature: float = Field(
        default=0.05,
        gt=0.0,
        description="Softmax temperature over cosine scores (smaller = sharper).",
    )
    logq_correction: bool = Field(
        default=True,
        description="Subtract log sampling probability from in-batch logits (popularity).",
    )

    # --- optimisation ------------------------------------------------------------------
    batch_size: int = Field(
        default=1024, ge=2, description="Examples per step; also the number of in-batch negatives."
    )
    min_steps_per_epoch: int = Field(
        50, ge=0, description="Shrink the batch (not below 64) so small data gets this many steps."
    )
    lr: float = Field(default=2e-3, gt=0.0, description="AdamW learning rate of the MLP weights.")
    embedding_lr: float = Field(
        default=1e-2, gt=0.0, description="SparseAdam learning rate of the id embedding tables."
    )
    weight_decay: float = Field(
        default=1e-5,
        ge=0.0,
        description="AdamW weight decay of the MLP weights (not the id tables).",
    )
    max_epochs: int = Field(
        default=20, ge=1, description="Upper bound on passes over the training set."
    )
    patience: int = Field(
        default=3, ge=1, description="Epochs without validation improvement before stopping."
    )
    min_delta: float = Field(
        default=1e-4,
        ge=0.0,
        description="Smallest validation-loss drop that counts as improvement.",
    )
    validation_fraction: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Latest share of examples held out for early stopping (0 = none).",
    )

    # --- run ---------------------------------------------------------------------------
    seed: int = Field(default=0, ge=0, description="Seed of weight init, dropout and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where to train; auto = CUDA when present, else CPU."
    )
    amp: bool = Field(
        default=True, description="Mixed precision (bf16, else fp16) on CUDA; ignored on CPU."
    )
    num_threads: int = Field(
        default=1, ge=0, description="CPU threads for torch while training (0 = torch default)."
    )
    progress_every: int = Field(
        default=100, ge=0, description="Report progress every this many steps (0 = per epoch only)."
    )


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> TwoTowerConfig:
    """Read a TOML file of `TwoTowerConfig` keys; raise ConfigError naming a bad key."""
    raw = read_toml(path, "model config")
    known = set(TwoTowerConfig.model_fields)
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            extra = f" Did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"Unknown key '{key}' in model config '{path}'.{extra}")
    try:
        return TwoTowerConfig(**raw)
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise ConfigError(f"Bad value for '{key}' in model config '{path}': {msg}.") from exc
