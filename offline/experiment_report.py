"""The A/B report: per-variant CTR and conversion from the archive, tests, SRM, a verdict.

Definitions (what the numbers mean):

- **Impression**: an `impression` event whose context names the experiment
  (`context.experiment`/`context.variant`, see `online.experiments`), inside the window.
- **Click**: the impression is clicked if a `click` with the same `request_id` and
  `item_id` arrives within `attribution_s` after it (60 s of clock skew tolerated).
- **Conversion**: an `add_to_cart` or `purchase` of the same user and item, credited to
  the latest impression of that pair at most `attribution_s` before it (last touch); an
  impression converts if at least one such event is credited to it.
- CTR = clicked impressions / impressions; conversion rate = converted / impressions.

Users are the unit of randomisation, and one user's impressions are not independent (a
heavy user who likes the catalogue clicks many of them). Treating impressions as
independent trials, as the textbook two-proportion test and the Wilson interval do,
understates the variance and declares false winners far more often than alpha. So the
variance of each rate is the delta-method variance of a ratio of per-user sums, and the
two-proportion z-test uses it (with one impression per user both reduce to the textbook
unpooled versions). With several treatments, each is tested against control at
alpha / (number of treatments) (Bonferroni).

The sample-ratio-mismatch check is a chi-square goodness-of-fit test of the number of
users per variant against the configured shares; a p-value under `srm_alpha` (or users
logged under two variants) means assignment or logging is broken and no other number
in the report can be trusted.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from offline.archive import read_events
from offline.experiment_stats import chi2_sf, normal_quantile, normal_sf, ratio_and_variance
from online.experiments import Experiment, variant_from_context
from streamrec.errors import DataError

log = logging.getLogger(__name__)

CONVERSION_EVENTS = ("add_to_cart", "purchase")
CLOCK_SKEW_MS = 60_000
DEFAULT_ATTRIBUTION_S = 1800

# --- statistics ------------------------------------------------------------------------


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class VariantStats:
    name: str
    share: float  # configured
    users: int
    impressions: int
    clicks: int
    conversions: int
    ctr: Rate
    conversion: Rate


@dataclass(frozen=True)
class Comparison:
    variant: str
    metric: str
    diff: float  # treatment - control, absolute
    diff_ci: tuple[float, float]
    relative: float  # diff / control
    z: float
    p_value: float
    alpha: float  # after the multiple-comparison correction
    significant: bool


@dataclass(frozen=True)
class SrmCheck:
    chi2: float
    p_value: float
    observed: dict[str, int]
    expected: dict[str, float]
    crossover_users: int  # users logged under more than one variant
    unknown_variants: dict[str, int]  # impressions naming a variant the config lacks
    mismatch: bool


VerdictKind = Literal["winner", "none", "srm", "insufficient"]


@dataclass(frozen=True)
class ExperimentResult:
    experiment: str
    control: str
    metric: str
    since_ms: int | None
    until_ms: int | None
    variants: list[VariantStats]
    comparisons: list[Comparison]
    srm: SrmCheck
    verdict: str
    verdict_kind: VerdictKind
    winner: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- from events to per-impression outcomes --------------------------------------------


def _context_key(c: object) -> str | None:
    """Archive contexts are JSON text; in-memory ones may be dicts (made hashable here)."""
    if isinstance(c, dict):
        return json.dumps(c, sort_keys=True)
    return c if isinstance(c, str) else None


def _variant_of(context_json: str | None, experiment: str) -> str | None:
    if context_json is None or experiment not in context_json:
        return None
    try:
        ctx = json.loads(context_json)
    except ValueError:
        return None
    return variant_from_context(ctx, experiment) if isinstance(ctx, dict) else None


def impression_outcomes(
    events: pd.DataFrame,
    experiment: str,
    *,
    until_ms: int | None = None,
    attribution_s: int = DEFAULT_ATTRIBUTION_S,
) -> pd.DataFrame:
    """One row per impression of `experiment` before `until_ms`: user, variant, clicked, converted.

    `events` needs the archive columns plus `request_id` and `context` (JSON text or dict);
    events after `until_ms` are used only to attribute clicks and conversions.
    """
    window = attribution_s * 1000
    etype = events["event_type"].to_numpy(dtype=object)
    imp = events[etype == "impression"]
    if until_ms is not None:
        imp = imp[imp["ts_ms"].to_numpy() < until_ms]
    # Contexts repeat (a few variants x policies x models): decode each distinct one once.
    try:
        codes, uniques = pd.factorize(imp["context"], use_na_sentinel=True)
    except TypeError:  # dicts (unhashable) in an in-memory frame
        codes, uniques = pd.factorize(imp["context"].map(_context_key), use_na_sentinel=True)
    decoded = np.array(
        [_variant_of(_context_key(c), experiment) for c in uniques] + [None], dtype=object
    )
    variants = decoded[codes]  # the sentinel -1 picks the trailing None
    out = pd.DataFrame(
        {
            "user_id": imp["user_id"].to_numpy(dtype=object),
            "item_id": imp["item_id"].to_numpy(dtype=object),
            "request_id": imp["request_id"].to_numpy(dtype=object),
            "ts_ms": imp["ts_ms"].to_numpy(dtype=np.int64),
            "variant": variants,
        }
    )
    out = out[out["variant"].notna()].reset_index(drop=True)
    out["row"] = np.arange(len(out))

    clicks = events.loc[etype == "click", ["request_id", "item_id", "ts_ms"]]
    joined = out[["row", "request_id", "item_id", "ts_ms"]].merge(
        clicks, on=["request_id", "item_id"], suffixes=("", "_click")
    )
    dt = joined["ts_ms_click"] - joined["ts_ms"]
    hit = joined.loc[(dt >= -CLOCK_SKEW_MS) & (dt <= window), "row"].unique()
    out["clicked"] = out["row"].isin(hit)

    conv = events.loc[np.isin(etype, CONVERSION_EVENTS), ["user_id", "item_id", "ts_ms"]]
    out["converted"] = False
    if len(conv) and len(out):
        left = conv.sort_values("ts_ms").reset_index(drop=True)
        right = out[["row", "user_id", "item_id", "ts_ms"]].sort_values("ts_ms")
        credited = pd.merge_asof(
            left.astype({"ts_ms": np.int64}),
            right.astype({"ts_ms": np.int64}),
            on="ts_ms",
            by=["user_id", "item_id"],
            direction="backward",
            tolerance=window,
        )
        rows = credited["row"].dropna().astype(np.int64).unique()
        out.loc[out["row"].isin(rows), "converted"] = True
    return out.drop(columns=["row", "request_id"])


# --- the analysis ----------------------------------------------------------------------


def _rate(num: np.ndarray, den: np.ndarray, z: float) -> tuple[Rate, float]:
    r, var = ratio_and_variance(num, den)
    half = z * math.sqrt(var) if var == var else float("nan")
    return Rate(r, max(0.0, r - half), min(1.0, r + half)), var


def _srm(exp: Experiment, per_user: pd.DataFrame, unknown: dict[str, int]) -> SrmCheck:
    variant_of_user = per_user.groupby("user_id")["variant"].nunique()
    crossover = int((variant_of_user > 1).sum())
    observed = {v.name: 0 for v in exp.variants}
    counts = per_user.drop_duplicates("user_id")["variant"].value_counts()
    for name, n in counts.items():
        if name in observed:
            observed[str(name)] = int(n)
    total = sum(observed.values())
    expected = {v.name: total * v.share for v in exp.variants}
    chi2 = sum((observed[k] - e) ** 2 / e for k, e in expected.items() if e > 0)
    p = chi2_sf(chi2, len(expected) - 1) if total else 1.0
    mismatch = p < exp.srm_alpha or crossover > 0
    return SrmCheck(chi2, p, observed, expected, crossover, unknown, mismatch)


def analyze(
    outcomes: pd.DataFrame,
    exp: Experiment,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> ExperimentResult:
    """Per-variant rates with CIs, tests against control, SRM and the verdict."""
    known = {v.name for v in exp.variants}
    is_known = outcomes["variant"].isin(known)
    unknown = {str(k): int(n) for k, n in outcomes.loc[~is_known, "variant"].value_counts().items()}
    data = outcomes[is_known]
    per_user = (
        data.groupby(["user_id", "variant"], sort=False)
        .agg(imp=("clicked", "size"), clk=("clicked", "sum"), cnv=("converted", "sum"))
        .reset_index()
    )
    z_ci = normal_quantile(1 - exp.alpha / 2)
    stats: dict[str, VariantStats] = {}
    arrays: dict[str, dict[str, tuple[float, float]]] = {}
    for v in exp.variants:
        g = per_user[per_user["variant"] == v.name]
        imp, clk, cnv = (g[c].to_numpy(dtype=np.float64) for c in ("imp", "clk", "cnv"))
        ctr, ctr_var = _rate(clk, imp, z_ci)
        conv, conv_var = _rate(cnv, imp, z_ci)
        arrays[v.name] = {"ctr": (ctr.value, ctr_var), "conversion": (conv.value, conv_var)}
        stats[v.name] = VariantStats(
            v.name, v.share, len(g), int(imp.sum()), int(clk.sum()), int(cnv.sum()), ctr, conv
        )
    control = exp.control_variant.name
    treatments = [v.name for v in exp.variants if v.name != control]
    alpha_each = exp.alpha / len(treatments)
    z_each = normal_quantile(1 - alpha_each / 2)
    comparisons = []
    for metric in ("ctr", "conversion"):
        c_val, c_var = arrays[control][metric]
        for t in treatments:
            t_val, t_var = arrays[t][metric]
            diff = t_val - c_val
            se = math.sqrt(c_var + t_var) if c_var == c_var and t_var == t_var else float("nan")
            z = diff / se if se > 0 else 0.0
            p = 2 * normal_sf(abs(z)) if se > 0 else 1.0
            ci = (diff - z_each * se, diff + z_each * se) if se == se else (diff, diff)
            rel = diff / c_val if c_val else float("nan")
            comparisons.append(
                Comparison(t, metric, diff, ci, rel, z, p, alpha_each, bool(p < alpha_each))
            )
    srm = _srm(exp, per_user, unknown)
    verdict, kind, winner = _verdict(exp, stats, comparisons, srm)
    return ExperimentResult(
        exp.name,
        control,
        exp.metric,
        since_ms,
        until_ms,
        list(stats.values()),
        comparisons,
        srm,
        verdict,
        kind,
        winner,
    )


def _verdict(
    exp: Experiment,
    stats: dict[str, VariantStats],
    comparisons: list[Comparison],
    srm: SrmCheck,
) -> tuple[str, VerdictKind, str | None]:
    if srm.mismatch:
        why = (
            f"{srm.crossover_users} user(s) logged under more than one variant"
            if srm.crossover_users
            else f"user counts {srm.observed} vs expected shares, p = {srm.p_value:.2g}"
        )
        return f"SRM: don't trust this ({why})", "srm", None
    small = [s.name for s in stats.values() if s.users < exp.min_users]
    if small:
        return (
            f"not enough data yet: fewer than {exp.min_users} users in {', '.join(small)}",
            "insufficient",
            None,
        )
    primary = [c for c in comparisons if c.metric == exp.metric and c.significant]
    better = [c for c in primary if c.diff > 0]
    if better:
        best = max(better, key=lambda c: c.diff)
        return (
            f"{best.variant} wins ({exp.metric} {best.diff:+.2%} absolute, p = {best.p_value:.2g})",
            "winner",
            best.variant,
        )
    if primary:
        control = exp.control_variant.name
        losers = ", ".join(c.variant for c in primary)
        return f"{control} wins ({losers} significantly worse on {exp.metric})", "winner", control
    return f"no significant difference in {exp.metric} at alpha = {exp.alpha}", "none", None


def experiment_report(
    archive_dir: Path,
    exp: Experiment,
    since_ms: int | None = None,
    until_ms: int | None = None,
    attribution_s: int = DEFAULT_ATTRIBUTION_S,
) -> ExperimentResult:
    """Read the experiment's window from the archive and analyse it.

    The window defaults to the experiment's own `start`/`end`; events up to
    `attribution_s` past its end are read to attribute late clicks and conversions.
    """
    start, end = exp.window_ms
    since_ms = since_ms if since_ms is not None else start
    until_ms = until_ms if until_ms is not None else end
    read_until = None if until_ms is None else until_ms + attribution_s * 1000
    events = read_events(archive_dir, since_ms, read_until, columns=("request_id", "context"))
    outcomes = impression_outcomes(events, exp.name, until_ms=until_ms, attribution_s=attribution_s)
    if outcomes.empty:
        raise DataError(
            f"No impressions of experiment {exp.name!r} in the archive at '{archive_dir}' for "
            "this window. Check that serving logs context.experiment/context.variant "
            "(online.experiments.route) and that --since/--until cover the experiment."
        )
    log.info("experiment %s: %d impressions", exp.name, len(outcomes))
    return analyze(outcomes, exp, since_ms, until_ms)


# --- outputs ---------------------------------------------------------------------------


# --- planted experiments ---------------------------------------------------------------
