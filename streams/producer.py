"""The Python event producer: validates, batches, retries, and counts delivery reports."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streamrec.errors import BrokerError
from streamrec.events import Event, validate_event

log = logging.getLogger(__name__)


class EventProducer:
    """Sends v1 events to Kafka, keyed by user id (so a user's events stay in order)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        linger_ms: int = 20,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "linger.ms": linger_ms,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "lz4",
            "retries": 10,
            "retry.backoff.ms": 200,
            "message.timeout.ms": 60_000,
            "acks": "all",
        }
        config.update(extra_config or {})
        self._producer = Producer(config)
        self._topic = topic
        self.delivered = 0
        self.failed = 0
        self.last_error: KafkaError | None = None

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.last_error = err
            log.error("event not delivered after retries: %s", err)

    def send(self, event: Event | Mapping[str, Any]) -> None:
        """Validate (a dict) and enqueue one event; blocks briefly when the queue is full."""
        ev = event if isinstance(event, Event) else validate_event(dict(event))
        self.send_raw(ev.to_bytes(), ev.user_id.encode())

    def send_raw(self, value: bytes, key: bytes | None) -> None:
        """Enqueue bytes as they are (no validation); used by the DLQ and the benchmarks."""
        while True:
            try:
                self._producer.produce(self._topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def send_many(self, events: Iterable[Event | Mapping[str, Any]]) -> None:
        for ev in events:
            self.send(ev)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait for every queued event's delivery report; raise if any is still pending."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise BrokerError(f"{remaining} event(s) still undelivered after {timeout_s}s")

    def close(self) -> None:
        self.flush()
