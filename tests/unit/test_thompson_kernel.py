"""The compiled Thompson kernels against their numpy reference (`compiled=False`): the same
draws must give the same slate, including the exact-Beta fallback, ties and tiny slates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models import thompson_kernel
from models.bandit import Candidates, ThompsonPolicy
from tests.unit.test_bandit import STATS, random_candidates


def test_numba_is_installed() -> None:
    # numba is a project dependency (only the GPU test machines, which run a script of
    # their own, lack it): serving must run the compiled kernels.
    assert thompson_kernel.AVAILABLE
    assert ThompsonPolicy(STATS).compiled


def _same_slate(cands: Candidates, k: int, seed: int, **kw: Any) -> None:
    policy = ThompsonPolicy(STATS, **kw)
    policy.compiled = True  # the kernels' logic even where numba is missing (as Python)
    fast = policy.rank(cands, k, np.random.default_rng(seed))
    ref = ThompsonPolicy(STATS, compiled=False, **kw).rank(cands, k, np.random.default_rng(seed))
    np.testing.assert_array_equal(fast.order, ref.order)
    np.testing.assert_array_equal(fast.propensity, ref.propensity)
    np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"exploration": 3.0, "samples": 64},
        {"exploration": 0.2, "samples": 8},
        {"shortlist": False},
        # a = 0.2 < 1: CTRs are drawn by exact Beta instead of Paulson quantiles
        {"ctr_prior_mean": 0.01, "ctr_prior_strength": 20.0},
    ],
)
def test_kernel_gives_the_reference_slate(kw: dict[str, Any]) -> None:
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n, k = int(rng.integers(1, 160)), int(rng.integers(0, 14))
        cands, _ = random_candidates(n, rng)
        _same_slate(cands, k, seed, **kw)


def test_kernel_breaks_ties_like_the_reference() -> None:
    # Cold start: many candidates with identical features (no retrieval score, no stats).
    rng = np.random.default_rng(7)
    cands, _ = random_candidates(40, rng)
    x = np.repeat(cands.x[:4], 10, axis=0)
    clicks, imps = np.repeat(cands.clicks[:4], 10), np.repeat(cands.impressions[:4], 10)
    tied = Candidates([f"i{j}" for j in range(40)], x, clicks, imps)
    for seed in range(20):
        _same_slate(tied, 10, seed)


def test_read_only_inputs_and_int_exploration_take_the_warmed_types() -> None:
    cands, _ = random_candidates(50, np.random.default_rng(3))
    cands.x.flags.writeable = False
    thompson_kernel.warm()
    before = {len(f.signatures) for f in (thompson_kernel.shortlist, thompson_kernel.slate)}
    ThompsonPolicy(STATS, exploration=1).rank(cands, 5, np.random.default_rng(0))
    after = {len(f.signatures) for f in (thompson_kernel.shortlist, thompson_kernel.slate)}
    assert after == before == {1}  # no second compiled version
