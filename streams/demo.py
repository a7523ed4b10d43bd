"""`streamrec demo`: the whole stream on the embedded default, ending with real features.

Starts the embedded broker (unless STREAMREC_KAFKA_BOOTSTRAP points at a real one),
applies the Feast repository, starts a stream worker process, streams a simulated world
into Kafka, waits until the features of the last active users are readable from the
online store, and prints them. Everything lives under `{data_dir}/demo`, wiped first:
the embedded broker keeps nothing, so stream state from an earlier run must not survive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack

from rich.console import Console
from rich.table import Table

from features.online_reader import read_features
from features.repo import apply
from streamrec.errors import StreamrecError
from streamrec.settings import Settings
from streams.broker import EmbeddedBroker, free_port, stop_process
from streams.simulate import run_simulation


def settings_env(settings: Settings) -> dict[str, str]:
    """STREAMREC_* variables that reproduce these settings in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"STREAMREC_{name.upper()}"] = str(value)
    return env


def start_worker(settings: Settings, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamrec.cli", "worker", *extra], env=settings_env(settings)
    )


def wait_for_features(settings: Settings, expected: dict[str, int], timeout_s: float) -> float:
    """Poll Feast until every user's last_seen_ms reaches the expected time; seconds waited."""
    from features.repo import open_store

    store = open_store(settings)
    started = time.monotonic()
    ids = list(expected)
    while True:
        rows = read_features(store, "user", ids)
        if all((r["last_seen_ms"] or 0) >= expected[r["user_id"]] for r in rows):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise StreamrecError(f"features of {ids} not visible after {timeout_s}s")
        time.sleep(0.05)


def with_embedded_broker(
    stack: ExitStack, settings: Settings, console: Console, **updates: object
) -> Settings:
    """Settings with `updates`, on a fresh embedded broker unless Kafka is configured.

    The broker stops when `stack` closes.
    """
    if settings.kafka_bootstrap is None:
        b = EmbeddedBroker(free_port(), log_path=None).start()
        stack.callback(b.stop)
        updates["embedded_broker_port"] = b.port
        console.print(f"[bold]1.[/] embedded Kafka-protocol broker (tansu) on {b.bootstrap}")
    return settings.model_copy(update=updates)


def run_demo(settings: Settings, *, events: int, rate: float, users: int, items: int) -> None:
    console = Console()
    root = settings.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)
    with ExitStack() as stack:
        s = with_embedded_broker(stack, settings, console, data_dir=root)
        apply(s)
        console.print(
            f"[bold]2.[/] feature repository applied at {s.feature_repo_dir} "
            f"({'redis' if s.redis_url else 'sqlite'} online store)"
        )
        proc = start_worker(s)
        stack.callback(stop_process, proc)
        console.print(f"[bold]3.[/] stream worker started (pid {proc.pid})")
        console.print(f"[bold]4.[/] streaming {events} simulated events at {rate:.0f}/s")
        _, last_ts = run_simulation(s, users=users, items=items, events=events, rate=rate, seed=0)
        recent = sorted(last_ts, key=last_ts.__getitem__)[-5:]
        waited = wait_for_features(s, {u: last_ts[u] for u in recent}, timeout_s=120)
        console.print(
            f"[bold]5.[/] features of the last active users visible "
            f"{waited * 1000:.0f} ms after the last event was delivered"
        )
        _print_features(console, s, recent)


def _print_features(console: Console, s: Settings, users: list[str]) -> None:
    from features.repo import open_store

    store = open_store(s)
    table = Table(title="real-time user features, read back through Feast")
    for col in (
        "user",
        "recent items",
        "impr 1h",
        "clicks 1h",
        "carts 24h",
        "purch 24h",
        "last seen",
    ):
        table.add_column(col)
    item_ids: list[str] = []
    for r in read_features(store, "user", users):
        recent = r["recent_items"] or []
        item_ids.extend(i for i in recent[:2] if i not in item_ids)
        age = time.time() - r["last_seen_ms"] / 1000
        table.add_row(
            r["user_id"],
            " ".join(recent[:5]) + (" …" if len(recent) > 5 else ""),
            str(r["n_impression_1h"]),
            str(r["n_click_1h"]),
            str(r["n_add_to_cart_24h"]),
            str(r["n_purchase_24h"]),
            f"{age:.1f}s ago",
        )
    console.print(table)
    items = Table(title="real-time item features")
    for col in ("item", "impr 1h", "clicks 1h", "purch 24h", "smoothed CTR", "popularity 24h"):
        items.add_column(col)
    for r in read_features(store, "item", item_ids[:6]):
        items.add_row(
            r["item_id"],
            str(r["impressions_1h"]),
            str(r["clicks_1h"]),
            str(r["purchases_24h"]),
            f"{r['ctr_smoothed']:.3f}",
            str(r["popularity_24h"]),
        )
    console.print(items)
