"""Feature and archive workers run apart: each recovers on its own, neither loses or
double-counts, and a worker resumes each partition at its slowest sink's position."""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka import Producer

from tests.integration.helpers import (
    archive_rows,
    archived_offsets,
    assert_features_match,
    prepare,
    produce,
    run_worker,
    simulated_events,
    spawn_worker,
)
from tests.integration.test_delivery import _drain

pytestmark = pytest.mark.integration

BAD = [b'{"event_id": "x", ', b"[1, 2]", b'{"event_id": "y", "event_type": "like"}']


def test_sigkilled_archive_worker_resumes_exactly_beside_the_feature_worker(
    make_settings, redis_url
):
    settings = make_settings(
        "redis", redis_url=redis_url, batch_max_events=500, archive_flush_rows=700
    )
    prepare(settings)
    events = simulated_events(20_000, seed=9, users=200, items=80)
    produce(settings, events)
    raw = Producer({"bootstrap.servers": settings.bootstrap})
    for value in BAD:
        raw.produce(settings.events_topic, value, b"u-bad")
    raw.flush(10)

    features = spawn_worker(settings, idle_exit_s=4.0, role="features")
    archiver = spawn_worker(settings, role="archive")
    deadline = time.monotonic() + 60
    while archived_offsets(settings) < 4000:  # kill it mid-stream
        assert time.monotonic() < deadline, "archive worker made no progress"
        assert archiver.poll() is None, archiver.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        time.sleep(0.01)
    archiver.send_signal(signal.SIGKILL)
    archiver.communicate(timeout=10)
    assert archived_offsets(settings) < len(events), "killed too late to prove anything"

    run_worker(settings, idle_exit_s=2.0, role="archive")  # a fresh one in its group
    _, err = features.communicate(timeout=120)
    assert features.returncode == 0, err.decode()[-2000:]

    assert archived_offsets(settings) == len(events) + len(BAD)
    assert archive_rows(settings) == len(events)  # every valid event, once
    assert_features_match(settings, events)
    letters = _drain(settings.bootstrap, settings.dlq_topic, expect=len(BAD) + 1, timeout_s=8)
    assert sorted(m.value() for m in letters) == sorted(BAD)  # the features role alone


def test_a_worker_resumes_each_partition_at_its_slowest_sink(make_settings):
    """A features-only run moves the group's offsets to the end; a worker of both sinks
    in that group must still archive everything (and fold nothing twice)."""
    settings = make_settings("sqlite")
    prepare(settings)
    events = simulated_events(3000, seed=10, users=50, items=30)
    produce(settings, events)

    run_worker(settings, role="features")
    assert archive_rows(settings) == 0
    assert_features_match(settings, events)

    run_worker(settings, role="all")
    assert archive_rows(settings) == len(events)
    assert_features_match(settings, events)
