"""Dead letters: invalid events go to `events.dlq` with the original bytes and the reason.

Value and key are the original message's, untouched. Headers say why and where from:
`dlq.reason`, `dlq.field` (when one field is at fault), `dlq.topic`, `dlq.partition`,
`dlq.offset`, `dlq.ts_ms` (when it was rejected).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Producer

from streamrec.errors import BrokerError
from streamrec.events import InvalidEvent


@dataclass(frozen=True)
class DeadLetter:
    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    error: InvalidEvent


class DeadLetterPublisher:
    def __init__(self, bootstrap: str, topic: str, source_topic: str) -> None:
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "retries": 10}
        )
        self._topic = topic
        self._source = source_topic
        self._failed = 0

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self._failed += 1

    def publish(self, letters: list[DeadLetter]) -> None:
        """Send and wait for delivery: the batch is not committed before its dead letters."""
        if not letters:
            return
        now = str(int(time.time() * 1000)).encode()
        for dl in letters:
            headers: list[tuple[str, str | bytes | None]] = [
                ("dlq.reason", dl.error.message.encode()),
                ("dlq.topic", self._source.encode()),
                ("dlq.partition", str(dl.partition).encode()),
                ("dlq.offset", str(dl.offset).encode()),
                ("dlq.ts_ms", now),
            ]
            if dl.error.field:
                headers.append(("dlq.field", dl.error.field.encode()))
            while True:
                try:
                    self._producer.produce(
                        self._topic,
                        dl.value,
                        dl.key,
                        headers=headers,
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
        if self._producer.flush(30) or self._failed:
            self._failed = 0
            raise BrokerError(f"Could not deliver dead letters to {self._topic}")
