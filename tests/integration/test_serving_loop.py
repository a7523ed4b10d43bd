"""The whole loop on the embedded stack: real broker, stream worker, Feast store, model, API.

History → retrain (real torch, real FAISS) → a stream worker process → the API on
uvicorn. A user clicks items of one latent group through POST /v1/events; within a
second their recommendations shift toward that group. Clicks on served items come back
to the bandit as rewards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from features.online_reader import open_reader
from features.online_state import SqliteStateReader, state_db_path
from features.repo import apply
from online.app import create_app
from online.demo import DEMO_WORLD
from online.loop import Api, group_share, seed_history, train_and_publish, wait_for_shift
from online.server import BackgroundServer
from streamrec.settings import Settings, load_settings
from streamrec.simulation import World, WorldParams
from streams.broker import free_port, stop_process
from tests.integration.helpers import spawn_worker

pytestmark = pytest.mark.integration

KEY = "test-key"


@dataclass
class Loop:
    settings: Settings
    world: World
    api: Api


@pytest.fixture(scope="module")
def loop(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("loop"),
        kafka_bootstrap=broker.bootstrap,
        events_topic=f"events-{tag}",
        dlq_topic=f"events-{tag}.dlq",
        consumer_group=f"group-{tag}",
        feast_project=f"p{tag}",
        session_timeout_ms=3000,
        batch_max_wait_ms=20,
        archive_flush_s=0.5,
        api_keys=KEY,
        candidates=100,
        refresh_s=0.2,
    )
    world = World(WorldParams(users=500, items=400, seed=11, **DEMO_WORLD))  # type: ignore[arg-type]
    seed_history(settings, world, 150_000, days=2)
    result = train_and_publish(settings, epochs=8)
    assert result.published
    apply(settings)
    worker = spawn_worker(settings)
    try:
        with BackgroundServer(create_app(settings), free_port()) as server:
            api = Api(server.url, KEY)
            _wait_until_worker_joined(settings, api)
            yield Loop(settings, world, api)
    finally:
        stop_process(worker, 10)
        if worker.stderr is not None:
            worker.stderr.close()


def _wait_until_worker_joined(settings: Settings, api: Api, timeout_s: float = 30) -> None:
    """A warm-up click becomes a feature row once the worker owns the partitions."""
    reader = open_reader(settings)
    api.click("warmup-user", ["i1"])
    deadline = time.monotonic() + timeout_s
    try:
        while reader.users(["warmup-user"])[0] is None:
            if time.monotonic() > deadline:
                raise AssertionError("the stream worker never wrote the warm-up user's features")
            time.sleep(0.1)
    finally:
        reader.close()


def test_recommendations_shift_toward_clicked_group_within_a_second(loop: Loop) -> None:
    """Each of the world's groups: a fresh user clicks 6 of its items; within a second the
    group's share of the top 20 rises by at least 0.2 (random share is ~1/6); over the
    next three answers every group keeps a rise of at least 0.1 and the average rise
    across groups is at least 0.35 (measured here: 0.48-0.56)."""
    world, api = loop.world, loop.api
    k = 20
    rises, waits = [], []
    for n, group in enumerate(range(world.params.groups)):
        user = f"probe-{n}"
        before = [i["item_id"] for i in api.recommend(user, k=k)["items"]]
        share_before = group_share(world, before, group)
        rng = np.random.default_rng(n)
        members = np.flatnonzero(world.item_group == group)
        clicked = [f"i{j}" for j in rng.choice(members, size=6, replace=False)]
        api.click(user, clicked)
        waited, _, _ = wait_for_shift(
            api, world, user, group, share_before, margin=0.2, k=k, timeout_s=3
        )
        # The first shifted answer may predate the last of the six clicks reaching the
        # store (one POST can span two worker batches); the next answers see them all.
        time.sleep(0.3)
        settled = []
        for _ in range(3):
            after = [i["item_id"] for i in api.recommend(user, k=k)["items"]]
            assert not set(clicked) & set(after), "clicked items must be excluded as seen"
            settled.append(group_share(world, after, group))
        rises.append(float(np.mean(settled)) - share_before)
        waits.append(waited)
    assert max(waits) <= 1.0, f"took {waits} s after the clicks (rises {rises})"
    assert min(rises) >= 0.1 and float(np.mean(rises)) >= 0.35, f"rises {rises}"


def test_clicks_on_served_items_come_back_as_rewards(loop: Loop) -> None:
    api, settings = loop.api, loop.settings
    reader = SqliteStateReader(state_db_path(settings))
    before = reader.counters()
    shown = api.recommend("reward-user", k=5)
    assert shown["policy"] == "thompson" and not shown["degraded"]
    assert all(0 < i["propensity"] <= 1 for i in shown["items"])
    api.click("reward-user", [shown["items"][0]["item_id"]], request_id=shown["request_id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = reader.counters()
        if now.get("policy.thompson.clicks", 0) > before.get("policy.thompson.clicks", 0):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the click never joined its impression")
    imps = now["policy.thompson.impressions"] - before.get("policy.thompson.impressions", 0)
    assert imps >= 5  # the five impressions the API logged
    assert now["clicks"] > before.get("clicks", 0)  # the bandit statistics got the reward
    # and serving picks the new parameters up within its refresh period
    time.sleep(3 * settings.refresh_s)
    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'streamrec_api_policy_ctr{policy="thompson"}' in metrics
    reader.close()


def test_ingest_requires_a_key_and_names_bad_fields(loop: Loop) -> None:
    url = loop.api.url
    now = int(time.time() * 1000)
    good = {"event_id": "x1", "event_type": "view", "user_id": "u1", "item_id": "i1", "ts": now}
    assert httpx.post(f"{url}/v1/events", json=[good]).status_code == 401
    assert httpx.post(f"{url}/v1/admin/reload").status_code == 401
    r = loop.api.send([good, {**good, "event_id": "x2", "event_type": "bogus"}])
    assert r.status_code == 207
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 1
    assert body["results"][1]["field"] == "event_type"
