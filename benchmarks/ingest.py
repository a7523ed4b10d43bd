"""`streamrec bench ingest`: sustained events/s and event-to-feature freshness.

Setup (not timed): an embedded tansu broker on a free port, Redis (STREAMREC_REDIS_URL, or
a redis-server of its own) or SQLite, the Feast repository, the stream workers (by default
two that each fold features and archive; `archive_workers=N` runs the archive apart, in N
workers at lower CPU priority), and the simulated events generated in memory. Timed:
from the first produce until a marker event sent last to every partition is readable
through Feast's `get_online_features`. Partitions are consumed in order, so a visible
marker means every earlier event of its partition is in the online store.
`archive_done_s` is when the archive's checkpoints cover every marker too.

Freshness comes from the workers: for each feature row written, the time from the oldest
event folded into that row (event time, stamped at produce) to the write completing.
Each event lands in two rows, its user's and its item's, reported apart: user freshness
counts every event of a row at that worst lag (percentiles over events, upper bounds);
item freshness counts each item row once (the state keeps an item's oldest unwritten
event time, not how many wait). `freshness_p50_ms` / `freshness_p99_ms` are the worse
of the two. `worker_us_per_event` splits the feature workers' loop time by phase
(`streams/loop_clock.py`): wall time, so a phase that waits on Redis or for a core counts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer

from benchmarks.cpu import CpuMeter
from benchmarks.ingest_warm import warm_item_counters
from features.online_reader import read_features
from features.repo import apply
from streamrec.errors import StreamrecError
from streamrec.settings import load_settings
from streamrec.simulation import World, WorldParams
from streams.archive import read_checkpoint
from streams.broker import EmbeddedBroker, free_port, stop_process
from streams.demo import settings_env
from streams.local_redis import start_redis_server
from streams.sinks import open_state
from streams.topics import ensure_topics

log = logging.getLogger(__name__)
PARTITIONS = 4
ARCHIVE_NICE = 10  # archive workers yield the CPU to feature workers on a shared host


def _own_redis(stack: ExitStack, workdir: Path) -> tuple[str, int]:
    url, proc = start_redis_server(workdir)
    stack.callback(stop_process, proc)
    return url, proc.pid


def weighted_percentile(values: list[int], weights: list[int], q: float) -> float:
    if not values:
        return float("nan")
    order = np.argsort(values)
    v = np.asarray(values, dtype=float)[order]
    cum = np.cumsum(np.asarray(weights, dtype=float)[order])
    return float(v[np.searchsorted(cum, q * cum[-1])])


def _wait_ready(proc: subprocess.Popen[bytes], timeout_s: float) -> threading.Thread:
    """Wait until the worker owns partitions; keep draining its stderr afterwards."""
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None  # noqa: S101 - set by Popen(stderr=PIPE)
        for line in proc.stderr:
            if b"assigned partitions" in line:
                ready.set()
            if b"ERROR" in line or b"Traceback" in line:
                sys.stderr.write(line.decode(errors="replace"))

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    if not ready.wait(timeout_s):
        raise StreamrecError("stream worker did not join the group in time")
    return t


def _start_workers(
    stack: ExitStack, env: dict[str, str], workdir: Path, n: int, archivers: int
) -> tuple[list[tuple[subprocess.Popen[bytes], Path]], list[subprocess.Popen[bytes]]]:
    """Start n feature workers in one group and `archivers` archive workers (niced, in
    their own group); with no archive workers the n workers do both. Return once every
    one owns partitions: (feature workers with their stats files, archive workers)."""
    stats_paths = [workdir / f"stats-{k}.json" for k in range(n)]
    role = ["--role", "features"] if archivers else ["--role", "all"]
    commands = [[*role, "--stats-out", str(path)] for path in stats_paths]
    commands += [["--role", "archive", "--nice", str(ARCHIVE_NICE)]] * archivers
    procs = []
    for args in commands:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "worker", *args],
            env=env,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None  # noqa: S101 - set by Popen(stderr=PIPE)
        stack.callback(proc.stderr.close)  # runs after the stop below (LIFO)
        stack.callback(stop_process, proc, 5)
        procs.append(proc)
    for proc in procs:
        _wait_ready(proc, 60)
    return list(zip(procs[:n], stats_paths, strict=True)), procs[n:]


def _bodies(payloads: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, JSON without its closing brace) per event: serialised before the clock starts."""
    return [
        (ev["user_id"].encode(), json.dumps(ev, separators=(",", ":")).encode()[:-1])
        for ev in payloads
    ]


