"""Dead letters, SIGKILL recovery, and two workers splitting the partitions."""

from __future__ import annotations

import json
import signal
import time

import pytest
from confluent_kafka import Consumer

from streams.state_redis import RedisStreamState
from tests.integration.helpers import (
    archive_rows,
    assert_features_match,
    prepare,
    produce,
    run_worker,
    simulated_events,
    spawn_worker,
)

pytestmark = pytest.mark.integration

GOOD = {
    "event_id": "g1",
    "event_type": "click",
    "user_id": "u1",
    "item_id": "i1",
    "ts": "2026-01-01T00:00:00Z",
}
BAD: dict[str, tuple[bytes | None, str]] = {
    "bad json": (b'{"event_id": "x", ', "not valid JSON"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
    "wrong type": (
        json.dumps({**GOOD, "event_id": "b1", "user_id": 7}).encode(),
        "user_id: must be a string",
    ),
    "unknown event_type": (
        json.dumps({**GOOD, "event_id": "b2", "event_type": "like"}).encode(),
        "event_type: must be one of",
    ),
    "missing field": (
        json.dumps({k: v for k, v in GOOD.items() if k != "item_id"}).encode(),
        "item_id: is required",
    ),
    "oversized": (
        json.dumps({**GOOD, "event_id": "b3", "context": {"k": "x" * 100}}).encode() + b" " * 5000,
        "over the 4096-byte limit",
    ),
    "naive time": (
        json.dumps({**GOOD, "event_id": "b4", "ts": "2026-01-01T00:00:00"}).encode(),
        "ts: needs an explicit UTC offset",
    ),
    "unknown field": (
        json.dumps({**GOOD, "event_id": "b5", "colour": "red"}).encode(),
        "colour: is not a field of event v1",
    ),
    "tombstone": (None, "tombstone"),
    "binary": (b"\xff\xfe\x00garbage", "not valid JSON"),
}


def _drain(bootstrap: str, topic: str, expect: int, timeout_s: float = 30) -> list:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.time()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 3000,
        }
    )
    c.subscribe([topic])
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < expect and time.monotonic() < deadline:
        got += [m for m in c.consume(100, 0.5) if m.error() is None]
    c.close()
    return got


def test_every_kind_of_bad_event_lands_in_the_dlq_with_its_reason(make_settings):
    from confluent_kafka import Producer

    settings = make_settings()
    prepare(settings)
    good = simulated_events(200, seed=4)
    p = Producer({"bootstrap.servers": settings.bootstrap})
    from streams.topics import ensure_topics

    ensure_topics(settings.bootstrap, [settings.events_topic, settings.dlq_topic], 4)
    for name, (value, _) in BAD.items():
        p.produce(settings.events_topic, value, key=name.encode())
    p.flush(30)
    produce(settings, good)

    run_worker(settings)  # must not crash on any of it

    letters = _drain(settings.bootstrap, settings.dlq_topic, len(BAD))
    assert len(letters) == len(BAD)
    by_key = {m.key().decode(): m for m in letters}
    for name, (value, reason) in BAD.items():
        m = by_key[name]
        headers = {k: v.decode() for k, v in m.headers()}
        assert m.value() == value, name  # original bytes, untouched
        assert reason in headers["dlq.reason"], (name, headers["dlq.reason"])
        assert headers["dlq.topic"] == settings.events_topic
        assert int(headers["dlq.offset"]) >= 0 and int(headers["dlq.partition"]) >= 0
    assert_features_match(settings, good)
    # Bad events are not archived; every good one is.
    assert archive_rows(settings) == len(good)


def _applied(settings, redis_url: str) -> int:
    state = RedisStreamState(redis_url, f"streamrec:{settings.consumer_group}")
    try:
        offsets = state.applied_offsets(settings.events_topic, range(4))
    finally:
        state.close()
    return sum(o + 1 for o in offsets.values())


def test_sigkilled_worker_resumes_without_loss_or_double_count(make_settings, redis_url):
    settings = make_settings(
        "redis", redis_url=redis_url, batch_max_events=500, archive_flush_rows=700
    )
    prepare(settings)
    events = simulated_events(20_000, seed=5, users=200, items=80)
    produce(settings, events)

    worker = spawn_worker(settings)
    deadline = time.monotonic() + 60
    while _applied(settings, redis_url) < 5000:  # kill it mid-stream
        assert time.monotonic() < deadline, "worker made no progress"
        assert worker.poll() is None, worker.stderr.read().decode()[-2000:] if worker.stderr else ""
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=10)  # reaps it and closes its pipe
    assert _applied(settings, redis_url) < len(events), "killed too late to prove anything"

    run_worker(settings, idle_exit_s=2.0)  # a fresh worker in the same group

    assert _applied(settings, redis_url) == len(events)
    assert_features_match(settings, events)
    assert archive_rows(settings) == len(events)


def test_two_workers_split_partitions_and_agree_with_one(make_settings, redis_url):
    settings = make_settings("redis", redis_url=redis_url, batch_max_events=1000)
    prepare(settings)
    events = simulated_events(8000, seed=6, users=150, items=60)

    workers = [spawn_worker(settings, idle_exit_s=4.0) for _ in range(2)]
    time.sleep(4)  # both join the group before events flow
    produce(settings, events)
    errors = []
    for w in workers:
        _, err = w.communicate(timeout=120)
        errors.append(err.decode())
        assert w.returncode == 0, err.decode()[-2000:]

    assigned = [e for e in errors if "assigned partitions" in e]
    assert len(assigned) == 2, "both workers should have owned partitions"
    assert_features_match(settings, events)
    assert archive_rows(settings) == len(events)
