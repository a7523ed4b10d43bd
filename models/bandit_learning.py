"""What the bandit learns from rewards: the sufficient statistics of a Bayesian linear
regression (`BanditStats`, additive, so any number of stream workers can add deltas)
and the River click model behind the greedy policy (`CtrLearner`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import linear_model, optim

from models.bandit import (
    CTR,
    CTR_PRIOR_MEAN,
    CTR_PRIOR_STRENGTH,
    FEATURE_NAMES,
    D,
    Ridge,
    beta_params,
    float_array,
)
from streamrec.errors import ConfigError, DataError


def ctr_posterior_mean(
    clicks: np.ndarray | float,
    impressions: np.ndarray | float,
    prior_mean: float = CTR_PRIOR_MEAN,
    prior_strength: float = CTR_PRIOR_STRENGTH,
) -> np.ndarray:
    """The "ctr" feature: the Beta posterior mean of an item's click rate."""
    a, b = beta_params(
        np.asarray(clicks, float), np.asarray(impressions, float), prior_mean, prior_strength
    )
    return a / (a + b)


@dataclass(eq=False)
class BanditStats:
    """Sufficient statistics of a Bayesian linear regression of reward on x; they add up."""

    A: np.ndarray  # [D, D], sum of x xᵀ over impressions
    b: np.ndarray  # [D], sum of reward * x
    n: int = 0  # impressions
    clicks: int = 0  # rewards > 0
    # (key, (mean, cov, chol)) of the last posterior, reused while its inputs' bytes (the
    # key: A, b, ridge, noise, prior mean) hold.
    _cache: tuple[Any, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.A = float_array(self.A, "A")
        self.b = float_array(self.b, "b")
        if self.A.shape != (D, D) or self.b.shape != (D,):
            raise DataError(f"BanditStats needs A of shape ({D}, {D}) and b of shape ({D},).")

    @classmethod
    def zeros(cls) -> BanditStats:
        return cls(np.zeros((D, D)), np.zeros(D))

    def add(self, x: np.ndarray, reward: float | np.ndarray) -> None:
        """Add impressions: x is one row [D] or many [m, D], reward a scalar or [m]."""
        X = float_array(x, "x")
        X = X[None, :] if X.ndim == 1 else X
        if X.ndim != 2 or X.shape[1] != D:
            raise DataError(f"x must have shape ({D},) or (m, {D}); got {np.shape(x)}.")
        r = float_array(reward, "reward")
        r = np.full(X.shape[0], float(r)) if r.ndim == 0 else r
        if r.shape != (X.shape[0],):
            raise DataError(f"reward must be a scalar or one per row of x; got {np.shape(reward)}.")
        self.A += X.T @ X
        self.b += X.T @ r
        self.n += X.shape[0]
        self.clicks += int(np.count_nonzero(r > 0))

    def add_reward(self, x: np.ndarray, reward: float = 1.0) -> None:
        """A click that arrives after its impression (already added with reward 0)."""
        row = float_array(x, "x")
        if row.shape != (D,) or not math.isfinite(reward):
            raise DataError(f"add_reward needs x of shape ({D},) and a finite reward.")
        self.b += reward * row
        self.clicks += int(reward > 0)

    def merge(self, other: BanditStats) -> None:
        self.A += other.A
        self.b += other.b
        self.n += other.n
        self.clicks += other.clicks

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(FEATURE_NAMES),
            "A": self.A.tolist(),
            "b": self.b.tolist(),
            "n": self.n,
            "clicks": self.clicks,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BanditStats:
        features = d.get("features", list(FEATURE_NAMES))
        if list(features) != list(FEATURE_NAMES):
            raise DataError(
                f"bandit stats were built for features {features}, not {FEATURE_NAMES}."
            )
        counts = {key: d.get(key, 0) for key in ("n", "clicks")}
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"bandit stats field {key!r} must be a count >= 0; got {value!r}.")
        if "A" not in d or "b" not in d:
            raise DataError("bandit stats need both 'A' and 'b'.")
        try:
            A, b = np.asarray(d["A"], dtype=np.float64), np.asarray(d["b"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"bandit stats 'A' and 'b' must be numeric arrays: {exc}") from exc
        return cls(A, b, counts["n"], counts["clicks"])

    def posterior(
        self, ridge: Ridge = 1.0, noise: float = 0.25, prior_mean: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior (mean, cov) of theta under the prior N(prior_mean, diag(1/ridge)) and
        Gaussian reward noise of sd `noise` (0.25: a click reward's sd at a CTR of ~7 %).
        `ridge` is one prior precision for every weight or one per feature."""
        mean, cov, _ = self._sampler(ridge, noise, prior_mean)
        return mean.copy(), cov.copy()

    def _sampler(
        self, ridge: Ridge, noise: float, prior_mean: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, cov and cov's Cholesky factor, recomputed only when an input changed."""
        # The inputs' bytes are the cache key: a few us per request, where comparing
        # arrays with np.array_equal cost ~40 us (serving asks on every request).
        ridge_arr = np.asarray(ridge, dtype=np.float64)
        m0_arr = None if prior_mean is None else np.asarray(prior_mean, dtype=np.float64)
        key = (
            self.A.tobytes(),
            self.b.tobytes(),
            ridge_arr.shape,
            ridge_arr.tobytes(),
            float(noise),
            None if m0_arr is None else (m0_arr.shape, m0_arr.tobytes()),
        )
        cached = self._cache  # read once: another thread may replace it
        if cached is not None and cached[0] == key:
            return cached[1]
        r = np.broadcast_to(ridge_arr, (D,))
        m0 = np.zeros(D) if m0_arr is None else m0_arr
        if not (bool((r > 0).all()) and noise > 0 and m0.shape == (D,)):
            raise ConfigError(f"ridge and noise must be > 0 and prior_mean [{D}]; got {ridge}.")
        if not (np.isfinite(self.A).all() and np.isfinite(self.b).all()):
            raise DataError("bandit stats hold non-finite values; rebuild them from the log.")
        precision = np.diag(r) + self.A / noise**2
        cov = np.linalg.inv(precision)
        cov = (cov + cov.T) / 2
        mean = cov @ (r * m0 + self.b / noise**2)
        chol = np.linalg.cholesky(cov)
        self._cache = (key, (mean, cov, chol))
        return mean, cov, chol


class CtrLearner:
    """Online click model: River logistic regression over the bandit features.

    The "ctr" feature enters as its logit (a CTR of a few percent is too small a number
    for SGD to weigh, its logit is not); the weight named "ctr" multiplies that logit.
    """

    def __init__(self, learning_rate: float = 0.05, l2: float = 0.0) -> None:
        if not (learning_rate > 0 and l2 >= 0):
            raise ConfigError(f"learning_rate must be > 0 and l2 >= 0; got {learning_rate}, {l2}.")
        self.learning_rate = learning_rate
        self.l2 = l2
        self._model = linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), l2=l2, intercept_lr=learning_rate
        )

    def learn(self, x: np.ndarray, clicked: bool) -> None:
        row = float_array(x, "x")
        if row.shape != (D,):
            raise DataError(f"learn needs one feature row of shape ({D},); got {row.shape}.")
        inputs = _learner_inputs(row).tolist()
        self._model.learn_one(dict(zip(FEATURE_NAMES, inputs, strict=True)), bool(clicked))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Click probability per row of X [n, D] (vectorised; equals River's predict_proba_one)."""
        X = float_array(X, "X")
        if X.ndim != 2 or X.shape[1] != D:
            raise DataError(f"predict needs X of shape (n, {D}); got {X.shape}.")
        w = self.weights()
        logit = _learner_inputs(X) @ np.array([w[f] for f in FEATURE_NAMES]) + w["intercept"]
        return 0.5 * (1.0 + np.tanh(0.5 * logit))  # the sigmoid, without overflow

    def weights(self) -> dict[str, float]:
        """Every feature's weight and "intercept"; `from_weights` round-trips it exactly."""
        w = self._model._weights
        out = {f: float(w[f]) if f in w else 0.0 for f in FEATURE_NAMES}
        out["intercept"] = float(self._model.intercept)
        return out

    def apply_delta(self, delta: Mapping[str, float]) -> None:
        """Add weight deltas (missing names add 0), as merged from stream workers."""
        current = self.weights()
        for name, value in _checked_weights(delta).items():
            self._set(name, current[name] + value)

    @classmethod
    def from_weights(cls, w: Mapping[str, float], **settings: float) -> CtrLearner:
        """A learner with these weights (missing names are 0, as in a fresh learner)."""
        learner = cls(**settings)
        for name, value in _checked_weights(w).items():
            learner._set(name, value)
        return learner

    def _set(self, name: str, value: float) -> None:
        if name == "intercept":
            self._model.intercept = value
        else:
            self._model._weights[name] = value


def _checked_weights(w: Mapping[str, float]) -> dict[str, float]:
    known = (*FEATURE_NAMES, "intercept")
    unknown = sorted(set(w) - set(known))
    if unknown:
        raise DataError(f"unknown learner weights {unknown}; expected names from {known}.")
    out = {name: float(value) for name, value in w.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise DataError("learner weights must be finite.")
    return out


def _learner_inputs(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    ctr = np.clip(out[..., CTR], 1e-4, 1.0 - 1e-4)
    out[..., CTR] = np.log(ctr / (1.0 - ctr))
    return out
