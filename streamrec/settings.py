"""Typed settings, read from `STREAMREC_*` environment variables.

Every setting has a type, a default and one line saying what it does. Unknown
`STREAMREC_*` variables are rejected (a typo must not silently fall back to a default).
Read settings through `get_settings()`; nothing builds them at import time.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamrec.config_files import first_error
from streamrec.errors import ConfigError

ENV_PREFIX = "STREAMREC_"


class Settings(BaseSettings):
    """All knobs of streamrec. Defaults run the embedded stack (tansu broker + SQLite)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- where things live ---------------------------------------------------------
    data_dir: Path = Field(
        Path(".streamrec"), description="Root for the SQLite stores, archive and feature repo."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the CLI and workers."
    )

    # --- Kafka ---------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; unset = the embedded broker on loopback."
    )
    embedded_broker_port: int = Field(
        19092, ge=1, le=65535, description="Port of the embedded broker (`streamrec broker`)."
    )
    events_topic: str = Field("events", description="Topic producers write v1 events to.")
    dlq_topic: str = Field("events.dlq", description="Topic invalid events go to, with reason.")
    topic_partitions: int = Field(4, ge=1, le=1024, description="Partitions of created topics.")
    consumer_group: str = Field(
        "streamrec-features", description="Consumer group of the stream workers."
    )
    session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer session timeout; the group rejoins in about half."
    )

    # --- event contract ----------------------------------------------------------------
    unknown_fields: Literal["reject", "ignore"] = Field(
        "reject", description="What an event with fields outside contract v1 gets."
    )
    max_event_bytes: int = Field(4096, ge=256, description="Largest accepted event, in bytes.")
    max_future_skew_s: int = Field(
        300, ge=0, description="How far in the future an event time may lie (clock skew)."
    )

    # --- stream worker ---------------------------------------------------------------
    batch_max_events: int = Field(
        20000, ge=1, description="Most events one micro-batch takes from Kafka."
    )
    batch_max_wait_ms: int = Field(
        100,
        ge=1,
        description="Longest an idle worker waits for events. A busy one takes what has"
        " been fetched without waiting: its batches fill while it works.",
    )
    materialize_interval_ms: int = Field(
        200,
        ge=0,
        description="How often the worker writes changed entities to the online store."
        " Longer folds more events into each row write; shorter is fresher.",
    )
    dedupe_window_s: int = Field(
        3600, ge=0, description="How long a user's event ids are remembered to drop duplicates."
    )
    dedupe_max_ids_per_user: int = Field(
        512, ge=0, description="Cap on remembered event ids per user inside that window."
    )
    recent_items: int = Field(50, ge=1, le=1000, description="Length of a user's item sequence.")
    ctr_prior: float = Field(0.05, gt=0, lt=1, description="Prior CTR for the smoothed CTR.")
    ctr_prior_strength: float = Field(
        20.0, gt=0, description="Weight of the prior CTR, in pseudo-impressions."
    )

    # --- archive (offline store) -----------------------------------------------------
    archive_flush_rows: int = Field(
        200_000, ge=1, description="Buffered archive rows that force a Parquet flush."
    )
    archive_flush_s: float = Field(
        5.0, gt=0, description="Longest archive rows wait in memory before a flush."
    )

    # --- stores ----------------------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis for online store + stream state; unset = embedded SQLite."
    )
    feast_project: str = Field("streamrec", description="Feast project name.")

    # --- serving API -------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address `streamrec serve` binds.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port `streamrec serve` binds.")
    api_keys: str = Field(
        "", description="Comma-separated keys accepted in `X-API-Key` for ingest and admin."
    )
    api_auth: Literal["auto", "on", "off"] = Field(
        "auto", description="Require API keys: auto = on unless running the embedded default."
    )
    max_k: int = Field(
        100, ge=1, le=1000, description="Largest k a recommendation request may ask."
    )
    max_batch_events: int = Field(
        1000, ge=1, le=100_000, description="Most events one POST /v1/events may carry."
    )
    candidates: int = Field(
        100, ge=1, le=5000, description="Candidates retrieved from the index before reranking."
    )
    trending_items: int = Field(
        1000, ge=1, description="Hot items whose live stats serving refreshes (plus a fifth new)."
    )
    bandit_policy: Literal["thompson", "greedy", "random"] = Field(
        "thompson", description="Default reranking policy."
    )
    exploration: float = Field(
        1.0, ge=0, le=10, description="Thompson posterior scale; 0 = always the posterior mean."
    )
    retrieval_weight: float = Field(
        0.1,
        ge=0,
        le=10,
        description="Rerank base score per unit of retrieval score + affinity, in CTR units.",
    )
    propensity_samples: int = Field(
        32, ge=1, le=10_000, description="Posterior draws per request for logged propensities."
    )
    attribution_window_s: int = Field(
        1800, ge=1, description="A click joins its impression if it comes within this window."
    )
    refresh_s: float = Field(
        1.0, gt=0, description="How often serving re-reads bandit parameters and trending items."
    )
    reload_poll_s: float = Field(
        5.0, gt=0, description="How often serving checks the registry for a newly published model."
    )
    experiments_file: Path | None = Field(
        None, description="A/B experiments TOML; unset = online/experiments.toml (none running)."
    )
    impression_buffer: int = Field(
        100_000,
        ge=1,
        description="Impressions buffered while Kafka is slow or down; beyond: dropped.",
    )

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap address components should use."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.embedded_broker_port}"

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def feature_repo_dir(self) -> Path:
        return self.data_dir / "feature_repo"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"


def _reject_unknown_env() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for key in os.environ:
        # pydantic-settings matches names case-insensitively, so the check does too.
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            hint = difflib.get_close_matches(upper, known, n=1)
            extra = f" Did you mean {hint[0]}?" if hint else ""
            raise ConfigError(f"Unknown setting {key}.{extra} See `streamrec config`.")


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides; raise ConfigError if bad."""
    _reject_unknown_env()
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # validated by pydantic
    except ValidationError as exc:
        field, msg = first_error(exc)
        raise ConfigError(
            f"Bad setting {ENV_PREFIX}{field.upper()}: {msg}. Fix or unset it."
        ) from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
