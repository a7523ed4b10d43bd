"""The API under faults and experiments: Redis stopped, broker stopped, model swapped
under load, A/B variants routed.

Each test runs the real API (uvicorn in a thread) over a real published model, and stops
a real dependency (its own redis-server, its own tansu broker) underneath it.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from features.online_state import BoardEntry, state_db_path
from features.repo import apply
from models.registry import Registry
from offline.retrain import retrain
from online.app import create_app
from online.experiments import assign
from online.loop import quick_retrain_config, seed_history
from online.recommender import RecRequest
from online.server import BackgroundServer
from online.services import Services, build_services
from streamrec.events import Event, parse_event
from streamrec.settings import Settings, load_settings
from streamrec.simulation import World, WorldParams
from streams.broker import EmbeddedBroker, free_port, stop_process
from streams.local_redis import start_redis_server
from streams.state_sqlite import SqliteStreamState
from tests.conftest import _missing

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose registry holds two published versions (v1, then v2 current)."""
    root = tmp_path_factory.mktemp("faults")
    settings = load_settings(data_dir=root)
    world = World(WorldParams(users=200, items=150, seed=4, affinity=6.0, zipf=0.5, groups=6))
    seed_history(settings, world, 30_000, days=1)
    reg = Registry(settings.registry_dir)
    cfg = quick_retrain_config(epochs=2)
    first = retrain(settings.archive_dir, reg, cfg)
    second = retrain(settings.archive_dir, reg, cfg, force=True)
    assert first.published and second.published and reg.current() == second.version
    apply(settings)  # the SQLite online store (empty: every user is a cold start)
    return root


def _serve(settings: Settings, kafka: bool = False) -> tuple[BackgroundServer, object]:
    services = build_services(settings, kafka=kafka)
    services.start()
    server = BackgroundServer(create_app(settings, services), free_port()).start()
    return server, services


def test_redis_stopped_gives_degraded_200(data_dir: Path, tmp_path: Path) -> None:
    try:
        url, proc = start_redis_server(tmp_path)
    except Exception as exc:
        _missing(f"redis-server ({exc})")
    settings = load_settings(data_dir=data_dir, redis_url=url, api_auth="off", refresh_s=0.2)
    server, services = _serve(settings)
    try:
        ok = httpx.get(f"{server.url}/v1/recommendations/u1?k=5").json()
        assert ok["degraded"] is False and len(ok["items"]) == 5
        stop_process(proc, 10)
        started = time.monotonic()
        r = httpx.get(f"{server.url}/v1/recommendations/u1?k=5")
        elapsed = time.monotonic() - started
        body = r.json()
        assert r.status_code == 200
        assert body["degraded"] is True and body["reason"] == "store_down"
        assert body["policy"] == "popularity" and len(body["items"]) == 5
        assert elapsed < 2.0  # a dead store costs one short timeout, not a hang
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'streamrec_api_degraded_total{cause="store_down"}' in metrics
    finally:
        server.stop()
        services.stop()  # type: ignore[attr-defined]
        stop_process(proc, 5)


def test_broker_stopped_keeps_serving_and_counts_dropped_impressions(
    data_dir: Path, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log")
    try:
        broker.start()
    except Exception as exc:
        _missing(f"the embedded broker ({exc})")
    settings = load_settings(
        data_dir=data_dir,
        kafka_bootstrap=broker.bootstrap,
        api_auth="off",
        impression_buffer=30,
    )
    server, services = _serve(settings, kafka=True)
    try:
        assert httpx.get(f"{server.url}/v1/recommendations/u1?k=5").status_code == 200
        broker.stop()
        slowest = 0.0
        for n in range(20):
            started = time.monotonic()
            r = httpx.get(f"{server.url}/v1/recommendations/u{n}?k=5")
            slowest = max(slowest, time.monotonic() - started)
            assert r.status_code == 200 and len(r.json()["items"]) == 5
        assert slowest < 1.0  # publishing never blocks the response
        dropped = services.impressions.dropped  # type: ignore[attr-defined]
        assert dropped > 0  # 100 impressions into a buffer of 30: the rest counted, not hung
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'streamrec_api_outbox_events_total{fate="dropped",kind="impression"}' in metrics
    finally:
        server.stop()
        services.stop()  # type: ignore[attr-defined]
        broker.stop()


def test_model_swap_under_load_fails_no_request(data_dir: Path) -> None:
    # the watcher would race the explicit reloads below: poll rarely
    settings = load_settings(data_dir=data_dir, api_auth="off", reload_poll_s=3600)
    reg = Registry(settings.registry_dir)
    server, services = _serve(settings)
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    degraded = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal degraded
        with httpx.Client(base_url=server.url) as client:
            n = 0
            while not stop.is_set():
                r = client.get(f"/v1/recommendations/u{n % 50}?k=10")
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    body = r.json()
                    versions[body["model_version"]] += 1
                    degraded += body["degraded"]
                n += 1

    clients = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in clients:
            t.start()
        for _ in range(3):
            time.sleep(0.3)
            reg.rollback()
            assert httpx.post(f"{server.url}/v1/admin/reload").json()["changed"] is True
            time.sleep(0.3)
            latest = reg.list()[-1].name
            reg.promote(latest, reason="swap test")
            assert httpx.post(f"{server.url}/v1/admin/reload").json()["changed"] is True
        time.sleep(0.3)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=10)
        server.stop()
        services.stop()  # type: ignore[attr-defined]
    total = sum(statuses.values())
    assert total > 100
    assert statuses == Counter({200: total}), statuses
    assert degraded == 0
    assert len(versions) == 2  # both versions answered, nothing else


