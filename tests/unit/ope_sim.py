"""A seeded slate-bandit simulator whose policies' true values are known exactly.

Each request has `m` candidate items with bandit features x (bias first, then six
N(0, 1) columns, in the order of models.bandit.FEATURE_NAMES); a Plackett-Luce or
deterministic policy fills `k` slots. A click at slot j on item a happens with
probability sigmoid(x_a·BETA + GAMMA[j]). Every policy's slot marginals are computed
exactly by enumerating the m!/(m-k)! ordered slates, so the truth of a policy, the mean of
Σ_a π(a at j)·q(a, j) over slots and contexts, has no Monte Carlo error beyond the
context sample (`true_value` averages 100k fresh contexts: standard error ≈ 2e-4).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

D = 7
BETA = np.array([-1.6, 0.6, 0.0, 0.4, 0.0, 0.0, 0.9])
GAMMA = np.array([0.0, -0.4, -0.8, -1.1, -1.3])


@dataclass(frozen=True)
class Policy:
    """Scores x·weights; temperature 0 = deterministic top-k, else Plackett-Luce."""

    weights: np.ndarray
    temperature: float = 1.0


LOGGER = Policy(np.array([0.0, -0.5, 0.0, 0.0, 0.6, 0.0, -0.7]), 1.0)  # prefers poor items
UNIFORM = Policy(np.zeros(D), 1.0)
SOFT_GOOD = Policy(BETA * np.array([0, 1, 1, 1, 1, 1, 1]), 1.0)
GREEDY_GOOD = Policy(BETA * np.array([0, 1, 1, 1, 1, 1, 1]), 0.0)


def contexts(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, m, D))
    x[..., 0] = 1.0
    return x


def click_prob(x: np.ndarray, k: int) -> np.ndarray:
    """q[n, m, k]: P(click) of each candidate at each slot."""
    z = (x @ BETA)[..., None] + GAMMA[:k]
    return 1.0 / (1.0 + np.exp(-z))


def slates(m: int, k: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(m), k)), dtype=np.int64)


def slate_probs(policy: Policy, x: np.ndarray, k: int) -> np.ndarray:
    """P[n, T] of each ordered slate of `slates(m, k)`."""
    m = x.shape[1]
    tup = slates(m, k)
    scores = x @ policy.weights
    if policy.temperature == 0:
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        hit = (tup[None, :, :] == best[:, None, :]).all(axis=2)
        return hit.astype(np.float64)
    e = np.exp((scores - scores.max(axis=1, keepdims=True)) / policy.temperature)
    remaining = e.sum(axis=1, keepdims=True)
    prob = np.ones((x.shape[0], tup.shape[0]))
    for j in range(k):  # slot by slot: pick tup[:, j] among what is left
        chosen = e[:, tup[:, j]]
        prob *= chosen / remaining
        remaining = remaining - chosen
    return prob


def marginals(policy: Policy, x: np.ndarray, k: int) -> np.ndarray:
    """[n, m, k]: P(candidate a at slot j)."""
    n, m, _ = x.shape
    tup = slates(m, k)
    onehot = np.zeros((tup.shape[0], m, k))
    onehot[np.arange(tup.shape[0])[:, None], tup, np.arange(k)[None, :]] = 1.0
    return (slate_probs(policy, x, k) @ onehot.reshape(tup.shape[0], m * k)).reshape(n, m, k)


def true_value(policy: Policy, m: int, k: int, n: int = 100_000, seed: int = 999) -> float:
    """Expected clicks per shown slot under `policy`, over fresh contexts."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for start in range(0, n, 20_000):
        x = contexts(min(20_000, n - start), m, rng)
        total += float((marginals(policy, x, k) * click_prob(x, k)).sum(axis=(1, 2)).sum())
    return total / (n * k)


@dataclass(frozen=True)
class Log:
    """A logged dataset in obp's per-round form plus what the archive writer needs."""

    x: np.ndarray  # [R, m, D]
    request: np.ndarray  # [n] request of each round
    action: np.ndarray  # [n] candidate index
    position: np.ndarray  # [n]
    reward: np.ndarray  # [n]
    pscore: np.ndarray  # [n]
    k: int


def simulate(n_requests: int, m: int, k: int, seed: int, logger: Policy = LOGGER) -> Log:
    rng = np.random.default_rng(seed)
    x = contexts(n_requests, m, rng)
    probs = slate_probs(logger, x, k)
    cdf = np.cumsum(probs, axis=1)
    pick = (cdf < rng.random((n_requests, 1)) * cdf[:, -1:]).sum(axis=1)
    shown = slates(m, k)[pick]  # [R, k]
    marg = marginals(logger, x, k)
    q = click_prob(x, k)
    req = np.repeat(np.arange(n_requests), k)
    pos = np.tile(np.arange(k), n_requests)
    act = shown.ravel()
    reward = (rng.random(req.shape[0]) < q[req, act, pos]).astype(np.float64)
    return Log(x, req, act, pos, reward, marg[req, act, pos], k)


def to_events(log: Log, seed: int, t0_ms: int = 1_790_000_000_000) -> pd.DataFrame:
    """The log as our v1 impression + click events (plus clicks that must not count)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    window_ms = 1_800_000
    for r in range(log.x.shape[0]):
        ts = t0_ms + r * 1000
        for i in np.flatnonzero(log.request == r):
            a, j = int(log.action[i]), int(log.position[i])
            item = f"item-{(r * 7 + a) % 50}"
            ctx = {
                "policy": "thompson",
                "model": "v1",
                "x": ",".join(repr(float(v)) for v in log.x[r, a]),
            }
            rows.append(_ev(f"imp-{i}", "impression", r, item, ts, j, log.pscore[i], ctx))
            if log.reward[i]:
                dt = int(rng.integers(0, window_ms))
                rows.append(_ev(f"clk-{i}", "click", r, item, ts + dt, j))
                if r % 5 == 0:  # the same click delivered twice: still one reward
                    rows.append(_ev(f"clk2-{i}", "click", r, item, ts + dt + 5, j))
            elif r % 3 == 0:  # a click after the window, and one before the impression
                rows.append(_ev(f"late-{i}", "click", r, item, ts + window_ms + 1, j))
                rows.append(_ev(f"early-{i}", "click", r, item, ts - 1, j))
    # Later traffic, in an hour partition that starts after every impression's attribution
    # window: the archive has moved on, so every reward is known.
    rows.append(_ev("later", "view", 0, "item-0", later_ms(log, t0_ms), 0))
    return pd.DataFrame(rows)


def later_ms(log: Log, t0_ms: int) -> int:
    """Time of the one event that follows the log (2 h after the last window closes)."""
    return t0_ms + log.x.shape[0] * 1000 + 1_800_000 + 7_200_000


def _ev(
    eid: str,
    kind: str,
    r: int,
    item: str,
    ts: int,
    position: int,
    pscore: float | None = None,
    ctx: dict[str, str] | None = None,
) -> dict[str, object]:
    return {
        "event_id": eid,
        "event_type": kind,
        "user_id": f"u{r % 17}",
        "item_id": item,
        "ts_ms": ts,
        "request_id": f"req-{r}",
        "position": position,
        "propensity": pscore,
        "context": json.dumps(ctx) if ctx else None,
    }
