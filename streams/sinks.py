"""Where a stream worker's messages go: the sink protocol and the feature sink.

A worker runs one or both sinks (`streamrec worker --role`): the feature sink folds
events into state and writes online rows (latency-critical); the archive sink
(`streams/archive.py`) writes Parquet (throughput work). Each sink keeps its own durable
position per partition, so a worker resumes each partition at the lowest of its sinks'
positions and every sink skips what it has already made durable: the Kafka group's
committed offsets are informational (lag monitoring), never what correctness rests on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from features import online_state
from features.aggregates import AggregateConfig
from features.online_writer import OnlineWriter, RedisLayoutWriter, SqliteLayoutWriter
from streamrec.settings import Settings
from streams.processor import FeatureProcessor, Message
from streams.rewards import RewardJoiner
from streams.state import StreamState


class Sink(Protocol):
    """One destination of consumed messages, with its own per-partition position."""

    name: str  # in logs and the loop clock

    def assign(self, partitions: list[int]) -> None:
        """Take ownership of partitions: load their positions, drop half-done work."""

    def revoke(self, partitions: list[int]) -> None:
        """Give partitions up (after `drain`): forget their buffers and positions."""

    def take(self, batch: Sequence[Message]) -> None:
        """Handle one micro-batch, in partition order; messages at or below the
        position are replays and must be skipped."""

    def tick(self, owned: list[int]) -> None:
        """Periodic work, called once per worker loop (writes, flushes when due)."""

    def drain(self, owned: list[int]) -> None:
        """Make everything taken so far durable (before a revoke or a shutdown)."""

    def checkpoint(self, partition: int) -> int:
        """The last offset of `partition` this sink has made durable (-1: none)."""

    def close(self) -> None:
        """Release connections and files."""


def aggregate_config(settings: Settings) -> AggregateConfig:
    return AggregateConfig(
        recent_items=settings.recent_items,
        dedupe_window_ms=settings.dedupe_window_s * 1000,
        dedupe_max_ids=settings.dedupe_max_ids_per_user,
        ctr_prior=settings.ctr_prior,
        ctr_prior_strength=settings.ctr_prior_strength,
    )


def open_state(settings: Settings) -> StreamState:
    """Redis when STREAMREC_REDIS_URL is set, else SQLite under the data dir."""
    if settings.redis_url:
        from streams.state_redis import RedisStreamState

        return RedisStreamState(settings.redis_url, online_state.namespace(settings))
    from streams.state_sqlite import SqliteStreamState

    return SqliteStreamState(online_state.state_db_path(settings))


def open_writer(settings: Settings) -> OnlineWriter:
    """The fast online writer for the configured Feast online store."""
    if settings.redis_url:
        import redis

        return RedisLayoutWriter(redis.Redis.from_url(settings.redis_url), settings.feast_project)
    return SqliteLayoutWriter(settings.feature_repo_dir / "online.db", settings.feast_project)


class FeatureSink:
    """Real-time features: each batch committed to the stream state at once (with its
    offsets, which are this sink's position), dirty rows written every
    `materialize_interval_ms`."""

    name = "features"

    def __init__(self, settings: Settings, partitions: int) -> None:
        self._state = open_state(settings)
        self._writer = open_writer(settings)
        self.processor = FeatureProcessor(
            self._state,
            self._writer,
            aggregate_config(settings),
            settings.events_topic,
            partitions,
            RewardJoiner(settings.attribution_window_s * 1000),
        )
        self._every_s = settings.materialize_interval_ms / 1000
        self._next_write = 0.0

    def assign(self, partitions: list[int]) -> None:
        self.processor.assign(partitions)

    def revoke(self, partitions: list[int]) -> None:
        self.processor.revoke(partitions)

    def take(self, batch: Sequence[Message]) -> None:
        self.processor.process(batch)

    def tick(self, owned: list[int]) -> None:
        now = time.monotonic()
        if now >= self._next_write:
            self._next_write = now + self._every_s
            self.processor.materialize(owned)

    def drain(self, owned: list[int]) -> None:
        self.processor.materialize(owned)

    def checkpoint(self, partition: int) -> int:
        return self.processor.applied_offset(partition)

    def close(self) -> None:
        self._state.close()
        self._writer.close()
