"""Thompson sampling's per-request arithmetic, compiled by numba.

The numpy formulation in `models.bandit` (`ThompsonPolicy` with `compiled=False`) is the
reference: it spends ~150 numpy calls on arrays of ~100 x 32 numbers, so a request paid
for call overhead, not arithmetic (`rank` over 110 candidates with 32 samples: ~0.90 ms
in numpy, ~0.30 ms with these kernels, on the 2-core dev machine). Here the same steps
run as two compiled loops over the same inputs and the same random draws (drawn by the
caller's numpy Generator, in the reference's order), so `tests/unit/test_thompson_kernel.py`
can hold both to the same slate.

numba is a project dependency. Only where it cannot be installed (the GPU test machines
carry torch alone) is `AVAILABLE` False: the policy then runs the numpy reference, so
`models/` still imports there.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

try:  # pragma: no branch - which branch runs depends on the machine
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where numba is not installed
    numba = None  # type: ignore[assignment]  # the module, or None where it is missing
    AVAILABLE = False


def _jit(fn: Any) -> Any:
    if numba is None:
        return fn  # plain Python: the same code, slowly (tests can still run it)
    try:
        # cache: compiled once per machine (in __pycache__, else ~/.cache/numba or
        # NUMBA_CACHE_DIR), loaded in ~0.1 s by later processes.
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError as exc:  # no writable cache location: compile per process
        log.warning("numba cannot cache %s (%s); compiling it in every process", fn.__name__, exc)
        return numba.njit(nogil=True)(fn)


@_jit
def _quantile(a: float, b: float, z: float) -> float:
    """Beta(a, b) quantile at z standard-normal sd (Paulson; `models.bandit._beta_quantile`)."""
    c1 = 2.0 / (18.0 * a)
    c2 = 2.0 / (18.0 * b)
    p = 1.0 - c2
    q = 1.0 - c1
    z2 = z * z
    quad = p * p - z2 * c2
    if quad <= 0.0:
        return 1.0 if z > 0.0 else 0.0
    disc = max(p * p * q * q - quad * (q * q - z2 * c1), 0.0)
    f = max((p * q + math.copysign(math.sqrt(disc), z)) / quad, 0.0) ** 3
    return a * f / (a * f + b)


@_jit
def shortlist(
    x: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    mean: np.ndarray,
    chol: np.ndarray,
    base: np.ndarray,
    kk: int,
    exploration: float,
    z: float,
    ctr: int,
) -> np.ndarray:
    """Indices (ascending) of the items that can plausibly reach the top kk: the same
    bound as `ThompsonPolicy._shortlist`, centred on the kk best items by mean score
    (ties to the lower index)."""
    n, d = x.shape
    m = np.empty(n)
    gain = np.empty(n)
    loss = np.empty(n)
    mu = np.empty(n)
    t_sd = 0.0
    for j in range(d):
        t_sd += chol[ctr, j] * chol[ctr, j]
    t_sd = z * exploration * math.sqrt(t_sd)
    t_pos = max(mean[ctr] + t_sd, 0.0)
    t_neg = max(t_sd - mean[ctr], 0.0)
    for i in range(n):
        m[i] = a[i] / (a[i] + b[i])
        up = _quantile(a[i], b[i], z) - m[i]
        down = m[i] - _quantile(a[i], b[i], -z)
        gain[i] = t_pos * up + t_neg * down
        loss[i] = t_pos * down + t_neg * up
        s = base[i]
        for j in range(d):
            s += (m[i] if j == ctr else x[i, j]) * mean[j]
        mu[i] = s
    top = np.argsort(-mu, kind="mergesort")[:kk]
    centre = np.zeros(d)
    for t in range(kk):
        i = top[t]
        for j in range(d):
            centre[j] += m[i] if j == ctr else x[i, j]
    centre /= kk
    scale = z * exploration
    upper = np.empty(n)
    lower = np.empty(n)
    for i in range(n):
        spread = 0.0
        for c in range(d):
            v = 0.0
            for j in range(d):
                v += ((m[i] if j == ctr else x[i, j]) - centre[j]) * chol[j, c]
            v *= scale
            spread += v * v
        upper[i] = mu[i] + math.sqrt(spread + gain[i] * gain[i])
        lower[i] = mu[i] - math.sqrt(spread + loss[i] * loss[i])
    cut = np.sort(lower)[n - kk]  # the kk-th best lower end
    return np.flatnonzero(upper >= cut)


@_jit
def slate(
    x: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    base: np.ndarray,
    mean: np.ndarray,
    chol: np.ndarray,
    theta_normals: np.ndarray,
    ctr_normals: np.ndarray,
    ctr_draws: np.ndarray,
    exploration: float,
    kk: int,
    ctr: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, propensity, scores) over the candidates given (a shortlist): theta and each
    item's CTR drawn per sample, row 0 acted on, and each shown item's propensity the share
    of samples that put it at its position (value ties count, as in the reference).

    CTR draws are the Paulson quantiles of `ctr_normals`, unless `ctr_draws` (exact Beta
    draws, for shapes the quantile serves badly) has rows.
    """
    n, d = x.shape
    samples = theta_normals.shape[0]
    theta = np.empty((samples, d))
    for s in range(samples):
        for j in range(d):
            v = mean[j]
            for c in range(d):
                v += exploration * theta_normals[s, c] * chol[j, c]
            theta[s, j] = v
    exact = ctr_draws.shape[0] > 0
    scores = np.empty((samples, n))
    for s in range(samples):
        for i in range(n):
            v = base[i]
            for j in range(d):
                if j != ctr:
                    v += theta[s, j] * x[i, j]
            c = ctr_draws[s, i] if exact else _quantile(a[i], b[i], ctr_normals[s, i])
            scores[s, i] = v + c * theta[s, ctr]
    # Row 0's top kk, best first, ties to the lower index (a stable sort of -scores[0]).
    order = np.empty(kk, dtype=np.int64)
    taken = np.zeros(n, dtype=np.bool_)
    for t in range(kk):
        best = -1
        for i in range(n):
            if not taken[i] and (best < 0 or scores[0, i] > scores[0, best]):
                best = i
        taken[best] = True
        order[t] = best
    # Item order[t] is "at position t" in row s when its value is row s's t-th best:
    # (values above it) <= t < (values at or above it).
    hits = np.zeros(kk)
    for s in range(samples):
        for t in range(kk):
            v = scores[s, order[t]]
            above = 0
            at_or_above = 0
            for i in range(n):
                w = scores[s, i]
                if w > v:
                    above += 1
                    at_or_above += 1
                elif w == v:
                    at_or_above += 1
            if above <= t < at_or_above:
                hits[t] += 1.0
    top = np.empty(kk)
    for t in range(kk):
        top[t] = scores[0, order[t]]
    return order, hits / samples, top


def warm() -> None:
    """Compile (or load from the cache) both kernels now, not on a request. The argument
    types here are the ones `ThompsonPolicy` passes (float64 C arrays, a float
    exploration): other types would compile another version on first use."""
    if not AVAILABLE:
        return
    rng = np.random.default_rng(0)
    x = rng.random((4, 3))
    a, b = np.full(4, 2.0), np.full(4, 20.0)
    mean, chol, base = np.zeros(3), np.eye(3), np.zeros(4)
    keep = shortlist(x, a, b, mean, chol, base, 2, 1.0, 5.0, 1)
    slate(
        x[keep],
        a[keep],
        b[keep],
        base[keep],
        mean,
        chol,
        rng.standard_normal((2, 3)),
        rng.standard_normal((2, len(keep))),
        np.zeros((0, len(keep))),
        1.0,
        2,
        1,
    )
    log.debug("thompson kernels ready")
