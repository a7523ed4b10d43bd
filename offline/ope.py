"""Off-policy estimators (IPS, SNIPS, DM, DR) with seeded, vectorised bootstrap intervals.

The arrays follow `obp.ope`'s conventions, so its estimators are the reference in the
tests (equal to 1e-6 on the Open Bandit Dataset):

- one *round* per logged (shown item, position): `action[n]` (int), `position[n]` (int),
  `reward[n]`, `pscore[n]` = the logging policy's P(action at position | context);
- `action_dist[n, n_actions, len_list]` = the evaluation policy's P(action at position),
  a distribution over actions for every round and position;
- `estimated_rewards_by_reg_model[n, n_actions, len_list]` = q̂(context, action, position).

The policy value is the expected reward per round (a CTR for click rewards). Every
estimator is a ratio of round sums, `sum(num) / sum(den)`, which is what makes the
bootstrap one matrix product per chunk of resamples: IPS, DM and DR have `den = 1`,
SNIPS has `den = w`. Rounds that belong together (the slots of one request) share a
`group`, and the bootstrap resamples groups, not rounds, so correlated slots do not
shrink the interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamrec.errors import DataError

log = logging.getLogger(__name__)

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dm", "dr")
NEEDS_REWARD_MODEL = frozenset({"dm", "dr"})
_MAX_CHUNK_CELLS = 4_000_000  # resample-count cells held at once (32 MB of float64)


@dataclass(frozen=True)
class Estimate:
    """One estimator's point estimate and its bootstrap percentile interval."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class WeightDiagnostics:
    """Importance weights w = π_e(a, k) / pscore; a mean far from 1 flags wrong propensities
    or an evaluation policy that puts mass where the logger never did."""

    mean: float
    max: float
    effective_sample_size: float  # (Σw)² / Σw², out of n rounds


@dataclass(frozen=True)
class OpeResult:
    """All estimates for one evaluation policy on one log."""

    estimates: dict[str, Estimate]
    weights: WeightDiagnostics
    n_rounds: int
    n_groups: int
    logged_reward: float  # the logging policy's own mean reward (on-policy)
    confidence: float
    n_resamples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "n_rounds": self.n_rounds,
            "n_groups": self.n_groups,
            "logged_reward": self.logged_reward,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "estimates": {
                k: {"value": e.value, "ci": [e.ci_low, e.ci_high]}
                for k, e in self.estimates.items()
            },
            "weights": {
                "mean": self.weights.mean,
                "max": self.weights.max,
                "effective_sample_size": self.weights.effective_sample_size,
            },
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class PerSlate:
    """A [n, n_actions, len_list] table stored once per slate: round i reads `values[index[i]]`.

    Rounds of one request (or of a log whose candidates never change, like the Open
    Bandit Dataset) share the same evaluation-policy probabilities and reward-model
    predictions; storing them per slate keeps memory at O(slates·m·L + n·m) instead of
    O(n·m·L). Anywhere a table is taken, a plain obp-style array works too.
    """

    values: np.ndarray  # [S, n_actions, len_list]
    index: np.ndarray  # [n] -> 0..S-1

    @property
    def shape(self) -> tuple[int, int, int]:
        _, m, k = self.values.shape
        return (int(self.index.shape[0]), int(m), int(k))


Table = np.ndarray | PerSlate
MAX_DRAW_CELLS = 4_000_000  # numbers held at once by reward tables and policy draws


def _column(table: Table, position: np.ndarray) -> np.ndarray:
    """[n, n_actions]: each round's row of the table at its own position."""
    if isinstance(table, PerSlate):
        return np.asarray(table.values[table.index, :, position])
    return np.asarray(table[np.arange(position.shape[0]), :, position])


def _cell(table: Table, action: np.ndarray, position: np.ndarray) -> np.ndarray:
    """[n]: each round's table entry at its logged action and position."""
    if isinstance(table, PerSlate):
        return np.asarray(table.values[table.index, action, position])
    return np.asarray(table[np.arange(action.shape[0]), action, position])


def _values(table: Table) -> np.ndarray:
    return table.values if isinstance(table, PerSlate) else table


# --- input checks -------------------------------------------------------------------------


