"""Topic creation, idempotent: existing topics are left as they are."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.errors import BrokerError

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, timeout_s: float = 30.0
) -> None:
    """Create the topics that do not exist yet, with `partitions` partitions each."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"Cannot reach Kafka at {bootstrap}: {exc}") from exc
            time.sleep(0.5)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
    )
    for topic, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            log.info("created topic %s with %d partitions", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"Cannot create topic {topic}: {exc}") from exc
    # Wait until metadata shows every partition, so producers and consumers agree.
    while True:
        meta = admin.list_topics(timeout=5).topics
        if all(t in meta and len(meta[t].partitions) >= partitions for t in missing):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"Topics {missing} did not appear within {timeout_s}s")
        time.sleep(0.1)


def partition_count(bootstrap: str, topic: str) -> int:
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        raise BrokerError(f"Topic {topic} does not exist. Run `streamrec topics create`.")
    return len(meta.topics[topic].partitions)
