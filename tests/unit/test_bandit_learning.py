"""BanditStats, the bandit's additive statistics: the stream workers' fast path (per
impression, per click, merged deltas) against batch least-squares references, and their
JSON form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.bandit import D
from models.bandit_learning import BanditStats
from streamrec.errors import DataError


def log_of(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, D))
    theta = rng.normal(size=D)
    return X, (rng.random(m) < 1 / (1 + np.exp(-X @ theta))).astype(float)


def test_stats_add_and_merge_equal_batch_least_squares() -> None:
    X, r = log_of(500, seed=1)
    left, right = BanditStats.zeros(), BanditStats.zeros()
    left.add(X[:100], r[:100])  # a batch
    for row, reward in zip(X[100:300], r[100:300], strict=True):
        left.add(row, 0.0)  # as the stream workers do: impression, then the click
        if reward:
            left.add_reward(row)
    right.add(X[300:], r[300:])
    left.merge(right)
    np.testing.assert_allclose(left.A, X.T @ X, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(left.b, X.T @ r, rtol=1e-12, atol=1e-9)
    assert (left.n, left.clicks) == (500, int(r.sum()))

    ridge, noise = 2.0, 0.3
    mean, cov = left.posterior(ridge, noise)
    # Ridge regression as an augmented least-squares problem, solved by lstsq.
    aug_X = np.vstack([X, np.sqrt(ridge) * noise * np.eye(D)])
    aug_r = np.concatenate([r, np.zeros(D)])
    np.testing.assert_allclose(mean, np.linalg.lstsq(aug_X, aug_r, rcond=None)[0], atol=1e-10)
    np.testing.assert_allclose(
        np.linalg.inv(cov), ridge * np.eye(D) + X.T @ X / noise**2, rtol=1e-9
    )


def test_posterior_follows_in_place_updates() -> None:
    stats = BanditStats.zeros()
    X, r = log_of(200, seed=2)
    stats.add(X, 0.0)
    before = stats.posterior()[0]
    stats.b += X.T @ r  # the workers' click path writes b in place
    after = stats.posterior()[0]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, BanditStats(stats.A.copy(), stats.b.copy()).posterior()[0])


def test_stats_dict_round_trip_through_json() -> None:
    stats = BanditStats.zeros()
    X, r = log_of(50, seed=3)
    stats.add(X, r)
    back = BanditStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(back.A, stats.A)
    np.testing.assert_array_equal(back.b, stats.b)
    assert (back.n, back.clicks) == (stats.n, stats.clicks) == (50, int(r.sum()))


GOOD = BanditStats.zeros().to_dict()


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD, "A": [[0.0] * D] * (D - 1)},
        {**GOOD, "b": [0.0] * (D + 1)},
        {**GOOD, "A": [[0.0] * D] * (D - 1) + [[0.0] * (D - 1) + ["x"]]},
        {**GOOD, "b": [float("nan")] * D},
        {**GOOD, "n": -1},
        {**GOOD, "clicks": True},
        {**GOOD, "n": 1.5},
        {**GOOD, "features": ["bias"]},
        {k: v for k, v in GOOD.items() if k != "b"},
    ],
)
def test_from_dict_rejects_bad_input(bad: dict[str, object]) -> None:
    with pytest.raises(DataError):
        BanditStats.from_dict(bad)


@pytest.mark.parametrize(
    ("x", "reward"),
    [(np.zeros(D - 1), 0.0), (np.zeros((3, D)), np.zeros(2)), (np.full(D, np.inf), 0.0)],
)
def test_stats_add_rejects_bad_shapes(x: np.ndarray, reward: object) -> None:
    with pytest.raises(DataError):
        BanditStats.zeros().add(x, reward)  # type: ignore[arg-type]
