"""A/B experiments: config, sticky assignment, and the report's statistics on planted logs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from offline.archive import write_events
from offline.experiment_output import render_markdown, write_outputs
from offline.experiment_report import (
    ExperimentResult,
    analyze,
    experiment_report,
    impression_outcomes,
)
from offline.experiment_sim import simulate_experiment
from offline.experiment_stats import chi2_sf, normal_quantile, normal_sf, ratio_and_variance
from online.experiments import (
    DEFAULT_EXPERIMENTS_CONFIG,
    Experiment,
    ExperimentsConfig,
    Variant,
    active_experiments,
    assign,
    load_experiments,
    route,
    variant_from_context,
)
from streamrec.errors import ConfigError, DataError
from streamrec.simulation import World, WorldParams

T0 = 1_780_000_000_000
DAY = 86_400_000
USERS = [f"user-{i}" for i in range(100_000)]


def ab(
    name: str = "ab", salt: str = "s1", shares: tuple[float, ...] = (0.5, 0.5), alpha: float = 0.05
) -> Experiment:
    variants = tuple(Variant(name=chr(ord("A") + i), share=s) for i, s in enumerate(shares))
    return Experiment(name=name, salt=salt, variants=variants, alpha=alpha)


# --- assignment ----------------------------------------------------------------------


def test_same_user_gets_the_same_variant_every_time_and_in_every_process() -> None:
    exp = ab(shares=(0.5, 0.3, 0.2), salt="golden-salt", name="golden")
    first = [assign(exp, u).name for u in USERS[:5000]]
    assert first == [assign(exp, u).name for u in USERS[:5000]]
    rebuilt = Experiment(**exp.model_dump())
    assert first == [assign(rebuilt, u).name for u in USERS[:5000]]
    # Pinned: a change to the hash would silently reshuffle every running experiment.
    assert first[:12] == ["A", "A", "C", "A", "C", "B", "C", "B", "A", "A", "A", "B"]
    code = (
        "from online.experiments import Experiment, Variant, assign\n"
        "e = Experiment(name='golden', salt='golden-salt', variants=[Variant(name='A', "
        "share=.5), Variant(name='B', share=.3), Variant(name='C', share=.2)])\n"
        "print(''.join(assign(e, f'user-{i}').name for i in range(2000)))"
    )
    for hashseed in ("1", "987"):  # Python's own hash differs per process; ours must not
        env = os.environ | {"PYTHONHASHSEED": hashseed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        assert out.stdout.strip() == "".join(first[:2000])


def test_shares_over_100k_users_are_within_one_percent_of_config() -> None:
    shares = (0.5, 0.3, 0.15, 0.05)
    exp = ab(shares=shares)
    counts = Counter(assign(exp, u).name for u in USERS)
    for v in exp.variants:
        assert abs(counts[v.name] / len(USERS) - v.share) < 0.01, (v.name, counts)


def test_changing_one_experiments_salt_moves_its_users_and_no_one_elses() -> None:
    cfg = ExperimentsConfig(experiments=(ab("one", "salt-1"), ab("two", "salt-2")))
    before = [route(cfg.experiments, u).assignments for u in USERS[:20_000]]
    resalted = ExperimentsConfig(experiments=(ab("one", "salt-1b"), ab("two", "salt-2")))
    after = [route(resalted.experiments, u).assignments for u in USERS[:20_000]]
    moved_one = np.mean([b[0] != a[0] for b, a in zip(before, after, strict=True)])
    moved_two = sum(b[1] != a[1] for b, a in zip(before, after, strict=True))
    assert moved_two == 0
    assert 0.45 < moved_one < 0.55  # the new salt really reshuffles (half change arm)
    # Different salts split users independently: no experiment's arm predicts another's.
    joint = Counter((b[0][1], b[1][1]) for b in before)
    for cell in joint.values():
        assert abs(cell / len(before) - 0.25) < 0.01, joint


def test_route_merges_overrides_and_gives_the_impression_context() -> None:
    one = Experiment(
        name="ranker",
        salt="r",
        variants=[Variant(name="A", share=0.5), Variant(name="B", share=0.5, policy="greedy")],
    )
    two = Experiment(
        name="explore",
        salt="e",
        variants=[Variant(name="low", share=0.5), Variant(name="high", share=0.5, exploration=0.3)],
    )
    assert route([], "u1").context == {}
    user = next(u for u in USERS if assign(one, u).name == "B" and assign(two, u).name == "high")
    r1 = route([one], user)
    assert r1.context == {"experiment": "ranker", "variant": "B"}
    assert (r1.policy, r1.exploration, r1.model) == ("greedy", None, None)
    r2 = route([one, two], user)
    assert r2.context == {"experiment": "ranker,explore", "variant": "B,high"}
    assert (r2.policy, r2.exploration) == ("greedy", 0.3)
    assert variant_from_context(r2.context, "explore") == "high"
    assert variant_from_context(r1.context, "ranker") == "B"
    assert variant_from_context({"policy": "x"}, "ranker") is None


# --- config --------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "experiments.toml"
    p.write_text(text)
    return p


EXAMPLE = """
[[experiments]]
name = "x"
salt = "s"
{extra}
[[experiments.variants]]
name = "A"
share = 0.5
[[experiments.variants]]
name = "B"
share = {share_b}
{variant_b}
"""


@pytest.mark.parametrize(
    ("extra", "share_b", "variant_b", "needle"),
    [
        ("", "0.6", "", "sum to 1"),
        ("colour = 'red'", "0.5", "", "colour"),
        ("", "0.5", "policy = 'epsilon'", "policy"),
        ("", "0.5", "exploration = 1.5", "exploration"),
        ("control = 'Z'", "0.5", "", "control"),
        ("min_users = 0", "0.5", "", "min_users"),
        ("salt = 's'", "0.5", "", "not valid TOML.*line 5"),  # a repeated key
    ],
)
def test_bad_config_is_refused_naming_the_key(
    tmp_path: Path, extra: str, share_b: str, variant_b: str, needle: str
) -> None:
    path = _write(tmp_path, EXAMPLE.format(extra=extra, share_b=share_b, variant_b=variant_b))
    with pytest.raises(ConfigError, match=needle):
        load_experiments(path)


def test_running_experiments_may_not_override_the_same_knob(tmp_path: Path) -> None:
    two = "\n".join(
        EXAMPLE.format(extra=extra, share_b="0.5", variant_b="policy = 'greedy'").replace(
            'name = "x"', f'name = "{name}"'
        )
        for name, extra in (("x", ""), ("y", ""))
    )
    with pytest.raises(ConfigError, match="confounded"):
        load_experiments(_write(tmp_path, two))
    apart = "\n".join(
        EXAMPLE.format(extra=extra, share_b="0.5", variant_b="policy = 'greedy'").replace(
            'name = "x"', f'name = "{name}"'
        )
        for name, extra in (
            ("x", "end = 2026-12-01T00:00:00Z"),
            ("y", "start = 2026-12-01T00:00:00Z"),
        )
    )
    cfg = load_experiments(_write(tmp_path, apart))
    nov, dec = 1_795_000_000_000, 1_796_900_000_000  # 2026-11-18 and 2026-12-10
    assert [e.name for e in active_experiments(cfg, nov)] == ["x"]
    assert [e.name for e in active_experiments(cfg, dec)] == ["y"]


def test_shipped_file_runs_nothing_and_its_example_is_valid() -> None:
    assert load_experiments().experiments == ()
    text = DEFAULT_EXPERIMENTS_CONFIG.read_text()
    example = text[text.index("# [[experiments]]") :]
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") else line.lstrip("#") for line in example.splitlines()
    )
    cfg = ExperimentsConfig(**tomllib.loads(uncommented))
    exp = cfg.experiments[0]
    assert [v.share for v in exp.variants] == [0.5, 0.5] and exp.control == "A"
    assert exp.is_active(1_795_500_000_000) and not exp.is_active(1_790_000_000_000)
    disabled = exp.model_copy(update={"enabled": False})
    assert not disabled.is_active(1_795_500_000_000)


# --- statistics ----------------------------------------------------------------------


def test_closed_form_distributions_match_scipy() -> None:
    for x in (0.0, 0.3, 1.0, 3.84, 10.0, 40.0):
        for dof in (1, 2, 3, 4, 7, 10):
            assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-15)
    for z in (-3.0, 0.0, 1.96, 5.0):
        assert normal_sf(z) == pytest.approx(stats.norm.sf(z), rel=1e-12)
    for p in (0.001, 0.5, 0.975, 0.9999):
        assert normal_quantile(p) == pytest.approx(stats.norm.ppf(p), abs=1e-9)


def test_delta_method_variance_matches_a_bootstrap() -> None:
    rng = np.random.default_rng(0)
    imp = rng.integers(1, 40, size=3000).astype(float)
    clk = rng.binomial(imp.astype(int), rng.beta(2, 20, size=3000)).astype(float)
    r, var = ratio_and_variance(clk, imp)
    boots = []
    for _ in range(400):
        i = rng.integers(0, 3000, size=3000)
        boots.append(clk[i].sum() / imp[i].sum())
    assert r == pytest.approx(clk.sum() / imp.sum())
    assert math.sqrt(var) == pytest.approx(np.std(boots), rel=0.15)


# --- the report on planted experiments ------------------------------------------------

WORLD = World(WorldParams(users=5000, items=1000, seed=1))
SESSIONS = 3000  # 30k impressions: the simulated sample size of these tests


def planted(
    exp: Experiment,
    seed: int,
    ctr_lift: dict[str, float] | None = None,
    lost_users: dict[str, float] | None = None,
) -> pd.DataFrame:
    return simulate_experiment(
        WORLD,
        exp,
        sessions=SESSIONS,
        start_ms=T0,
        span_ms=7 * DAY,
        ctr_lift=ctr_lift,
        lost_users=lost_users,
        seed=seed,
    )


def test_report_detects_a_planted_two_point_ctr_lift() -> None:
    exp = ab()
    result = analyze(impression_outcomes(planted(exp, 7, ctr_lift={"B": 0.02}), "ab"), exp)
    assert result.verdict_kind == "winner" and result.winner == "B", result.verdict
    assert result.verdict.startswith("B wins")
    ctr = next(c for c in result.comparisons if c.metric == "ctr")
    assert ctr.diff_ci[0] < 0.02 < ctr.diff_ci[1]
    assert not result.srm.mismatch
    # Power at this sample size, not one lucky seed: the lift is found in 19 of 20 runs.
    found = sum(
        analyze(impression_outcomes(planted(exp, s, ctr_lift={"B": 0.02}), "ab"), exp).winner == "B"
        for s in range(100, 120)
    )
    assert found >= 19


def test_report_flags_a_planted_sample_ratio_mismatch() -> None:
    # SRM is a check on user counts: it needs the users a real experiment has, here ~14k.
    world = World(WorldParams(users=20_000, items=1000, seed=2))
    exp = ab()

    def run(**kw: dict[str, float]) -> ExperimentResult:
        events = simulate_experiment(
            world, exp, sessions=30_000, start_ms=T0, span_ms=7 * DAY, seed=0, **kw
        )
        return analyze(impression_outcomes(events, "ab"), exp)

    healthy = run()
    assert not healthy.srm.mismatch and healthy.srm.p_value > 0.05
    # B's logging loses 10% of its users (say, a client build that drops impressions),
    # and the users it keeps click more: the report must not call B the winner.
    broken = run(lost_users={"B": 0.10}, ctr_lift={"B": 0.03})
    assert broken.srm.mismatch and broken.srm.p_value < exp.srm_alpha
    assert broken.verdict_kind == "srm" and broken.verdict.startswith("SRM: don't trust this")
    assert broken.srm.observed["B"] < 0.95 * broken.srm.observed["A"]


def test_report_flags_users_logged_under_two_variants() -> None:
    exp = ab()
    out = impression_outcomes(planted(exp, 4), "ab")
    swapped = out.copy()
    first = swapped.index[swapped["user_id"] == swapped["user_id"].iloc[0]][0]
    swapped.loc[first, "variant"] = "B" if swapped.loc[first, "variant"] == "A" else "A"
    result = analyze(swapped, exp)
    assert result.srm.crossover_users == 1 and result.verdict_kind == "srm"


def _binomial_upper(n: int, p: float, tail: float) -> int:
    """Smallest k with P(Binomial(n, p) > k) <= tail."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if 1 - cdf <= tail:
            return k
    return n