class _CapturedImpressions:
    """Collects what the recommender would send to Kafka (Kafka itself: test_serving_loop)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def offer_encoded(self, messages: list[tuple[bytes, bytes]]) -> int:
        # The stream workers' own validator: impressions must pass contract v1 as sent.
        for value, key in messages:
            ev = parse_event(value)
            assert key == ev.user_id.encode()
            self.events.append(ev)
        return 0

    def close(self) -> None:
        return None


def test_experiment_variants_are_sticky_and_logged(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "experiments.toml"
    config.write_text(
        """
[[experiments]]
name = "rerank"
salt = "s1"
[[experiments.variants]]
name = "A"
share = 0.5
policy = "greedy"
[[experiments.variants]]
name = "B"
share = 0.5
policy = "random"
"""
    )
    settings = load_settings(data_dir=data_dir, api_auth="off", experiments_file=config)
    services = build_services(settings, kafka=False)
    captured = _CapturedImpressions()
    services.recommender._impressions = captured  # type: ignore[assignment]
    services.start()
    try:
        experiment = services.experiments.get("rerank")
        seen: dict[str, set[str]] = {}
        for n in range(60):
            user = f"u{n % 20}"
            answer = services.recommender.recommend(RecRequest(user, 5))
            want = assign(experiment, user)
            assert answer.policy == want.policy and not answer.degraded
            seen.setdefault(user, set()).add(answer.policy)
        assert all(len(p) == 1 for p in seen.values())  # sticky
        assert {p for ps in seen.values() for p in ps} == {"greedy", "random"}
        for ev in captured.events:
            assert ev.context["experiment"] == "rerank"
            assert ev.context["variant"] == assign(experiment, ev.user_id).name
            assert ev.context["policy"] in ("greedy", "random")
        assert len(captured.events) == 60 * 5
    finally:
        services.stop()


def _services_over_board(data_dir: Path, tmp_path: Path, board: list[BoardEntry]) -> Services:
    """Started services on a copy of the trained model, with `board` as the item board."""
    settings = load_settings(data_dir=tmp_path / "d", api_auth="off", refresh_s=3600)
    shutil.copytree(data_dir / "registry", settings.registry_dir)
    shutil.copytree(data_dir / "feature_repo", settings.feature_repo_dir)
    state = SqliteStreamState(state_db_path(settings))
    state.write_board(board)
    state.close()
    services = build_services(settings, kafka=False)
    services.start()
    return services


def test_cold_users_get_trending_items_and_new_items_win_exploration_slots(
    data_dir: Path, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    day_ago = now - 86_400_000
    hot = [BoardEntry(f"i{j}", 1000.0 - j, 0.05, 5.0, 100.0, now, day_ago) for j in range(30)]
    new = BoardEntry("brand-new-item", 1.0, 0.05, 0.0, 0.0, now, now)  # unknown to the model
    services = _services_over_board(data_dir, tmp_path, [*hot, new])
    try:
        trending = {e.item_id for e in hot}
        shown_new = 0
        for n in range(200):
            answer = services.recommender.recommend(RecRequest(f"cold-{n}", 10))
            items = [i.item_id for i in answer.items]
            assert not answer.degraded and answer.policy == "thompson"
            assert set(items) <= trending | {"brand-new-item"}
            shown_new += "brand-new-item" in items
        assert 0 < shown_new < 200  # explored, not always forced in
    finally:
        services.stop()


def test_a_cold_user_gets_k_items_while_the_board_knows_only_one(
    data_dir: Path, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    board = [BoardEntry("i7", 3.0, 0.05, 1.0, 10.0, now, now)]
    services = _services_over_board(data_dir, tmp_path, board)
    try:
        answer = services.recommender.recommend(RecRequest("cold-user", 10))
        items = [i.item_id for i in answer.items]
        assert not answer.degraded and len(items) == len(set(items)) == 10
        assert set(items) - {"i7"}  # topped up from the model's popular items
    finally:
        services.stop()
