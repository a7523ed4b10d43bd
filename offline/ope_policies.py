"""Candidate policies for off-policy evaluation: what each would show for every logged slate.

A spec names one (`streamrec evaluate-policy -p SPEC`): `random`, `score:FEATURE`,
`linear:F=W,...[,temperature=T][,draws=N]`, `greedy:LEARNER.json`,
`thompson:STATS.json,exploration=0`. Each gives `action_dist` over the items a request
showed (see `offline.ope_log` for why, and its limits)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.bandit import FEATURE_NAMES, Candidates, GreedyPolicy, Policy, ThompsonPolicy
from models.bandit_learning import BanditStats, CtrLearner
from offline.ope import MAX_DRAW_CELLS
from offline.ope_log import LoggedFeedback
from streamrec.errors import DataError


class SlatePolicy(Protocol):
    """A candidate policy as the estimators need it: its slot marginals per slate."""

    @property
    def spec(self) -> str: ...

    def action_dist(self, fb: LoggedFeedback) -> np.ndarray:
        """[S, m, len_list]: P(candidate a in slot k), a distribution over a for each k."""
        ...


@dataclass(frozen=True)
class UniformPolicy:
    """A uniformly random order of each slate (RandomPolicy's marginals: 1/m everywhere)."""

    spec: str = "random"

    def action_dist(self, fb: LoggedFeedback) -> np.ndarray:
        share = fb.valid / fb.valid.sum(axis=1, keepdims=True)
        return np.repeat(share[:, :, None], fb.len_list, axis=2)


@dataclass(frozen=True)
class LinearPolicy:
    """Rank by x·w: top-k when temperature is 0, else Plackett-Luce on softmax(x·w / T).

    Plackett-Luce marginals are estimated from `draws` seeded Gumbel-top-k samples (error
    about sqrt(p / draws)); deterministic ranks are exact (ties keep the logged order).
    """

    weights: dict[str, float]
    temperature: float = 0.0
    draws: int = 2000
    seed: int = 0
    spec: str = "linear"

    def scores(self, fb: LoggedFeedback) -> np.ndarray:
        unknown = sorted(set(self.weights) - set(fb.feature_names))
        if unknown:
            raise DataError(
                f"policy {self.spec!r} names unknown feature(s) {unknown}; "
                f"this log has {', '.join(fb.feature_names)}"
            )
        w = np.array([self.weights.get(f, 0.0) for f in fb.feature_names])
        s = fb.candidates @ w
        return np.where(fb.valid, s, -np.inf)

    def action_dist(self, fb: LoggedFeedback) -> np.ndarray:
        s = self.scores(fb)
        if self.temperature == 0:
            return _rank_counts(np.argsort(-s, axis=1, kind="stable")[:, None, :], fb)
        rng = np.random.default_rng(self.seed)
        n_slates, m = s.shape
        out = np.empty((n_slates, m, fb.len_list))
        step = max(1, MAX_DRAW_CELLS // (self.draws * m))
        for lo in range(0, n_slates, step):
            part = s[lo : lo + step, None, :] / self.temperature
            noisy = part + rng.gumbel(size=(part.shape[0], self.draws, m))
            order = np.argsort(-noisy, axis=2, kind="stable")
            out[lo : lo + step] = _rank_counts(order, fb, lo)
        return out


def _rank_counts(order: np.ndarray, fb: LoggedFeedback, lo: int = 0) -> np.ndarray:
    """Slot marginals from sampled orders [S', draws, m] (best first)."""
    n_slates, draws, m = order.shape
    k = fb.len_list
    top = order[:, :, :k]
    flat = (np.arange(n_slates)[:, None, None] * m + top) * k + np.arange(k)
    counts = np.bincount(flat.ravel(), minlength=n_slates * m * k).reshape(n_slates, m, k)
    dist = counts / draws
    # A slot past a short slate's end holds padding; make it a point mass on item 0.
    size = fb.valid[lo : lo + n_slates].sum(axis=1)
    beyond = np.arange(k)[None, :] >= size[:, None]  # [S', k]
    dist[np.broadcast_to(beyond[:, None, :], dist.shape)] = 0.0
    dist[:, 0, :] = np.where(beyond, 1.0, dist[:, 0, :])
    return np.asarray(dist)


def parse_policy(spec: str) -> SlatePolicy:
    """A policy from its command-line spec.

    random                          uniform order of each slate (models.bandit RandomPolicy)
    score:FEATURE                   by one feature, best first
    linear:F=W,F=W[,temperature=T][,draws=N][,seed=S]
                                    by Σ W·F; T > 0 samples Plackett-Luce
    greedy:LEARNER.json             models.bandit GreedyPolicy over a CtrLearner with these
                                    weights (the JSON of `CtrLearner.weights()`)
    thompson:STATS.json[,exploration=0]
                                    models.bandit ThompsonPolicy at exploration 0 (the
                                    posterior mean) over `BanditStats.to_dict()` JSON
    """
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("random", "uniform") and not rest:
        return UniformPolicy(spec=spec)
    if kind == "score" and rest:
        return LinearPolicy({rest.strip(): 1.0}, spec=spec)
    if kind == "linear" and rest:
        weights: dict[str, float] = {}
        opts: dict[str, float] = {}
        for part in rest.split(","):
            name, eq, value = part.partition("=")
            num = _number(value, spec) if eq else None
            if num is None:
                raise DataError(f"policy {spec!r}: {part!r} is not NAME=NUMBER")
            target = opts if name.strip() in ("temperature", "draws", "seed") else weights
            target[name.strip()] = num
        if opts.get("temperature", 0.0) < 0 or opts.get("draws", 1) < 1:
            raise DataError(f"policy {spec!r}: temperature must be >= 0 and draws >= 1")
        return LinearPolicy(
            weights,
            temperature=opts.get("temperature", 0.0),
            draws=int(opts.get("draws", 2000)),
            seed=int(opts.get("seed", 0)),
            spec=spec,
        )
    if kind in ("greedy", "thompson") and rest:
        path, *extra = rest.split(",")
        return _bandit_policy(kind, Path(path), extra, spec)
    raise DataError(
        f"unknown policy spec {spec!r}; use random, score:FEATURE, linear:F=W,..., "
        "greedy:LEARNER.json or thompson:STATS.json (see `streamrec evaluate-policy --help`)"
    )


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"policy {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"policy {spec!r}: {text!r} is not finite")
    return value


def _bandit_policy(kind: str, path: Path, extra: list[str], spec: str) -> BanditRankPolicy:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"policy {spec!r}: cannot read {path} as JSON: {exc}") from exc
    if kind == "greedy":
        if extra:
            raise DataError(f"policy {spec!r}: greedy takes no options")
        return BanditRankPolicy(GreedyPolicy(CtrLearner.from_weights(state)), spec)
    exploration = 0.0
    for part in extra:
        name, _, value = part.partition("=")
        if name.strip() != "exploration":
            raise DataError(f"policy {spec!r}: unknown option {part!r}")
        exploration = _number(value, spec)
    if exploration != 0:
        raise DataError(
            f"policy {spec!r}: only exploration=0 can be evaluated from the log; Thompson's "
            "CTR draws need each item's click and impression counts, which impressions do "
            "not carry"
        )
    stats = BanditStats.from_dict(state)
    return BanditRankPolicy(ThompsonPolicy(stats, exploration=0.0), spec)


@dataclass(frozen=True)
class BanditRankPolicy:
    """A deterministic `models.bandit` policy, asked to `rank` each logged slate once.

    Exactly what serving would do with those items (GreedyPolicy; ThompsonPolicy at
    exploration 0). The items' click and impression counts are not in the log; neither
    policy reads them when deterministic.
    """

    policy: Policy
    spec: str

    def action_dist(self, fb: LoggedFeedback) -> np.ndarray:
        if fb.feature_names != FEATURE_NAMES:
            raise DataError(
                f"policy {self.spec!r} needs the bandit features {FEATURE_NAMES}; "
                f"this log has {fb.feature_names}"
            )
        n_slates, m, _ = fb.candidates.shape
        order = np.tile(np.arange(m), (n_slates, 1))
        rng = np.random.default_rng(0)  # unused by deterministic policies; required by rank
        for s in range(n_slates):
            idx = np.flatnonzero(fb.valid[s])
            zeros = np.zeros(idx.size)
            cands = Candidates([str(i) for i in idx], fb.candidates[s, idx], zeros, zeros)
            ranked = idx[self.policy.rank(cands, idx.size, rng).order]
            order[s, : ranked.size] = ranked
            order[s, ranked.size :] = np.flatnonzero(~fb.valid[s])
        return _rank_counts(order[:, None, :], fb)