def test_aa_tests_declare_a_winner_at_most_at_the_configured_rate() -> None:
    runs, alpha = 200, 0.05
    bound = _binomial_upper(runs, alpha, 0.01)  # 18 of 200: alpha plus a 1% binomial margin
    winners = naive = 0
    for seed in range(runs):
        exp = ab(name="aa", salt=f"aa-{seed}", alpha=alpha)
        out = impression_outcomes(planted(exp, seed), "aa")
        winners += analyze(out, exp).verdict_kind == "winner"
        a, b = (out.loc[out["variant"] == v, "clicked"] for v in ("A", "B"))
        pooled = (a.sum() + b.sum()) / (len(a) + len(b))
        se = math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
        naive += 2 * normal_sf(abs(b.mean() - a.mean()) / se) < alpha
    assert winners <= bound, (winners, bound)
    # The check has teeth: treating impressions as independent (the textbook test)
    # finds "winners" in identical arms well above alpha on this clustered traffic.
    assert naive > bound, (naive, bound)


# --- attribution and the archive path ---------------------------------------------------


def test_clicks_and_conversions_are_attributed_by_their_definitions() -> None:
    ctx = json.dumps({"experiment": "ab", "variant": "A", "policy": "p"})
    other = json.dumps({"experiment": "other", "variant": "A"})
    rows = [
        # (type, user, item, ts_s, request, context)
        ("impression", "u1", "i1", 0, "r1", ctx),  # clicked, converted
        ("impression", "u1", "i2", 0, "r1", ctx),  # click on another request: not clicked
        ("impression", "u2", "i1", 0, "r2", ctx),  # click after the window: not clicked
        ("impression", "u3", "i3", 0, "r3", ctx),  # later impression of same pair takes credit
        ("impression", "u3", "i3", 100, "r4", ctx),
        ("impression", "u4", "i4", 0, "r5", other),  # another experiment: left out
        ("impression", "u5", "i5", 0, "r6", None),  # no experiment: left out
        ("click", "u1", "i1", 10, "r1", None),
        ("click", "u1", "i2", 10, "r9", None),
        ("click", "u2", "i1", 1801, "r2", None),
        ("purchase", "u1", "i1", 50, None, None),
        ("add_to_cart", "u3", "i3", 200, None, None),
        ("purchase", "u4", "i4", 10, None, None),
    ]
    events = pd.DataFrame(
        rows, columns=["event_type", "user_id", "item_id", "ts_ms", "request_id", "context"]
    )
    events["ts_ms"] = T0 + events["ts_ms"] * 1000
    out = impression_outcomes(events, "ab", attribution_s=1800).sort_values(["user_id", "ts_ms"])
    assert list(out["user_id"]) == ["u1", "u1", "u2", "u3", "u3"]
    assert list(out["clicked"]) == [True, False, False, False, False]
    assert list(out["converted"]) == [True, False, False, False, True]