def _produce(producer: Producer, topic: str, bodies: list[tuple[bytes, bytes]], rate: int) -> None:
    """Send every event with `ts` stamped at its send time; at `rate` events/s (0: flat out).

    Only the timestamp is serialised here, so the bench's own CPU stays off the 2 cores
    the broker, Redis and the workers share (a real producer runs elsewhere).
    """
    started = time.time()
    ts_tail = b""
    for k, (key, body) in enumerate(bodies):
        if k % 256 == 0:
            if rate:
                ahead = started + k / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
            ts_tail = b',"ts":%d}' % int(time.time() * 1000)
            producer.poll(0)
        value = body + ts_tail
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.005)


def run_ingest_bench(
    *,
    events: int,
    users: int,
    items: int,
    store: str,
    workers: int = 2,
    rate: int = 0,
    archive_workers: int = 0,
    warm_hours: int = 24,
) -> dict[str, Any]:
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
        stack.callback(shutil.rmtree, workdir, True)
        broker = EmbeddedBroker(free_port()).start()
        stack.callback(broker.stop)
        redis_url = os.environ.get("STREAMREC_REDIS_URL") if store == "redis" else None
        redis_pid = None  # an outside Redis is not ours to meter
        if store == "redis" and not redis_url:
            redis_url, redis_pid = _own_redis(stack, workdir)
        tag = f"{os.getpid()}{int(time.time())}"
        settings = load_settings(
            data_dir=workdir / "data",
            kafka_bootstrap=broker.bootstrap,
            redis_url=redis_url,
            topic_partitions=PARTITIONS,
            consumer_group=f"bench-{tag}",
            feast_project=f"b{tag}",
            session_timeout_ms=3000,
            log_level="INFO",
        )
        ensure_topics(settings.bootstrap, [settings.events_topic, settings.dlq_topic], PARTITIONS)
        feast_store = apply(settings)

        world = World(WorldParams(users=users, items=items, seed=7))
        log.info("generating %d events", events)
        payloads = list(world.events(events))  # events come without `ts`
        warm_fields = 0
        if warm_hours:
            state = open_state(settings)
            try:
                warm_fields = warm_item_counters(
                    state, settings.events_topic, payloads, rate or 50_000, warm_hours
                )
            finally:
                state.close()
        bodies = _bodies(payloads)
        del payloads

        running, archivers = _start_workers(
            stack, settings_env(settings), workdir, workers, archive_workers
        )

        producer = Producer(
            {
                "bootstrap.servers": settings.bootstrap,
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        topic = settings.events_topic
        dumps = json.dumps
        cpu = CpuMeter(
            {
                "workers": [p.pid for p, _ in running],
                "archive workers": [p.pid for p in archivers] or None,
                "broker (tansu)": broker.pid,
                "redis-server": redis_pid,
            },
            client="bench client (producer, Feast poll)",
        )
        started = time.time()
        _produce(producer, topic, bodies, rate)
        markers = {}
        marker_offsets: dict[int, int] = {}

        def delivered(err: object, msg: Any) -> None:
            if err is None:
                marker_offsets[msg.partition()] = msg.offset()

        for p in range(PARTITIONS):
            uid = f"bench-marker-{p}"
            markers[uid] = int(time.time() * 1000)
            producer.produce(
                topic,
                dumps(
                    {
                        "event_id": f"marker-{tag}-{p}",
                        "user_id": uid,
                        "event_type": "view",
                        "item_id": "marker",
                        "ts": markers[uid],
                    }
                ).encode(),
                uid.encode(),
                partition=p,
                on_delivery=delivered,
            )
        producer.flush(120)
        produced_s = time.time() - started

        deadline = time.monotonic() + 600
        while True:
            rows = read_features(feast_store, "user", list(markers))
            if all((r["last_seen_ms"] or 0) >= markers[r["user_id"]] for r in rows):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in running):
                raise StreamrecError("features never became visible; see worker output")
            time.sleep(0.01)
        elapsed = time.time() - started
        cores = cpu.split(elapsed)
        if len(marker_offsets) < PARTITIONS:
            raise StreamrecError("the broker did not acknowledge every marker")
        archive_s = _wait_archived(settings.archive_dir, topic, marker_offsets, started)

        samples: dict[str, tuple[list[int], list[int]]] = {"user": ([], []), "item": ([], [])}
        messages = batches = 0
        phase_s: dict[str, float] = {}
        for proc, stats_path in running:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            stats = json.loads(stats_path.read_text())
            messages += stats["messages"]
            batches += stats["batches"]
            for phase, secs in stats["phase_s"].items():
                phase_s[phase] = phase_s.get(phase, 0.0) + secs
            for kind, prefix in (("user", ""), ("item", "item_")):
                samples[kind][0].extend(stats[f"{prefix}lags_ms"])
                samples[kind][1].extend(stats[f"{prefix}counts"])
        fresh = {
            f"{kind}_freshness_{name}_ms": round(weighted_percentile(lags, counts, q), 1)
            for kind, (lags, counts) in samples.items()
            for name, q in (("p50", 0.50), ("p99", 0.99))
        }
        lags = samples["user"][0] + samples["item"][0]
        return {
            "events": events,
            "events_per_s": round((events + PARTITIONS) / elapsed),
            "elapsed_s": round(elapsed, 2),
            "produce_s": round(produced_s, 2),
            "freshness_p50_ms": max(fresh["user_freshness_p50_ms"], fresh["item_freshness_p50_ms"]),
            "freshness_p99_ms": max(fresh["user_freshness_p99_ms"], fresh["item_freshness_p99_ms"]),
            "freshness_max_ms": max(lags) if lags else None,
            "archive_done_s": round(archive_s, 2),
            **fresh,
            "user_rows_written": len(samples["user"][0]),
            "item_rows_written": len(samples["item"][0]),
            "mean_batch_events": round(messages / max(batches, 1)),
            "worker_us_per_event": {  # wall time in each loop phase, waiting left out
                phase: round(secs * 1e6 / max(messages, 1), 2)
                for phase, secs in sorted(phase_s.items(), key=lambda kv: -kv[1])
                if phase != "wait"
            },
            "online_store": store,
            "broker": "tansu (embedded)",
            "partitions": PARTITIONS,
            "workers": workers,
            "archive_workers": archive_workers,
            "warm_hours": warm_hours,
            "warm_item_fields": warm_fields,
            "offered_rate": rate or "flat out",
            "users": users,
            "items": items,
            "cpu_count": os.cpu_count(),
            "cores_used": cores,
        }


def _archived(archive: Path, topic: str, partition: int) -> int:
    try:
        return read_checkpoint(archive, topic, partition)
    except (OSError, ValueError):  # replaced mid-read
        return -1


def _wait_archived(archive: Path, topic: str, last: dict[int, int], started: float) -> float:
    """Seconds from the first produce until every partition's archive checkpoint covers
    its marker (the archive trails the features: it flushes on rows or seconds)."""
    deadline = time.monotonic() + 600
    while any(_archived(archive, topic, p) < offset for p, offset in last.items()):
        if time.monotonic() > deadline:
            raise StreamrecError("the archive never caught up; see worker output")
        time.sleep(0.02)
    return time.time() - started
