"""Events in -> features out, exact, through the real broker, Redis/SQLite and Feast."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from confluent_kafka import Producer

from tests.integration.helpers import (
    archive_rows,
    assert_features_match,
    expected,
    online,
    prepare,
    produce,
    run_worker,
    simulated_events,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_events_become_exact_features_and_archive(make_settings, redis_url, store):
    settings = make_settings(store, redis_url=redis_url)
    prepare(settings)
    events = simulated_events(3000, seed=1)
    duplicates = events[100:150]  # the same events sent twice by a retrying producer
    produce(settings, events + duplicates)

    run_worker(settings)

    assert_features_match(settings, events)
    # The archive is a log of messages: duplicates are stored, and dropped on read.
    assert archive_rows(settings) == len(events) + len(duplicates)
    frame = pd.read_parquet(settings.archive_dir)
    assert frame["event_id"].nunique() == len(events)
    assert set(frame.columns) >= {
        "event_id",
        "event_type",
        "user_id",
        "item_id",
        "event_timestamp",
        "date",
        "hour",
    }


def test_outside_client_events_are_processed_like_our_own(make_settings):
    settings = make_settings()
    prepare(settings)
    events = simulated_events(400, seed=2)
    # A plain confluent-kafka producer: gzip, no key, hand-written JSON with ISO times.
    plain = Producer({"bootstrap.servers": settings.bootstrap, "compression.type": "gzip"})
    for ev in events[:200]:
        plain.produce(
            settings.events_topic, json.dumps(ev.to_wire()).encode(), key=ev.user_id.encode()
        )
    plain.flush(30)
    produce(settings, events[200:])

    run_worker(settings)

    assert_features_match(settings, events)


def test_unknown_entities_read_as_empty(make_settings):
    settings = make_settings()
    prepare(settings)
    produce(settings, simulated_events(50, seed=3))
    run_worker(settings)
    users, _ = expected(settings, simulated_events(50, seed=3))
    rows = online(settings, "user", ["nobody", next(iter(users))])
    assert rows["nobody"]["last_seen_ms"] is None
    assert rows[next(iter(users))]["last_seen_ms"] is not None
