"""The bandit's learned state as flat additive counters, and features on the wire.

Stream workers learn from impressions joined with clicks and add *deltas* to shared
counters inside their per-batch transaction (`features.online_state`); serving reads the
counters back into a `BanditState`. Everything here adds: sums of x xᵀ and r·x, counts,
and River weight deltas, so any number of workers can contribute without coordination
and a replayed batch (skipped by offset) never counts twice.

The bandit features of each shown item travel inside its impression event as
`context["x"]`, a comma-separated string, so the worker that sees the click later can
credit exactly what the policy saw.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from models.bandit import FEATURE_NAMES
from models.bandit_learning import BanditStats, CtrLearner

D = len(FEATURE_NAMES)
_POLICY = "policy."


def encode_x(x: np.ndarray) -> str:
    """An item's feature row as the impression's `context["x"]` (≤ 128 characters)."""
    row = np.asarray(x, dtype=np.float64).tolist()
    return ",".join(["%.5g"] * len(row)) % tuple(row)  # one format call: 4x the genexpr


def decode_x(text: object) -> np.ndarray | None:
    """The feature row of `encode_x`, or None if absent or malformed (never raises)."""
    if not isinstance(text, str):
        return None
    parts = text.split(",")
    if len(parts) != D:
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return np.asarray(values, dtype=np.float64)


@dataclass
class PolicyReward:
    impressions: float = 0.0
    clicks: float = 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


@dataclass
class BanditState:
    """What serving reranks with: regression statistics, the River learner, rewards."""

    stats: BanditStats
    learner: CtrLearner
    rewards: dict[str, PolicyReward] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, counters: dict[str, float]) -> BanditState:
        stats = BanditStats.zeros()
        for name, value in counters.items():
            kind, _, rest = name.partition(".")
            if kind == "A":
                i, j = (int(v) for v in rest.split("."))
                if i < D and j < D:
                    stats.A[i, j] = value
            elif kind == "b" and int(rest) < D:
                stats.b[int(rest)] = value
        stats.n = int(counters.get("n", 0))
        stats.clicks = int(counters.get("clicks", 0))
        weights = {k[2:]: v for k, v in counters.items() if k.startswith("w.")}
        rewards: dict[str, PolicyReward] = defaultdict(PolicyReward)
        for name, value in counters.items():
            if name.startswith(_POLICY):
                policy, _, what = name[len(_POLICY) :].rpartition(".")
                setattr(rewards[policy], what, value)
        return cls(stats, CtrLearner.from_weights(weights), dict(rewards))


class BanditDelta:
    """What one micro-batch of joined impressions and clicks adds to the shared state."""

    def __init__(self, weights: dict[str, float]) -> None:
        self._stats = BanditStats.zeros()
        self._w0 = dict(weights)
        self._learner = CtrLearner.from_weights(weights)
        self._policy: dict[str, float] = defaultdict(float)
        self.touched = False

    def impression(self, x: np.ndarray | None, policy: str) -> None:
        self._policy[f"{_POLICY}{policy}.impressions"] += 1
        self.touched = True
        if x is not None:
            self._stats.add(x, 0.0)
            self._learner.learn(x, False)

    def click(self, x: np.ndarray | None, policy: str) -> None:
        """A click joined to its impression: reward 1 for the features shown."""
        self._policy[f"{_POLICY}{policy}.clicks"] += 1
        self.touched = True
        if x is not None:
            # The impression already added x xᵀ; a reward of 1 adds x to b and a click.
            self._stats.add_reward(x)
            self._learner.learn(x, True)

    def counters(self) -> dict[str, float]:
        """Flat counter increments (zero entries left out)."""
        out: dict[str, float] = {}
        s = self._stats
        for i in range(D):
            for j in range(D):
                if s.A[i, j]:
                    out[f"A.{i}.{j}"] = float(s.A[i, j])
            if s.b[i]:
                out[f"b.{i}"] = float(s.b[i])
        if s.n:
            out["n"] = float(s.n)
        if s.clicks:
            out["clicks"] = float(s.clicks)
        for name, value in self._learner.weights().items():
            d = value - self._w0.get(name, 0.0)
            if d:
                out[f"w.{name}"] = d
        out.update({k: v for k, v in self._policy.items() if v})
        return out
