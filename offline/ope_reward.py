"""Reward models for the direct method and doubly robust estimators: a logistic
regression of reward on (candidate features, slot), fitted cross-fold by request so no
request's reward predicts itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from offline import ope
from streamrec.errors import DataError

if TYPE_CHECKING:
    from offline.ope_log import LoggedFeedback


class LogisticRewardModel:
    """L2-regularised logistic regression fitted by Newton's method: q̂ for DM and DR.

    Small and dependency-free on purpose: the features are the item's bandit features and
    a one-hot of the position, a dozen columns, so a few Newton steps converge exactly.
    The intercept is not penalised, so the fitted click rate matches the data's on
    average however rare clicks are (a penalised one drifts towards 0.5 and biases DM up).
    """

    def __init__(self, l2: float = 1.0, max_iter: int = 50, tol: float = 1e-8) -> None:
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self._coef: np.ndarray | None = None  # [intercept, weights...]

    def fit(self, features: np.ndarray, reward: np.ndarray) -> LogisticRewardModel:
        if features.ndim != 2 or features.shape[0] != reward.shape[0]:
            raise DataError(f"features [n, d] and reward [n] disagree: {features.shape}")
        if not np.all(np.isfinite(features)):
            raise DataError("reward-model features have NaN or infinite values")
        X = np.hstack([np.ones((features.shape[0], 1)), features.astype(np.float64)])
        y = reward.astype(np.float64)
        penalty = np.full(X.shape[1], self.l2)
        penalty[0] = 1e-8  # keeps the Hessian invertible when every reward is 0 or 1
        coef = np.zeros(X.shape[1])
        for _ in range(self.max_iter):
            p = _sigmoid(X @ coef)
            grad = X.T @ (p - y) + penalty * coef
            hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag(penalty)
            step = np.linalg.solve(hess, grad)
            coef -= step
            if np.max(np.abs(step)) < self.tol:
                break
        self._coef = coef
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(reward = 1) for features [..., d]."""
        if self._coef is None:
            raise DataError("reward model used before fit()")
        return _sigmoid(features @ self._coef[1:] + self._coef[0])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))  # overflow-free logistic


def design(candidates: np.ndarray, len_list: int) -> np.ndarray:
    """Reward-model features of every (candidate, slot): [..., m, L, D + L]."""
    *lead, m, d = candidates.shape
    x = np.broadcast_to(candidates[..., :, None, :], (*lead, m, len_list, d))
    slot = np.broadcast_to(np.eye(len_list), (*lead, m, len_list, len_list))
    return np.concatenate([x, slot], axis=-1)


def reward_table(
    fb: LoggedFeedback, n_folds: int = 2, seed: int = 0, l2: float = 1.0
) -> ope.PerSlate:
    """q̂(candidate, slot) per slate from a logistic model of reward on x and the slot.

    With `n_folds` > 1 the model is cross-fitted: rounds are split by group (request) and
    each round's predictions come from the model fitted on the other folds, so DR's
    correction is not fitted to its own noise.
    """
    if n_folds < 1:
        raise DataError("n_folds must be at least 1")
    codes, n_groups = ope.group_index(fb.groups, fb.n_rounds)
    fold = np.random.default_rng(seed).permutation(n_groups)[codes] % n_folds
    n_slates, m, _ = fb.candidates.shape
    key = fold * n_slates + fb.slate  # one table per (fold, slate) that has rounds
    uniq, index = np.unique(key, return_inverse=True)
    slot = np.eye(fb.len_list)
    rows = np.hstack([fb.candidates[fb.slate, fb.action], slot[fb.position]])
    values = np.empty((uniq.shape[0], m, fb.len_list))
    step = max(1, ope.MAX_DRAW_CELLS // (m * fb.len_list * rows.shape[1]))
    for f in range(n_folds):
        train = fold != f if n_folds > 1 else np.ones(fb.n_rounds, dtype=bool)
        model = LogisticRewardModel(l2=l2).fit(rows[train], fb.reward[train])
        mine = np.flatnonzero(uniq // n_slates == f)
        for lo in range(0, mine.size, step):  # features of every (candidate, slot), in chunks
            part = mine[lo : lo + step]
            values[part] = model.predict(design(fb.candidates[uniq[part] % n_slates], fb.len_list))
    return ope.PerSlate(values, index.astype(np.int64))
