"""The simulated world: deterministic per seed, a sane click model, valid events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.events import EVENT_TYPES, validate_event
from streamrec.simulation import World, WorldParams

SMALL = WorldParams(users=60, items=40, groups=4, dim=8, slate=6, seed=3)
TS = 1_790_000_000_000


def stream(params: WorldParams, n: int) -> list[dict]:
    return list(World(params).events(n))


def test_same_seed_same_events() -> None:
    a, b = stream(SMALL, 600), stream(SMALL, 600)
    assert a == b
    assert len({e["event_type"] for e in a}) >= 3  # not a degenerate stream


def test_different_seeds_differ() -> None:
    other = WorldParams(**{**SMALL.__dict__, "seed": 4})
    a, b = stream(SMALL, 300), stream(other, 300)
    key = [(e["event_type"], e["user_id"], e["item_id"]) for e in a]
    assert key != [(e["event_type"], e["user_id"], e["item_id"]) for e in b]
    assert {e["event_id"] for e in a}.isdisjoint(e["event_id"] for e in b)
    assert not np.allclose(World(SMALL).user_vec, World(other).user_vec)


def test_click_prob_in_unit_interval() -> None:
    w = World(SMALL)
    users, items, pos = np.meshgrid(np.arange(60), np.arange(40), np.arange(6), indexing="ij")
    p = w.click_prob(users.ravel(), items.ravel(), pos.ravel())
    assert p.shape == (60 * 40 * 6,)
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.isfinite(p))
    assert p.std() > 0.01  # depends on user, item and position


@pytest.mark.parametrize(("user", "item"), [(0, 0), (5, 17), (59, 39)])
def test_click_prob_decreases_with_position(user: int, item: int) -> None:
    w = World(SMALL)
    positions = np.arange(SMALL.slate)
    p = w.click_prob(np.full(SMALL.slate, user), np.full(SMALL.slate, item), positions)
    assert np.all(np.diff(p) < 0)
    assert p[0] / p[1] == pytest.approx(np.log2(3) / np.log2(2))


def test_click_prob_follows_affinity() -> None:
    w = World(SMALL)
    aff = w.user_vec @ w.item_vec.T
    u = 7
    best, worst = int(np.argmax(aff[u])), int(np.argmin(aff[u]))

    def logit(i: int) -> float:
        return (
            SMALL.affinity * aff[u, i]
            + SMALL.pop_weight * np.log(w.popularity[i] * SMALL.items)
            + SMALL.bias
        )

    expected = 1 / (1 + np.exp(-np.array([logit(best), logit(worst)])))
    got = w.click_prob(np.array([u, u]), np.array([best, worst]), np.array([0, 0]))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_save_load_round_trip(tmp_path: Path) -> None:
    w = World(SMALL)
    path = tmp_path / "sub" / "world.npz"
    w.save(path)
    loaded = World.load(path)
    assert loaded.params == SMALL
    for name in ("user_vec", "item_vec", "popularity", "user_group", "item_group", "activity"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(w, name))
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["user_vec"], w.user_vec)
    assert list(loaded.events(200)) == stream(SMALL, 200)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000])
def test_events_yields_exactly_n_valid_events(n: int) -> None:
    events = stream(SMALL, n)
    assert len(events) == n
    assert len({e["event_id"] for e in events}) == n
    for k, raw in enumerate(events):
        assert "ts" not in raw
        ev = validate_event({**raw, "ts": TS + k}, now_ms=TS + n)
        assert ev.event_type in EVENT_TYPES
        if ev.event_type == "impression":
            assert ev.position is not None and 0 <= ev.position < SMALL.slate
            assert ev.propensity is not None and 0 < ev.propensity <= 1
            assert ev.request_id is not None


def test_events_zero() -> None:
    assert stream(SMALL, 0) == []


def test_session_structure() -> None:
    w = World(SMALL)
    events = list(w.session(user=5, n_sessions=3))
    assert {e["user_id"] for e in events} == {"u5"}
    impressions = [e for e in events if e["event_type"] == "impression"]
    assert len(impressions) == 3 * SMALL.slate
    assert len({e["request_id"] for e in impressions}) == 3
    shown = {(e["request_id"], e["item_id"]) for e in impressions}
    for e in events:
        if e["event_type"] == "click":
            assert (e["request_id"], e["item_id"]) in shown


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        World(WorldParams(users=0))
    with pytest.raises(ValueError):
        World(WorldParams(items=5, slate=10))