def test_report_from_the_archive_writes_markdown_and_png(tmp_path: Path) -> None:
    exp = ab(name="arch")
    events = planted(exp, 11, ctr_lift={"B": 0.02})
    noise = planted(ab(name="unrelated"), 12)  # another experiment's traffic in the window
    archive = tmp_path / "archive"
    write_events(archive, pd.concat([events, noise], ignore_index=True), "sim")
    result = experiment_report(archive, exp, T0, T0 + 7 * DAY)
    direct = analyze(impression_outcomes(events, "arch"), exp)
    assert [v.impressions for v in result.variants] == [v.impressions for v in direct.variants]
    assert [v.clicks for v in result.variants] == [v.clicks for v in direct.variants]
    assert result.winner == direct.winner == "B"
    paths = write_outputs(result, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "**Verdict: B wins" in md and "| A | 50% |" in md and "report.png" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["winner"] == "B"
    assert "Sample ratio" in render_markdown(result, None)
    with pytest.raises(DataError, match="No impressions"):
        experiment_report(archive, ab(name="never-ran"), T0, T0 + DAY)


def test_cli_simulates_and_reports_an_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamrec.cli import app
    from streamrec.settings import get_settings

    cfg = _write(tmp_path, EXAMPLE.format(extra="", share_b="0.5", variant_b=""))
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        sim = runner.invoke(
            app,
            ["experiment", "simulate", "x", "--sessions", "3000", "--lift", "B=0.03",
             "--config", str(cfg)],
        )  # fmt: skip
        assert sim.exit_code == 0, sim.output
        rep = runner.invoke(app, ["experiment", "report", "x", "--config", str(cfg)])
        assert rep.exit_code == 0, rep.output
        assert "verdict: B wins" in rep.output
        assert (tmp_path / "data" / "experiments" / "x" / "report.png").exists()
        bad = runner.invoke(app, ["experiment", "report", "nope", "--config", str(cfg)])
        assert isinstance(bad.exception, ConfigError) and "No experiment 'nope'" in str(
            bad.exception
        )
    finally:
        get_settings.cache_clear()
