"""Helpers of the integration tier: seeded events, producing, running workers, reading back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import pyarrow.dataset as ds

from features.aggregates import (
    FeatureRow,
    reference_item_features,
    reference_user_features,
)
from features.online_reader import read_features
from features.repo import apply, open_store
from streamrec.events import Event, validate_event
from streamrec.settings import Settings
from streamrec.simulation import World, WorldParams
from streams.archive import read_checkpoint
from streams.demo import settings_env
from streams.producer import EventProducer
from streams.sinks import aggregate_config
from streams.worker import Role, StreamWorker


def simulated_events(
    n: int, seed: int = 0, users: int = 60, items: int = 40, span_ms: int = 30 * 3_600_000
) -> list[Event]:
    """`n` simulated events with event times spread over `span_ms` up to ~now, some late."""
    world = World(WorldParams(users=users, items=items, seed=seed))
    start = int(time.time() * 1000) - span_ms
    out = []
    for k, raw in enumerate(world.events(n)):
        jitter = ((k * 7919) % 13 - 6) * 45_000 if k % 5 == 0 else 0  # some out of order
        raw["ts"] = start + (span_ms * k) // n + jitter
        out.append(validate_event(raw))
    return out


def produce(settings: Settings, events: list[Event]) -> None:
    producer = EventProducer(settings.bootstrap, settings.events_topic)
    producer.send_many(events)
    producer.flush()
    assert producer.failed == 0


def run_worker(settings: Settings, idle_exit_s: float = 2.0, role: Role = "all") -> None:
    """One worker in this process, until the stream has been idle for `idle_exit_s`."""
    StreamWorker(settings, role=role).run(idle_exit_s=idle_exit_s)


def spawn_worker(
    settings: Settings, idle_exit_s: float | None = None, role: Role = "all"
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "streamrec.cli", "worker", "--role", role]
    if idle_exit_s is not None:
        args += ["--idle-exit", str(idle_exit_s)]
    return subprocess.Popen(
        args, env=settings_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def expected(
    settings: Settings, events: list[Event]
) -> tuple[dict[str, FeatureRow], dict[str, FeatureRow]]:
    cfg = aggregate_config(settings)
    by_user: dict[str, list[Event]] = defaultdict(list)
    by_item: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        by_user[ev.user_id].append(ev)
        by_item[ev.item_id].append(ev)
    return (
        {u: reference_user_features(evs, cfg) for u, evs in by_user.items()},
        {i: reference_item_features(evs, cfg) for i, evs in by_item.items()},
    )


def online(settings: Settings, kind: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    key = f"{kind}_id"
    return {
        r[key]: {k: v for k, v in r.items() if k != key}
        for r in read_features(open_store(settings), kind, ids)
    }


def assert_features_match(settings: Settings, events: list[Event]) -> None:
    users, items = expected(settings, events)
    assert online(settings, "user", list(users)) == users
    assert online(settings, "item", list(items)) == items


def archive_rows(settings: Settings) -> int:
    if not settings.archive_dir.exists():
        return 0
    dataset = ds.dataset(settings.archive_dir, format="parquet", partitioning="hive")
    return dataset.count_rows()


def archived_offsets(settings: Settings) -> int:
    """Messages the archive has checkpointed, over all partitions (its durable position)."""
    topic, root = settings.events_topic, settings.archive_dir
    return sum(read_checkpoint(root, topic, p) + 1 for p in range(settings.topic_partitions))


def prepare(settings: Settings) -> None:
    apply(settings)
