"""`streamrec demo`: the whole loop on the embedded default, narrated.

simulate history → retrain (two-tower + FAISS, gated, published) → broker + stream worker
→ live simulated stream → the API → a user clicks items of one latent group → their
recommendations move toward that group within a second → a click on a served item comes
back to the bandit as a reward. Everything lives under `{data_dir}/demo`, wiped first.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from features.online_state import open_state_reader
from features.repo import apply
from online.app import create_app
from online.loop import Api, group_of, group_share, seed_history, train_and_publish, wait_for_shift
from online.server import BackgroundServer
from streamrec.settings import Settings
from streamrec.simulation import World, WorldParams
from streams.broker import free_port, stop_process
from streams.demo import start_worker, wait_for_features, with_embedded_broker
from streams.simulate import run_simulation

# A world whose tastes dominate its popularity skew, so a small model learns them fast.
DEMO_WORLD = {"affinity": 6.0, "zipf": 0.5, "pop_weight": 0.1, "groups": 6}


def run_full_demo(
    settings: Settings,
    *,
    users: int,
    items: int,
    history: int,
    events: int,
    rate: float,
    serve_s: float = 0.0,
) -> None:
    console = Console()
    root = settings.data_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)
    world = World(WorldParams(users=users, items=items, seed=0, **DEMO_WORLD))  # type: ignore[arg-type]
    with ExitStack() as stack:
        s = with_embedded_broker(stack, settings, console, data_dir=root, refresh_s=0.25)

        console.print(f"[bold]2.[/] {history:,} events of simulated history → offline archive")
        seed_history(s, world, history, days=3)
        started = time.monotonic()
        result = train_and_publish(s)
        m = result.summary["metrics"]
        console.print(
            f"[bold]3.[/] nightly retrain: {result.version} "
            f"{'published' if result.published else 'REFUSED'} in {time.monotonic() - started:.0f}s"
            f" — recall@50 two-tower {m['two_tower']['recall@50']:.3f}"
            f" vs popularity {m['popularity']['recall@50']:.3f}"
        )

        apply(s)
        proc = start_worker(s)
        stack.callback(stop_process, proc)
        console.print(
            f"[bold]4.[/] feature repository applied; stream worker started (pid {proc.pid})"
        )
        console.print(f"[bold]5.[/] streaming {events:,} live simulated events at {rate:.0f}/s")
        _, last_ts = run_simulation(
            s, users=users, items=items, events=events, rate=rate, seed=0, world=world
        )
        recent = sorted(last_ts, key=last_ts.__getitem__)[-3:]
        wait_for_features(s, {u: last_ts[u] for u in recent}, timeout_s=120)

        server = BackgroundServer(create_app(s), free_port()).start()
        stack.callback(server.stop)
        api = Api(server.url, s.api_keys.split(",")[0] if s.api_keys else None)
        console.print(
            f"[bold]6.[/] API serving on {server.url} (OpenAPI docs at {server.url}/docs)"
        )
        _shift(console, api, world)
        _reward(console, api, s)
        if serve_s > 0:
            console.print(f"API stays up for {serve_s:.0f}s: try {server.url}/docs")
            time.sleep(serve_s)


def _table(title: str, world: World, answer: dict[str, Any], group: int) -> Table:
    t = Table(title=title)
    for col in ("#", "item", "latent group", "score", "propensity"):
        t.add_column(col)
    items = [i["item_id"] for i in answer["items"]]
    for pos, (item, g) in enumerate(zip(answer["items"], group_of(world, items), strict=True)):
        mark = "[bold green]" if g == group else ""
        t.add_row(
            str(pos),
            item["item_id"],
            f"{mark}{g}",
            f"{item['score']:.3f}",
            f"{item['propensity']:.2f}",
        )
    return t


def _shift(console: Console, api: Api, world: World) -> None:
    user, k = "demo-user", 10
    before = api.recommend(user, k=k)
    shares = [
        group_share(world, [i["item_id"] for i in before["items"]], g)
        for g in range(world.params.groups)
    ]
    group = int(np.argmin(shares))
    console.print(
        _table(
            f"{user} before any click (cold start: trending + exploration, "
            f"policy {before['policy']})",
            world,
            before,
            group,
        )
    )
    members = np.flatnonzero(world.item_group == group)
    clicked = [f"i{j}" for j in np.random.default_rng(0).choice(members, 6, replace=False)]
    api.click(user, clicked)
    waited, share, after = wait_for_shift(api, world, user, group, shares[group], 0.3, k)
    console.print(
        f"[bold]7.[/] {user} clicked {len(clicked)} items of latent group {group}: "
        f"{' '.join(clicked)}"
    )
    console.print(_table(f"{user} {waited * 1000:.0f} ms after the clicks", world, after, group))
    console.print(
        f"share of group {group} in the top {k}: {shares[group]:.0%} → {share:.0%} "
        f"(stream → online store → user tower → FAISS → bandit, in {waited * 1000:.0f} ms)"
    )


def _reward(console: Console, api: Api, s: Settings) -> None:
    answer = api.recommend("reward-user", k=5)
    item = answer["items"][0]["item_id"]
    api.click("reward-user", [item], request_id=answer["request_id"])
    reader = open_state_reader(s)
    deadline = time.monotonic() + 15
    counters: dict[str, float] = {}
    while time.monotonic() < deadline:
        counters = reader.counters()
        if counters.get(f"policy.{answer['policy']}.clicks", 0) >= 1:
            break
        time.sleep(0.1)
    reader.close()
    rows = sorted(k for k in counters if k.startswith("policy."))
    console.print(
        f"[bold]8.[/] reward-user clicked {item} from request {answer['request_id'][:8]}…; "
        "the stream worker joined it to its impression:"
    )
    for key in rows:
        console.print(f"    {key} = {counters[key]:.0f}")
    metrics = httpx.get(f"{api.url}/metrics").text
    lines = [
        ln for ln in metrics.splitlines() if ln.startswith("streamrec_api_stage_seconds_count")
    ]
    console.print(
        "    "
        + "; ".join(ln.split("{")[1].replace('"}', "").replace('stage="', "") for ln in lines)
    )
