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
from online.experiments import Experiment, variant_from_context
from streamrec.errors import DataError

log = logging.getLogger(__name__)

CONVERSION_EVENTS = ("add_to_cart", "purchase")
CLOCK_SKEW_MS = 60_000
DEFAULT_ATTRIBUTION_S = 1800

# --- statistics ------------------------------------------------------------------------


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


def _pct(r: Rate) -> str:
    return f"{r.value:.2%} [{r.ci_low:.2%}, {r.ci_high:.2%}]"


def render_markdown(result: ExperimentResult, plot_name: str | None = "report.png") -> str:
    """The report as markdown (the plot linked by `plot_name`)."""
    from offline.report import _fmt_ms

    r = result
    lines = [
        f"# Experiment `{r.experiment}`",
        "",
        f"**Verdict: {r.verdict}**",
        "",
        f"Window: {_fmt_ms(r.since_ms)} to {_fmt_ms(r.until_ms)}. Control: `{r.control}`. "
        f"Decided on: {r.metric}. Intervals: 1 - alpha, user-clustered (delta method).",
        "",
        "| variant | share | users | impressions | clicks | CTR [CI] | conversions | "
        "conversion [CI] |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for s in r.variants:
        lines.append(
            f"| {s.name} | {s.share:.0%} | {s.users:,} | {s.impressions:,} | {s.clicks:,} | "
            f"{_pct(s.ctr)} | {s.conversions:,} | {_pct(s.conversion)} |"
        )
    lines += [
        "",
        f"## Against control `{r.control}` (two-proportion z-test, user-clustered)",
        "",
        "Alpha and the difference intervals are Bonferroni-corrected for the number of treatments.",
        "",
        "| variant | metric | difference [CI] | relative | z | p | alpha | significant |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for c in r.comparisons:
        lines.append(
            f"| {c.variant} | {c.metric} | {c.diff:+.2%} [{c.diff_ci[0]:+.2%}, "
            f"{c.diff_ci[1]:+.2%}] | {c.relative:+.1%} | {c.z:.2f} | {c.p_value:.3g} | "
            f"{c.alpha:.3g} | {'yes' if c.significant else 'no'} |"
        )
    srm = r.srm
    lines += [
        "",
        "## Sample ratio",
        "",
        f"Chi-square {srm.chi2:.2f}, p = {srm.p_value:.3g} "
        f"({'MISMATCH' if srm.mismatch else 'ok'}). Users per variant: "
        + ", ".join(f"{k} {v:,} (expected {srm.expected[k]:,.0f})" for k, v in srm.observed.items())
        + ".",
    ]
    if srm.crossover_users:
        lines.append(f"\n{srm.crossover_users:,} user(s) were logged under more than one variant.")
    if srm.unknown_variants:
        lines.append(f"\nImpressions naming variants not in the config: {srm.unknown_variants}.")
    if plot_name:
        lines += ["", f"![rates by variant]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_plot(path: Path, result: ExperimentResult) -> None:
    """CTR and conversion per variant with their intervals, and users vs configured share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in result.variants]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, metric in zip(axes[:2], ("ctr", "conversion"), strict=True):
        rates = [getattr(s, metric) for s in result.variants]
        vals = np.array([q.value for q in rates])
        err = np.array([[q.value - q.ci_low for q in rates], [q.ci_high - q.value for q in rates]])
        colours = ["#888888" if n == result.control else "#1f77b4" for n in names]
        ax.bar(x, vals, yerr=err, capsize=6, color=colours)
        ax.set_xticks(x, names)
        ax.set_title(f"{'CTR' if metric == 'ctr' else 'Conversion rate'} (grey = control)")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(axis="y", alpha=0.3)
    srm = result.srm
    total = max(1, sum(srm.observed.values()))
    axes[2].bar(x - 0.2, [srm.observed[n] / total for n in names], 0.4, label="observed")
    axes[2].bar(x + 0.2, [s.share for s in result.variants], 0.4, label="configured")
    axes[2].set_xticks(x, names)
    axes[2].set_title(f"Users per variant (SRM p = {srm.p_value:.2g})")
    axes[2].legend()
    fig.suptitle(f"{result.experiment}: {result.verdict}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: ExperimentResult, out_dir: Path) -> dict[str, Path]:
    """report.md, report.png and result.json under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "plot": out_dir / "report.png",
        "json": out_dir / "result.json",
    }
    write_plot(paths["plot"], result)
    paths["markdown"].write_text(render_markdown(result, paths["plot"].name))
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return paths


# --- planted experiments ---------------------------------------------------------------


def simulate_experiment(
    world: Any,
    exp: Experiment,
    *,
    sessions: int,
    start_ms: int,
    span_ms: int,
    ctr_lift: dict[str, float] | None = None,
    lost_users: dict[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Archive-shaped events of `exp` running on a `streamrec.simulation.World`.

    Users arrive by the world's activity, see a popularity-drawn slate and click by its
    click model, plus `ctr_lift[variant]` (absolute; 0.02 = a 2-point CTR lift) for the
    users `assign` puts in that variant. `lost_users[variant]` is the share of that
    variant's users whose events never reach the log: a planted sample-ratio mismatch.
    """
    from online.experiments import assign

    p = world.params
    rng = np.random.default_rng(seed)
    lift, lost = ctr_lift or {}, lost_users or {}
    names = [v.name for v in exp.variants]
    users = rng.choice(p.users, size=sessions, p=world.activity)
    seen = np.unique(users)
    variant_of = np.zeros(p.users, dtype=np.int64)
    variant_of[seen] = [names.index(assign(exp, f"u{u}").name) for u in seen]
    lift_of = np.array([lift.get(n, 0.0) for n in names])[variant_of]
    lose_of = rng.random(p.users) < np.array([lost.get(n, 0.0) for n in names])[variant_of]
    users = users[~lose_of[users]]
    n = len(users)
    slates = rng.choice(p.items, size=(n, p.slate), p=world.popularity).ravel()
    position = np.tile(np.arange(p.slate), n)
    u_rep = np.repeat(users, p.slate)
    prob = world.click_prob(u_rep, slates, position) + lift_of[u_rep]
    clicked = rng.random(prob.shape) < np.clip(prob, 0.0, 1.0)
    cart = clicked & (rng.random(prob.shape) < p.cart_rate)
    buy = cart & (rng.random(prob.shape) < p.purchase_rate)
    t_imp = np.repeat(start_ms + np.sort(rng.integers(0, span_ms, size=n)), p.slate)
    # Every event is (impression row, type): impressions, then their reactions.
    parts = [np.arange(n * p.slate)] + [np.flatnonzero(m) for m in (clicked, cart, buy)]
    row = np.concatenate(parts)
    kind = np.repeat(np.arange(4), [len(x) for x in parts])
    delay = np.array([0, 5_000, 60_000, 120_000])[kind] + 1000 * position[row] * (kind > 0)
    ts = t_imp[row] + delay
    order = np.argsort(ts, kind="stable")
    row, kind, ts = row[order], kind[order], ts[order]
    none = np.array([None], dtype=object)
    req = np.repeat(np.array([f"r{seed}-{i}" for i in range(n)], dtype=object), p.slate)
    ctx = np.array(
        [json.dumps({"experiment": exp.name, "variant": nm, "policy": "sim"}) for nm in names],
        dtype=object,
    )[variant_of[u_rep]]
    return pd.DataFrame(
        {
            "event_id": f"x{seed}-" + pd.RangeIndex(len(row)).astype(str),
            "event_type": np.array(["impression", "click", "add_to_cart", "purchase"])[kind],
            "user_id": np.array([f"u{u}" for u in range(p.users)], dtype=object)[u_rep[row]],
            "item_id": np.array([f"i{i}" for i in range(p.items)], dtype=object)[slates[row]],
            "ts_ms": ts,
            "request_id": np.where(kind <= 1, req[row], none),
            "position": np.where(kind <= 1, position[row].astype(object), none),
            "context": np.where(kind == 0, ctx[row], none),
        }
    )
