"""Small statistics for experiment reports: normal tail and quantile, chi-square tail,
and the delta-method variance of a ratio of per-user sums.

Plain math, so the report needs no SciPy; the tests hold each to SciPy."""

from __future__ import annotations

import math

import numpy as np


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """z with P(Z <= z) = p (bisection on erfc: exact to 1e-12, no SciPy needed)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - normal_sf(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for chi-square with integer `dof` (closed forms; odd dof through erfc)."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if x <= 0:
        return 1.0
    half = x / 2.0
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, dof // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(2.0 * x / math.pi) * math.exp(-half)
    for i in range(1, (dof - 1) // 2 + 1):
        total += term
        term *= x / (2 * i + 1)
    return min(1.0, total)


def ratio_and_variance(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """sum(num)/sum(den) over users and its delta-method variance (users independent)."""
    n = len(den)
    if n == 0 or den.sum() == 0:
        return float("nan"), float("nan")
    mx = den.mean()
    r = num.sum() / den.sum()
    if n < 2:
        return float(r), float("nan")
    cov = np.cov(np.stack([num, den]).astype(np.float64), ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mx * mx)
    return float(r), float(max(var, 0.0))
