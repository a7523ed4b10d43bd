"""The stream worker: a confluent-kafka consumer-group loop feeding its sinks.

One process per worker; run as many as the topic has partitions (`streamrec worker`).
Each loop: take a micro-batch, send invalid messages to the DLQ, hand the batch to each
sink (features: fold into state in one atomic commit, write dirty rows on an interval;
archive: buffer as Arrow, flush Parquet when due), and commit to Kafka the lowest offset
every sink has made durable. A SIGKILL anywhere loses nothing: each partition resumes at
its sinks' lowest durable position, and every sink skips what it already holds.

Roles (`--role`): `all` runs both sinks in one process and group (the embedded default);
`features` and `archive` run them apart, in groups `<group>` and `<group>.archive`, so
Parquet compression never stalls the feature loop and each scales on its own (the
production shape: the archive is throughput work, features are latency work). Dead
letters go with the features role.

Why not a Faust agent: measured here, faust-streaming 0.15 delivered 13.5k events/s from
tansu with an empty agent body; the confluent-kafka consumer decodes ~155k/s. The 50k/s
target leaves no room for Faust's per-event overhead.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streamrec.errors import InvalidEvent
from streamrec.events import parse_event
from streamrec.settings import Settings
from streams import metrics
from streams.archive import ArchiveSink
from streams.dlq import DeadLetter, DeadLetterPublisher
from streams.loop_clock import LoopClock
from streams.processor import Message
from streams.sinks import FeatureSink, Sink
from streams.topics import ensure_topics, partition_count

log = logging.getLogger(__name__)

Role = Literal["all", "features", "archive"]
ROLES: tuple[Role, ...] = ("all", "features", "archive")


def consumer_group(settings: Settings, role: Role) -> str:
    """The archive role reads in a group of its own; the others share the features'."""
    return f"{settings.consumer_group}.archive" if role == "archive" else settings.consumer_group


