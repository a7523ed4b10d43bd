"""Drive the simulated world into Kafka at a given rate, stamping event time at send."""

from __future__ import annotations

import logging
import time

from rich.progress import Progress

from streamrec.events import validate_event
from streamrec.settings import Settings
from streamrec.simulation import World, WorldParams
from streams.producer import EventProducer
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def run_simulation(
    settings: Settings,
    *,
    users: int,
    items: int,
    events: int,
    rate: float,
    seed: int,
    progress: bool = True,
    world: World | None = None,
) -> tuple[int, dict[str, int]]:
    """Produce `events` simulated events; returns (delivered, last event time per user).

    `world` replaces the default world built from users/items/seed (the full-loop demo
    streams the same world its history was drawn from).
    """
    world = world or World(WorldParams(users=users, items=items, seed=seed))
    world.save(settings.data_dir / "simulation" / "world.npz")
    ensure_topics(
        settings.bootstrap, [settings.events_topic, settings.dlq_topic], settings.topic_partitions
    )
    producer = EventProducer(settings.bootstrap, settings.events_topic)
    started = time.monotonic()
    last_ts: dict[str, int] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("producing events", total=events)
        for n, ev in enumerate(world.events(events), start=1):
            ev["ts"] = int(time.time() * 1000)
            producer.send(validate_event(ev))
            last_ts[ev["user_id"]] = ev["ts"]
            if n % 500 == 0:
                bar.update(task, completed=n)
                if rate > 0:
                    ahead = n / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
    producer.flush()
    log.info(
        "simulated %d events in %.1fs (%d failed)",
        producer.delivered,
        time.monotonic() - started,
        producer.failed,
    )
    return producer.delivered, last_ts
