"""A backdated simulated history written straight into the offline store.

For trying `streamrec retrain` (and tests of it) without streaming days of events first:
the same planted world as `streamrec simulate`, its sessions spread over the last days.
"""

from __future__ import annotations

import time

import pandas as pd

from offline.archive import write_events
from streamrec.settings import Settings
from streamrec.simulation import World, WorldParams

DAY_MS = 86_400_000


def history_frame(world: World, events: int, start_ms: int, span_ms: int) -> pd.DataFrame:
    """`events` simulated events as an archive frame (`ts_ms` instead of `ts`)."""
    frame = pd.DataFrame.from_records(list(world.history(events, start_ms, span_ms)))
    return frame.rename(columns={"ts": "ts_ms"})


def write_history(
    settings: Settings, *, users: int, items: int, events: int, days: float, seed: int
) -> int:
    """Write `events` simulated events ending now into the archive; save the world."""
    world = World(WorldParams(users=users, items=items, seed=seed))
    world.save(settings.data_dir / "simulation" / "world.npz")
    span = int(days * DAY_MS)
    start = int(time.time() * 1000) - span
    return write_events(settings.archive_dir, history_frame(world, events, start, span), "sim")
