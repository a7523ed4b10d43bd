"""Settings of the nightly retrain, read from a TOML file (`offline/retrain.toml` by default).

One file holds every knob of a run: `[dataset]` (what counts as a positive, the holdout),
`[evaluation]`, `[gate]`, `[index]`, and `[model]` (the two-tower's hyperparameters, as
in `models/two_tower.toml`). Unknown keys are errors, named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from index.config import IndexConfig
from models.config import TwoTowerConfig, load_config
from streamrec.config_files import first_error, read_toml
from streamrec.errors import ConfigError
from streamrec.events import EVENT_TYPES

DEFAULT_RETRAIN_CONFIG = Path(__file__).with_name("retrain.toml")

Metric = Literal["recall@10", "recall@50", "recall@100", "ndcg@10", "hitrate@10", "coverage@100"]


class DatasetSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    positive_events: tuple[str, ...] = Field(
        ("click", "add_to_cart", "purchase"),
        description="Event types whose first occurrence per (user, item) is a training target.",
    )
    holdout_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Latest share of positives held out for evaluation."
    )
    recent_items: int = Field(50, ge=1, le=1000, description="Length of the user's sequence.")
    min_train_examples: int = Field(50, ge=1, description="Fewer positives than this: refuse.")

    def model_post_init(self, __context: object) -> None:
        unknown = [e for e in self.positive_events if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"positive_events: unknown type(s) {unknown}")


class EvaluationSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ks: tuple[int, ...] = Field((10, 50, 100), description="Cut-offs for recall and coverage.")


class GateSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Metric = Field("recall@50", description="The metric the new model must win on.")
    tolerance: float = Field(
        0.0, ge=0.0, description="Publish if new >= serving - tolerance (absolute)."
    )
    min_lift_over_popularity: float = Field(
        0.0, description="The new model must also beat popularity by this much (absolute)."
    )


class RetrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetSection = DatasetSection()
    evaluation: EvaluationSection = EvaluationSection()
    gate: GateSection = GateSection()
    index: IndexConfig = IndexConfig()
    model: TwoTowerConfig = Field(default_factory=load_config)


def load_retrain_config(path: Path | None = None) -> RetrainConfig:
    """Read a retrain TOML; ConfigError names the first bad key."""
    path = path or DEFAULT_RETRAIN_CONFIG
    raw = read_toml(path, "retrain config")
    overrides = raw.pop("model", {})
    try:
        model = TwoTowerConfig(**(load_config().model_dump() | overrides))
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise ConfigError(f"{path}: model.{key}: {msg}") from exc
    try:
        return RetrainConfig(**raw, model=model)
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise ConfigError(f"{path}: {key}: {msg}") from exc