def check_inputs(
    action: np.ndarray,
    position: np.ndarray | None,
    reward: np.ndarray,
    pscore: np.ndarray,
    action_dist: Table,
    estimated_rewards_by_reg_model: Table | None = None,
) -> np.ndarray:
    """Raise DataError naming the first bad input; return `position` (zeros when None)."""
    if len(action_dist.shape) != 3:
        raise DataError(f"action_dist must be [n, n_actions, len_list], got {action_dist.shape}")
    n, n_actions, len_list = action_dist.shape
    for name, table in (("action_dist", action_dist), ("rewards", estimated_rewards_by_reg_model)):
        if isinstance(table, PerSlate) and (
            table.index.shape != (n,)
            or table.index.min(initial=0) < 0
            or table.index.max(initial=0) >= table.values.shape[0]
        ):
            raise DataError(f"{name}: PerSlate.index must map each of {n} rounds to a slate")
    if position is None:
        if len_list > 1:
            raise DataError("position is required when action_dist has more than one position")
        position = np.zeros(n, dtype=np.int64)
    for name, arr in (("action", action), ("position", position), ("reward", reward)):
        if arr.shape != (n,):
            raise DataError(f"{name} must have shape ({n},) like action_dist, got {arr.shape}")
    if pscore.shape != (n,):
        raise DataError(f"pscore must have shape ({n},) like action_dist, got {pscore.shape}")
    if n == 0:
        raise DataError("no rounds to evaluate: the log is empty after filtering")
    for name, arr, hi in (("action", action, n_actions), ("position", position, len_list)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{name} must be integers, got {arr.dtype}")
        if arr.min() < 0 or arr.max() >= hi:
            raise DataError(f"{name} must lie in 0..{hi - 1} (the action_dist axis)")
    if not np.all(np.isfinite(reward)):
        raise DataError("reward has NaN or infinite values")
    if not np.all((pscore > 0) & (pscore <= 1)):
        bad = int(np.sum(~((pscore > 0) & (pscore <= 1))))
        raise DataError(
            f"pscore must lie in (0, 1]; {bad} round(s) do not. A shown item needs the "
            "probability its logging policy gave it; fix the logger or drop those rounds."
        )
    dist = _values(action_dist)
    if np.any(dist < 0) or not np.allclose(dist.sum(axis=1), 1.0):
        raise DataError(
            "action_dist must be a probability distribution over actions at every "
            "round and position (non-negative, summing to 1 over axis 1)"
        )
    if (
        estimated_rewards_by_reg_model is not None
        and estimated_rewards_by_reg_model.shape != action_dist.shape
    ):
        raise DataError(
            "estimated_rewards_by_reg_model must have the shape of action_dist "
            f"{action_dist.shape}, got {estimated_rewards_by_reg_model.shape}"
        )
    return position


# --- per-round terms ----------------------------------------------------------------------


def importance_weights(
    action: np.ndarray, position: np.ndarray, pscore: np.ndarray, action_dist: Table
) -> np.ndarray:
    """w_i = π_e(a_i at k_i) / pscore_i."""
    return np.asarray(_cell(action_dist, action, position) / pscore, dtype=np.float64)


def _policy_q(position: np.ndarray, action_dist: Table, q_hat: Table) -> np.ndarray:
    """q̂(x, π_e) at each round's position: Σ_a π_e(a, k) q̂(x, a, k)."""
    pi = _column(action_dist, position)
    q = _column(q_hat, position)
    # np.average's normalisation, as obp does; exactly the dot product when π sums to 1.
    return np.asarray((pi * q).sum(axis=1) / pi.sum(axis=1))


def round_terms(
    estimator: str,
    action: np.ndarray,
    position: np.ndarray,
    reward: np.ndarray,
    pscore: np.ndarray,
    action_dist: Table,
    estimated_rewards_by_reg_model: Table | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) per round; the estimate is `num.sum() / den.sum()`."""
    ones = np.ones(action.shape[0])
    if estimator in ("ips", "snips", "dr"):
        w = importance_weights(action, position, pscore, action_dist)
    if estimator == "ips":
        return w * reward, ones
    if estimator == "snips":
        return w * reward, w
    if estimator in NEEDS_REWARD_MODEL:
        q_hat = estimated_rewards_by_reg_model
        if q_hat is None:
            raise DataError(f"{estimator} needs estimated_rewards_by_reg_model (a reward model)")
        q_pi = _policy_q(position, action_dist, q_hat)
        if estimator == "dm":
            return q_pi, ones
        q_logged = _cell(q_hat, action, position)
        return q_pi + w * (reward - q_logged), ones
    raise DataError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")


def _point(num: np.ndarray, den: np.ndarray) -> float:
    d = float(den.sum())
    return float(num.sum()) / d if d != 0 else float("nan")


def ips(
    reward: np.ndarray,
    action: np.ndarray,
    pscore: np.ndarray,
    action_dist: Table,
    position: np.ndarray | None = None,
) -> float:
    """Inverse propensity scoring: mean of w·r. Unbiased when pscore is right."""
    position = check_inputs(action, position, reward, pscore, action_dist)
    return _point(*round_terms("ips", action, position, reward, pscore, action_dist))


def snips(
    reward: np.ndarray,
    action: np.ndarray,
    pscore: np.ndarray,
    action_dist: Table,
    position: np.ndarray | None = None,
) -> float:
    """Self-normalised IPS: Σw·r / Σw. Slightly biased, much steadier than IPS."""
    position = check_inputs(action, position, reward, pscore, action_dist)
    return _point(*round_terms("snips", action, position, reward, pscore, action_dist))


def dm(
    action_dist: Table,
    estimated_rewards_by_reg_model: Table,
    position: np.ndarray | None = None,
) -> float:
    """Direct method: the reward model's value of π_e. As good as the model."""
    n = action_dist.shape[0]
    action = np.zeros(n, dtype=np.int64)
    filler = np.ones(n)
    position = check_inputs(
        action, position, filler, filler, action_dist, estimated_rewards_by_reg_model
    )
    num, den = round_terms(
        "dm", action, position, filler, filler, action_dist, estimated_rewards_by_reg_model
    )
    return _point(num, den)


def dr(
    reward: np.ndarray,
    action: np.ndarray,
    pscore: np.ndarray,
    action_dist: Table,
    estimated_rewards_by_reg_model: Table,
    position: np.ndarray | None = None,
) -> float:
    """Doubly robust: DM plus the IPS-weighted residual; right if either part is right."""
    position = check_inputs(
        action, position, reward, pscore, action_dist, estimated_rewards_by_reg_model
    )
    num, den = round_terms(
        "dr", action, position, reward, pscore, action_dist, estimated_rewards_by_reg_model
    )
    return _point(num, den)


# --- bootstrap ------------------------------------------------------------------------------


def group_index(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Dense 0..G-1 codes for the resampling units (each round its own when None)."""
    if groups is None:
        return np.arange(n), n
    if groups.shape != (n,):
        raise DataError(f"groups must have shape ({n},), got {groups.shape}")
    _, codes = np.unique(groups, return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1


def resample_counts(
    n_groups: int, n_resamples: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Chunks of [b, n_groups] counts: how often each group is drawn in each resample."""
    chunk = max(1, min(n_resamples, _MAX_CHUNK_CELLS // max(n_groups, 1)))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = (draws + np.arange(b)[:, None] * n_groups).ravel()
        yield np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups).astype(np.float64)
        done += b


def bootstrap(
    terms: dict[str, tuple[np.ndarray, np.ndarray]],
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every estimator, all on the same (paired) resamples."""
    if n_resamples < 1:
        raise DataError("n_resamples must be at least 1")
    n = next(iter(terms.values()))[0].shape[0]
    codes, n_groups = group_index(groups, n)
    sums = {
        k: (np.bincount(codes, num, n_groups), np.bincount(codes, den, n_groups))
        for k, (num, den) in terms.items()
    }
    out: dict[str, list[np.ndarray]] = {k: [] for k in terms}
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):  # SNIPS: Σw = 0 in a resample -> NaN
        for counts in resample_counts(n_groups, n_resamples, rng):
            for k, (num_g, den_g) in sums.items():
                out[k].append((counts @ num_g) / (counts @ den_g))
    return {k: np.concatenate(v) for k, v in out.items()}


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile bootstrap interval; NaN replicates (undefined resamples) left out."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [tail, 1.0 - tail])
    return float(lo), float(hi)


def evaluate(
    action: np.ndarray,
    position: np.ndarray | None,
    reward: np.ndarray,
    pscore: np.ndarray,
    action_dist: Table,
    estimated_rewards_by_reg_model: Table | None = None,
    *,
    estimators: Sequence[str] = ESTIMATORS,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> OpeResult:
    """Every requested estimator with its bootstrap interval, plus weight diagnostics.

    DM and DR are left out (with a note) when no reward model is given and they were not
    asked for by name; asking for them by name without one is a DataError.
    """
    if not 0 < confidence < 1:
        raise DataError(f"confidence must lie in (0, 1), got {confidence}")
    position = check_inputs(
        action, position, reward, pscore, action_dist, estimated_rewards_by_reg_model
    )
    notes: list[str] = []
    chosen = list(dict.fromkeys(estimators))
    if estimated_rewards_by_reg_model is None and list(estimators) == list(ESTIMATORS):
        chosen = [e for e in chosen if e not in NEEDS_REWARD_MODEL]
        notes.append("dm and dr skipped: no reward model given")
    terms = {
        e: round_terms(
            e, action, position, reward, pscore, action_dist, estimated_rewards_by_reg_model
        )
        for e in chosen
    }
    if "dm" in terms:
        notes.append("dm's interval holds the reward model fixed: it leaves out fitting error")
    reps = bootstrap(terms, groups=groups, n_resamples=n_resamples, seed=seed)
    estimates = {}
    for e, (num, den) in terms.items():
        lo, hi = percentile_interval(reps[e], confidence)
        estimates[e] = Estimate(e, _point(num, den), lo, hi)
    w = importance_weights(action, position, pscore, action_dist)
    sw2 = float(np.sum(w * w))
    diag = WeightDiagnostics(
        mean=float(w.mean()),
        max=float(w.max()),
        effective_sample_size=float(w.sum()) ** 2 / sw2 if sw2 > 0 else 0.0,
    )
    if diag.effective_sample_size < 0.01 * w.shape[0]:
        notes.append(
            f"effective sample size {diag.effective_sample_size:.0f} of {w.shape[0]} rounds: "
            "the evaluation policy is far from the logger; IPS and DR are unreliable"
        )
    return OpeResult(
        estimates=estimates,
        weights=diag,
        n_rounds=int(action.shape[0]),
        n_groups=group_index(groups, action.shape[0])[1],
        logged_reward=float(reward.mean()),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        notes=notes,
    )


# --- reward model ---------------------------------------------------------------------------