class StreamWorker:
    def __init__(
        self, settings: Settings, stats_path: Path | None = None, role: Role = "all"
    ) -> None:
        self._s = settings
        self._topic = settings.events_topic
        self.role = role
        ensure_topics(
            settings.bootstrap,
            [settings.events_topic, settings.dlq_topic],
            settings.topic_partitions,
        )
        partitions = partition_count(settings.bootstrap, self._topic)
        self._features: FeatureSink | None = None
        self._dlq: DeadLetterPublisher | None = None
        sinks: list[Sink] = []
        if role in ("all", "features"):
            self._features = FeatureSink(settings, partitions)
            self._dlq = DeadLetterPublisher(settings.bootstrap, settings.dlq_topic, self._topic)
            sinks.append(self._features)
        if role in ("all", "archive"):
            sinks.append(
                ArchiveSink(
                    settings.archive_dir,
                    self._topic,
                    settings.archive_flush_rows,
                    settings.archive_flush_s,
                )
            )
        self._sinks = sinks
        self._batch_seconds = metrics.BATCH_SECONDS.labels(role)
        self._owned: set[int] = set()
        self._committed: dict[int, int] = {}
        self._stop = threading.Event()
        self._stats_path = stats_path
        self.handled = 0
        self.batches = 0
        self.clock = LoopClock()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": consumer_group(settings, role),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 6),
                "max.poll.interval.ms": max(60_000, settings.session_timeout_ms),
                "fetch.max.bytes": 64 * 1024 * 1024,
                # A fetch may wait this long for data. Kafka answers as soon as there is
                # any; tansu holds the fetch for the whole wait, so librdkafka's 500 ms
                # default cost 150-290 ms of event-to-feature freshness (measured).
                "fetch.wait.max.ms": min(settings.batch_max_wait_ms, 1000),
                "queued.max.messages.kbytes": 256 * 1024,
            }
        )

    # --- rebalance ---------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in tps]
        for sink in self._sinks:
            sink.assign(parts)
        for tp in tps:  # resume where the furthest-behind sink left off, not the group
            start = min(sink.checkpoint(tp.partition) for sink in self._sinks) + 1
            tp.offset = start if start > 0 else OFFSET_BEGINNING
        consumer.assign(tps)
        self._owned.update(parts)
        self._last_message = time.monotonic()  # idle time counts from joining the group
        log.info("assigned partitions %s (%s role)", sorted(parts), self.role)

    def _on_revoke(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in tps]
        owned = sorted(self._owned)
        for sink in self._sinks:
            sink.drain(owned)
        self._commit_kafka(sync=True)
        for sink in self._sinks:
            sink.revoke(parts)
        for p in parts:
            self._committed.pop(p, None)
        self._owned.difference_update(parts)
        log.info("revoked partitions %s", sorted(parts))

    # --- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_exit_s: float | None = None) -> None:
        """Consume until stopped (or idle for `idle_exit_s`, for scripted runs)."""
        # Each batch allocates ~100k short-lived containers while the user cache holds
        # millions of long-lived ones: with the default thresholds the cyclic collector
        # rescans that cache many times a second (a third of the worker's time, measured).
        # Almost nothing it builds forms cycles (a dead letter's traceback does), so
        # collect rarely instead of often.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        self._consumer.subscribe(
            [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        wait_s = self._s.batch_max_wait_ms / 1000
        clock = self.clock
        self._last_message = time.monotonic()
        log.info(
            "worker (%s role) consuming %s as group %s from %s",
            self.role,
            self._topic,
            consumer_group(self._s, self.role),
            self._s.bootstrap,
        )
        try:
            while not self._stop.is_set():
                # Take what the fetcher already holds; wait only when it holds nothing.
                msgs = self._consumer.consume(self._s.batch_max_events, 0)
                if not msgs:
                    msgs = self._consumer.consume(self._s.batch_max_events, wait_s)
                clock.lap("wait")
                if msgs:
                    self._last_message = time.monotonic()
                    self._handle(msgs)
                elif (
                    idle_exit_s is not None
                    and self._owned
                    and time.monotonic() - self._last_message > idle_exit_s
                ):
                    break
                owned = sorted(self._owned)
                for sink in self._sinks:
                    sink.tick(owned)
                    clock.lap(f"{sink.name} tick")
                self._commit_kafka(sync=False)
                clock.lap("commit")
                clock.maybe_log()
        finally:
            clock.close_window()
            self._shutdown()

    def _handle(self, msgs: list[Any]) -> None:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        batch: list[Message] = []
        dead: list[DeadLetter] = []
        s = self._s
        features = self._features  # dead letters go with the features role
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            p, offset, value = m.partition(), m.offset(), m.value()
            try:
                ev = parse_event(
                    value,
                    now_ms=now_ms,
                    max_bytes=s.max_event_bytes,
                    unknown_fields=s.unknown_fields,
                    max_future_skew_ms=s.max_future_skew_s * 1000,
                )
            except InvalidEvent as exc:
                ev = None
                if features is not None and features.processor.is_new(p, offset):
                    dead.append(DeadLetter(value, m.key(), p, offset, exc))
            batch.append((p, offset, ev))
        if self._dlq is not None:  # set with the features sink
            self._dlq.publish(dead)  # before the commit that moves past them
        clock = self.clock
        clock.lap("parse")
        for sink in self._sinks:
            sink.take(batch)
            clock.lap(f"{sink.name} take")
        clock.batch(len(batch))
        self.handled += len(batch)
        self.batches += 1
        metrics.EVENTS.labels("invalid").inc(len(dead))
        self._batch_seconds.observe(time.perf_counter() - started)

    def _commit_kafka(self, sync: bool) -> None:
        offsets = []
        for p in self._owned:
            done = min(sink.checkpoint(p) for sink in self._sinks)
            if done >= 0 and done + 1 > self._committed.get(p, 0):
                offsets.append(TopicPartition(self._topic, p, done + 1))
                self._committed[p] = done + 1
        if offsets and sync:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        elif offsets:
            self._consumer.commit(offsets=offsets, asynchronous=True)

    def _shutdown(self) -> None:
        try:
            owned = sorted(self._owned)
            for sink in self._sinks:
                sink.drain(owned)
            self._commit_kafka(sync=True)
        finally:
            self._consumer.close()
            for sink in self._sinks:
                sink.close()
            if self._stats_path:
                stats: dict[str, Any] = {
                    "messages": self.handled,
                    "batches": self.batches,
                    "phase_s": self.clock.totals,
                }
                if self._features is not None:
                    proc = self._features.processor
                    users, items = proc.freshness, proc.item_freshness
                    stats |= {
                        "lags_ms": users.lags_ms,
                        "counts": users.counts,
                        "item_lags_ms": items.lags_ms,
                        "item_counts": items.counts,
                    }
                self._stats_path.write_text(json.dumps(stats))
            log.info("worker stopped after %d messages in %d batches", self.handled, self.batches)


def install_signal_handlers(worker: StreamWorker) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
