"""Shared fixtures: a real tansu broker, a real redis-server, settings per test.

Under CI=true a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from streamrec.errors import StoreError
from streamrec.settings import Settings, load_settings
from streams.broker import EmbeddedBroker, free_port, stop_process
from streams.local_redis import start_redis_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true (run scripts/setup)")
    pytest.skip(f"{what} not available")


@pytest.fixture(autouse=True)
def _clean_streamrec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's STREAMREC_* variables must not leak into tests."""
    for key in list(os.environ):
        if key.startswith("STREAMREC_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    b = EmbeddedBroker(free_port(), log_path=log)
    try:
        b.start()
    except Exception as exc:
        _missing(f"the embedded broker ({exc})")
    yield b
    b.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free port (the machine's Redis stays untouched)."""
    try:
        url, proc = start_redis_server(tmp_path_factory.mktemp("redis"))
    except StoreError as exc:
        _missing(f"redis-server ({exc.message})")
    yield url
    stop_process(proc, 10)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, broker: EmbeddedBroker) -> SettingsFactory:
    """Settings isolated per test: own topics, group, data dir and Feast project."""

    def build(store: str = "sqlite", redis_url: str | None = None, **overrides: object) -> Settings:
        tag = uuid.uuid4().hex[:8]
        values: dict[str, object] = {
            "data_dir": tmp_path / f"data-{tag}",
            "kafka_bootstrap": broker.bootstrap,
            "events_topic": f"events-{tag}",
            "dlq_topic": f"events-{tag}.dlq",
            "consumer_group": f"group-{tag}",
            "feast_project": f"p{tag}",
            "session_timeout_ms": 3000,
            "batch_max_wait_ms": 50,
            "archive_flush_s": 0.5,
        }
        if store == "redis":
            if redis_url is None:
                raise ValueError("store='redis' needs redis_url")
            values["redis_url"] = redis_url
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
