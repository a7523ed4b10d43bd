"""Off-policy evaluation: parity with obp, truth on simulated logs, our log end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import obp
import pandas as pd
import pytest
from obp.ope import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedInverseProbabilityWeighting,
)
from typer.testing import CliRunner

from models.bandit import FEATURE_NAMES, Candidates, RandomPolicy
from models.bandit_learning import BanditStats, CtrLearner
from offline import ope, ope_log, ope_policies, ope_reward
from offline.archive import write_events
from streamrec.cli import app
from streamrec.errors import DataError
from tests.unit import ope_sim as sim

OBD_DIR = Path(obp.__file__).parent / "dataset" / "obd" / "random" / "all"
M, K = 6, 3  # simulated candidates per request, slots shown


# --- helpers ----------------------------------------------------------------------------------


@cache
def truth(name: str) -> float:
    return sim.true_value(POLICIES[name], M, K)


POLICIES = {"uniform": sim.UNIFORM, "soft": sim.SOFT_GOOD, "greedy": sim.GREEDY_GOOD}


class ExactPolicy:
    """A simulator policy with exactly enumerated marginals, as a SlatePolicy."""

    def __init__(self, policy: sim.Policy) -> None:
        self.policy = policy
        self.spec = "exact"

    def action_dist(self, fb: ope_log.LoggedFeedback) -> np.ndarray:
        return sim.marginals(self.policy, fb.candidates, fb.len_list)


def feedback(log: sim.Log, pscore: np.ndarray | None = None) -> ope_log.LoggedFeedback:
    return ope_log.LoggedFeedback(
        action=log.action,
        position=log.position,
        reward=log.reward,
        pscore=log.pscore if pscore is None else pscore,
        slate=log.request,
        candidates=log.x,
        valid=np.ones(log.x.shape[:2], dtype=bool),
        len_list=log.k,
        feature_names=FEATURE_NAMES,
        groups=log.request,
        source="simulator",
    )


@pytest.fixture(scope="module")
def big_log() -> sim.Log:
    return sim.simulate(20_000, M, K, seed=0)


# --- parity with obp on the Open Bandit Dataset sample ----------------------------------------


@pytest.fixture(scope="module")
def obd() -> dict[str, np.ndarray]:
    """The shipped OBD sample read with pandas alone, as obp's loader would build it."""
    df = pd.read_csv(OBD_DIR / "all.csv", index_col=0)
    return {
        "action": df["item_id"].to_numpy(),
        "position": df["position"].rank(method="dense").to_numpy(dtype=int) - 1,
        "reward": df["click"].to_numpy(dtype=float),
        "pscore": df["propensity_score"].to_numpy(dtype=float),
    }


def test_read_obd_builds_the_arrays_obp_would(obd: dict[str, np.ndarray]) -> None:
    fb = ope_log.read_obd(OBD_DIR / "all.csv")
    for name in ("action", "position", "reward", "pscore"):
        np.testing.assert_array_equal(getattr(fb, name), obd[name])
    assert fb.len_list == 3 and fb.candidates.shape[:2] == (1, 80)
    assert obd["position"].min() == 0 and obd["reward"].sum() == 38


def _obp_values(
    obd: dict[str, np.ndarray], action_dist: np.ndarray, q_hat: np.ndarray
) -> dict[str, float]:
    kw = {**obd, "action_dist": action_dist}
    return {
        "ips": InverseProbabilityWeighting().estimate_policy_value(**kw),
        "snips": SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**kw),
        "dm": DirectMethod().estimate_policy_value(
            position=obd["position"],
            action_dist=action_dist,
            estimated_rewards_by_reg_model=q_hat,
        ),
        "dr": DoublyRobust().estimate_policy_value(estimated_rewards_by_reg_model=q_hat, **kw),
    }


def test_parity_with_obp_on_obd_dirichlet_policy(obd: dict[str, np.ndarray]) -> None:
    n = obd["action"].shape[0]
    rng = np.random.default_rng(7)
    action_dist = rng.dirichlet(np.full(80, 0.3), size=(n, 3)).transpose(0, 2, 1)
    fb = ope_log.read_obd(OBD_DIR / "all.csv")
    table = ope_reward.reward_table(fb, n_folds=2, seed=0)
    q_hat = table.values[table.index]  # materialised: obp takes [n, 80, 3]
    expected = _obp_values(obd, action_dist, q_hat)
    ours = {
        "ips": ope.ips(**obd, action_dist=action_dist),
        "snips": ope.snips(**obd, action_dist=action_dist),
        "dm": ope.dm(action_dist, q_hat, position=obd["position"]),
        "dr": ope.dr(**obd, action_dist=action_dist, estimated_rewards_by_reg_model=q_hat),
    }
    res = ope.evaluate(
        obd["action"], obd["position"], obd["reward"], obd["pscore"], action_dist, table
    )
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
        assert res.estimates[name].value == pytest.approx(value, abs=1e-6), name
    # The policy is informative and the numbers are not degenerate.
    assert 0 < expected["dm"] < 0.02 and expected["ips"] > 0


def test_parity_with_obp_on_obd_deterministic_policy(obd: dict[str, np.ndarray]) -> None:
    fb = ope_log.read_obd(OBD_DIR / "all.csv")
    policy = ope_policies.parse_policy("linear:item_feature_0=-1")
    dist = policy.action_dist(fb)  # [1, 80, 3], the same for every round
    assert dist.shape == (1, 80, 3) and set(np.unique(dist)) == {0.0, 1.0}
    table = ope_reward.reward_table(fb, n_folds=1)
    expected = _obp_values(
        obd, np.repeat(dist, fb.n_rounds, axis=0), np.repeat(table.values, fb.n_rounds, axis=0)
    )
    res = ope_log.evaluate_policy(fb, policy, n_folds=1, n_resamples=50)
    assert res.weights.mean == pytest.approx(1.0, abs=0.1)  # 80 slots per 80 items, roughly
    for name, value in expected.items():
        assert res.estimates[name].value == pytest.approx(value, abs=1e-6), name


# --- bootstrap ----------------------------------------------------------------------------------


def test_vectorised_bootstrap_equals_a_plain_loop(big_log: sim.Log) -> None:
    """The matrix-product bootstrap against resampling requests one by one (the oracle)."""
    log = sim.simulate(300, M, K, seed=3)
    ad = sim.marginals(sim.SOFT_GOOD, log.x, K)[log.request]
    q = np.full_like(ad, 0.1)
    terms = {
        e: ope.round_terms(e, log.action, log.position, log.reward, log.pscore, ad, q)
        for e in ope.ESTIMATORS
    }
    fast = ope.bootstrap(terms, groups=log.request, n_resamples=40, seed=5)
    counts = np.concatenate(list(ope.resample_counts(300, 40, np.random.default_rng(5))))
    fns: dict[str, Callable[[np.ndarray], float]] = {
        "ips": lambda i: ope.ips(
            log.reward[i], log.action[i], log.pscore[i], ad[i], log.position[i]
        ),
        "snips": lambda i: ope.snips(
            log.reward[i], log.action[i], log.pscore[i], ad[i], log.position[i]
        ),
        "dm": lambda i: ope.dm(ad[i], q[i], log.position[i]),
        "dr": lambda i: ope.dr(
            log.reward[i], log.action[i], log.pscore[i], ad[i], q[i], log.position[i]
        ),
    }
    for b in range(40):
        rows = np.concatenate(
            [
                np.flatnonzero(log.request == g)
                for g in np.repeat(np.arange(300), counts[b].astype(int))
            ]
        )
        for e, fn in fns.items():
            assert fast[e][b] == pytest.approx(fn(rows), abs=1e-12), (e, b)


def test_bootstrap_is_seeded_and_shrinks_with_data(big_log: sim.Log) -> None:
    fb = feedback(big_log)
    policy = ExactPolicy(sim.SOFT_GOOD)
    a = ope_log.evaluate_policy(fb, policy, estimators=("ips",), n_resamples=300, seed=1)
    b = ope_log.evaluate_policy(fb, policy, estimators=("ips",), n_resamples=300, seed=1)
    c = ope_log.evaluate_policy(fb, policy, estimators=("ips",), n_resamples=300, seed=2)
    assert a.estimates == b.estimates
    assert a.estimates["ips"].ci_low != c.estimates["ips"].ci_low
    small = feedback(sim.simulate(2_000, M, K, seed=0))
    d = ope_log.evaluate_policy(small, policy, estimators=("ips",), n_resamples=300, seed=1)
    wide = d.estimates["ips"].ci_high - d.estimates["ips"].ci_low
    narrow = a.estimates["ips"].ci_high - a.estimates["ips"].ci_low
    assert 2.0 < wide / narrow < 5.0  # about sqrt(10)
    e = a.estimates["ips"]
    assert e.ci_low < e.value < e.ci_high


# --- truth on simulated logs ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_dr_interval_contains_the_true_value(big_log: sim.Log, name: str) -> None:
    res = ope_log.evaluate_policy(feedback(big_log), ExactPolicy(POLICIES[name]), seed=0)
    dr = res.estimates["dr"]
    assert dr.ci_low <= truth(name) <= dr.ci_high, (name, truth(name), dr)
    assert abs(dr.value - truth(name)) < 0.015
    assert res.weights.mean == pytest.approx(1.0, abs=0.06)  # greedy: sd of the mean ~0.017
    # The policies differ from the logger (CTR ~0.118) by far more than the interval.
    assert truth(name) - res.logged_reward > 2 * (dr.ci_high - dr.ci_low)


@pytest.mark.parametrize("name", ["soft", "greedy", "uniform"])
def test_ips_with_wrong_propensities_is_biased(big_log: sim.Log, name: str) -> None:
    """Uniform propensities (the logger was not uniform) or another policy's: truth is
    outside IPS's interval by a wide margin, while the right propensities cover it."""
    policy = ExactPolicy(POLICIES[name])
    uniform = np.full(big_log.pscore.shape, 1.0 / M)  # P(a at k) of a uniform logger
    other = sim.marginals(sim.Policy(-sim.LOGGER.weights), big_log.x, K)  # its opposite
    other_ps = other[big_log.request, big_log.action, big_log.position]
    right = ope_log.evaluate_policy(feedback(big_log), policy, estimators=("ips",), n_resamples=300)
    assert right.estimates["ips"].ci_low <= truth(name) <= right.estimates["ips"].ci_high
    for wrong in (uniform, other_ps):
        res = ope_log.evaluate_policy(
            feedback(big_log, wrong), policy, estimators=("ips",), n_resamples=300
        )
        ips = res.estimates["ips"]
        miss = max(ips.ci_low - truth(name), truth(name) - ips.ci_high)
        assert miss > 0.02, (name, truth(name), ips)
    # The mean-weight diagnostic flags another policy's propensities (a uniform guess
    # against a uniform candidate gives weights of exactly 1: it cannot see that one).
    res = ope_log.evaluate_policy(
        feedback(big_log, other_ps), policy, estimators=("ips",), n_resamples=10
    )
    assert abs(res.weights.mean - 1.0) > 0.1


def test_dr_survives_a_wrong_reward_model_dm_does_not(big_log: sim.Log) -> None:
    fb = feedback(big_log)
    policy = ExactPolicy(sim.GREEDY_GOOD)
    dist = ope.PerSlate(policy.action_dist(fb), fb.slate)
    flat = np.full((1, M, K), big_log.reward.mean())  # ignores x and slot: wrong
    q_bad = ope.PerSlate(flat, np.zeros(fb.n_rounds, dtype=np.int64))
    res = ope.evaluate(fb.action, fb.position, fb.reward, fb.pscore, dist, q_bad, groups=fb.groups)
    assert res.estimates["dr"].ci_low <= truth("greedy") <= res.estimates["dr"].ci_high
    assert truth("greedy") - res.estimates["dm"].ci_high > 0.1


def test_dr_covers_the_truth_across_seeds() -> None:
    """Calibration, not one lucky seed: 95 % intervals cover in most of 24 seeded runs."""
    covered = 0
    runs = 0
    for seed in range(12):
        fb = feedback(sim.simulate(3_000, M, K, seed=100 + seed))
        for name in ("uniform", "soft"):
            res = ope_log.evaluate_policy(
                fb, ExactPolicy(POLICIES[name]), estimators=("dr",), n_resamples=300, seed=seed
            )
            dr = res.estimates["dr"]
            covered += dr.ci_low <= truth(name) <= dr.ci_high
            runs += 1
    assert covered / runs >= 0.75, f"{covered}/{runs}"


# --- estimator input checks -------------------------------------------------------------------


def _arrays(n: int = 6) -> dict[str, np.ndarray]:
    return {
        "reward": np.ones(n),
        "action": np.zeros(n, dtype=np.int64),
        "pscore": np.full(n, 0.5),
        "action_dist": np.full((n, 2, 1), 0.5),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pscore": np.array([0.5, 0.5, 0.0, 0.5, 0.5, 0.5])}, "pscore must lie in"),
        ({"pscore": np.full(6, 1.5)}, "pscore must lie in"),
        ({"action": np.array([0, 0, 0, 0, 0, 2])}, "action must lie in"),
        ({"action": np.zeros(6)}, "action must be integers"),
        ({"action_dist": np.full((6, 2, 1), 0.4)}, "probability distribution"),
        ({"reward": np.array([1, 0, np.nan, 1, 1, 1.0])}, "NaN"),
        ({"reward": np.ones(5)}, "reward must have shape"),
    ],
)
def test_bad_inputs_raise_data_error(change: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataError, match=message):
        ope.ips(**{**_arrays(), **change})


def test_dm_and_dr_need_a_reward_model_when_asked() -> None:
    a = _arrays()
    res = ope.evaluate(a["action"], None, a["reward"], a["pscore"], a["action_dist"])
    assert set(res.estimates) == {"ips", "snips"} and res.notes
    with pytest.raises(DataError, match="reward model"):
        ope.evaluate(
            a["action"], None, a["reward"], a["pscore"], a["action_dist"], estimators=("dr",)
        )


def test_reward_model_is_calibrated_on_rare_clicks() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 3))
    y = (rng.random(20_000) < 0.004).astype(float)  # OBD-like click rate
    p = ope_reward.LogisticRewardModel().fit(x, y).predict(x)
    assert p.mean() == pytest.approx(y.mean(), rel=1e-6)


# --- evaluation policies against models.bandit -------------------------------------------------


def _bandit_slate_fb(seed: int = 0) -> ope_log.LoggedFeedback:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, 5, len(FEATURE_NAMES)))
    x[..., 0] = 1.0
    x[..., 2] = rng.uniform(0, 0.2, size=(50, 5))
    log = sim.Log(
        x,
        np.repeat(np.arange(50), 5),
        np.tile(np.arange(5), 50),
        np.tile(np.arange(5), 50),
        np.zeros(250),
        np.full(250, 0.2),
        5,
    )
    return feedback(log)


def _sorted_marginals(scores: np.ndarray, k: int) -> np.ndarray:
    """One-hot slot marginals of ranking each row of scores [S, m] best first."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.zeros((*scores.shape, k))
    out[np.arange(scores.shape[0])[:, None], order, np.arange(k)] = 1.0
    return out


def test_greedy_and_thompson_specs_rank_like_models_bandit(tmp_path: Path) -> None:
    fb = _bandit_slate_fb()
    learner = CtrLearner()
    rng = np.random.default_rng(1)
    stats = BanditStats.zeros()
    for row in fb.candidates.reshape(-1, len(FEATURE_NAMES)):
        clicked = bool(rng.random() < 0.3 * (row[6] > 0))
        learner.learn(row, clicked)
        stats.add(row, float(clicked))
    (tmp_path / "learner.json").write_text(json.dumps(learner.weights()))
    (tmp_path / "stats.json").write_text(json.dumps(stats.to_dict()))
    x = fb.candidates
    p_click = learner.predict(x.reshape(-1, x.shape[2])).reshape(x.shape[:2])
    greedy = ope_policies.parse_policy(f"greedy:{tmp_path / 'learner.json'}")
    np.testing.assert_array_equal(greedy.action_dist(fb), _sorted_marginals(p_click, 5))
    thompson = ope_policies.parse_policy(f"thompson:{tmp_path / 'stats.json'},exploration=0")
    mean, _ = stats.posterior()
    np.testing.assert_array_equal(thompson.action_dist(fb), _sorted_marginals(x @ mean, 5))
    assert not np.array_equal(_sorted_marginals(p_click, 5), _sorted_marginals(x @ mean, 5))
    with pytest.raises(DataError, match="exploration=0"):
        ope_policies.parse_policy(f"thompson:{tmp_path / 'stats.json'},exploration=1")
    obd = ope_log.read_obd(OBD_DIR / "all.csv")
    with pytest.raises(DataError, match="bandit features"):
        greedy.action_dist(obd)


def test_random_spec_matches_random_policy_propensity() -> None:
    fb = _bandit_slate_fb()
    dist = ope_policies.parse_policy("random").action_dist(fb)
    slate = RandomPolicy().rank(
        Candidates(list("abcde"), fb.candidates[0], np.zeros(5), np.zeros(5)),
        5,
        np.random.default_rng(0),
    )
    np.testing.assert_allclose(dist[0, slate.order, np.arange(5)], slate.propensity)


def test_plackett_luce_marginals_match_exact_enumeration() -> None:
    log = sim.simulate(40, M, K, seed=2)
    fb = feedback(log)
    weights = dict(zip(FEATURE_NAMES, sim.SOFT_GOOD.weights.tolist(), strict=True))
    spec = ",".join(f"{k}={v}" for k, v in weights.items())
    mc = ope_policies.parse_policy(f"linear:{spec},temperature=1,draws=20000").action_dist(fb)
    exact = sim.marginals(sim.SOFT_GOOD, log.x, K)
    assert np.abs(mc - exact).max() < 0.02
    greedy = ope_policies.parse_policy(f"linear:{spec}").action_dist(fb)
    np.testing.assert_array_equal(greedy, sim.marginals(sim.GREEDY_GOOD, log.x, K))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("best", "unknown policy spec"),
        ("linear:affinity", "NAME=NUMBER"),
        ("linear:affinity=x", "not a number"),
        ("linear:affinity=1,temperature=-1", "temperature"),
        ("greedy:/nonexistent.json", "cannot read"),
    ],
)
def test_bad_policy_specs(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ope_policies.parse_policy(spec)


def test_unknown_feature_names_the_available_ones() -> None:
    with pytest.raises(DataError, match="affinity"):
        ope_policies.parse_policy("score:afinity").action_dist(_bandit_slate_fb())


# --- our impression log, end to end -----------------------------------------------------------

T0 = 1_790_000_000_000


@pytest.fixture()
def archive(tmp_path: Path) -> tuple[Path, sim.Log]:
    log = sim.simulate(400, 3, 3, seed=11)  # shown = every candidate: reranking is exact
    write_events(tmp_path / "archive", sim.to_events(log, seed=11, t0_ms=T0), source="test")
    return tmp_path / "archive", log


UNTIL = T0 + 400 * 1000  # after the last impression


def test_impression_log_joins_rewards_and_rebuilds_slates(archive: tuple[Path, sim.Log]) -> None:
    path, log = archive
    fb = ope_log.read_impression_log(path, until_ms=UNTIL)
    assert fb.dropped == {}
    assert fb.n_rounds == 1200 and fb.len_list == 3
    assert fb.slate_ids is not None
    got = pd.DataFrame(
        {"r": fb.slate_ids[fb.slate], "k": fb.position, "y": fb.reward, "p": fb.pscore}
    ).sort_values(["r", "k"])
    want = pd.DataFrame(
        {
            "r": [f"req-{r}" for r in log.request],
            "k": log.position,
            "y": log.reward,
            "p": log.pscore,
        }
    ).sort_values(["r", "k"])
    np.testing.assert_array_equal(got["y"].to_numpy(), want["y"].to_numpy())
    np.testing.assert_allclose(got["p"].to_numpy(), want["p"].to_numpy())
    assert log.reward.sum() > 100  # the duplicate, late and early clicks did not count
    # Slot k of a slate holds the item logged at k, with the features it was shown with.
    first = int(np.flatnonzero(fb.slate_ids == "req-0")[0])
    np.testing.assert_allclose(fb.candidates[first], log.x[0][log.action[:3]])


def test_impression_log_estimates_equal_the_array_path(archive: tuple[Path, sim.Log]) -> None:
    path, log = archive
    fb = ope_log.read_impression_log(path, until_ms=UNTIL)
    # Array path: candidates in the simulator's order, marginals enumerated exactly.
    sim_fb = feedback(log)
    for spec, policy in (
        ("random", sim.UNIFORM),
        ("linear:retrieval_score=0.6,log1p_popularity=0.4,affinity=0.9", sim.GREEDY_GOOD),
    ):
        ours = ope_log.evaluate_policy(
            fb, ope_policies.parse_policy(spec), estimators=("ips", "snips")
        )
        ref = ope_log.evaluate_policy(sim_fb, ExactPolicy(policy), estimators=("ips", "snips"))
        for e in ("ips", "snips"):
            assert ours.estimates[e].value == pytest.approx(ref.estimates[e].value, abs=1e-9)
    res = ope_log.evaluate_policy(fb, ope_policies.parse_policy("random"))
    assert set(res.estimates) == set(ope.ESTIMATORS)
    assert all(0 < e.value < 1 for e in res.estimates.values())


def test_incomplete_slates_and_open_windows_are_dropped(tmp_path: Path) -> None:
    log = sim.simulate(50, 3, 3, seed=4)
    events = sim.to_events(log, seed=4, t0_ms=T0)
    events = events[events["event_id"] != "imp-4"]  # request 1 loses its slot 1
    write_events(tmp_path, events, source="test")
    fb = ope_log.read_impression_log(tmp_path, until_ms=T0 + 50_000)
    assert fb.dropped == {"impression_in_incomplete_slate": 2}
    assert fb.n_rounds == 147 and "req-1" not in set(fb.slate_ids)  # type: ignore[arg-type]
    # The newest event stands for now: impressions younger than the attribution window
    # may still get clicks, so they are left out and counted. This window closes just
    # after request 20 (requests come 1 s apart), so requests 21..49 are left out.
    window_ms = sim.later_ms(log, T0) - (T0 + 20_000)
    fb = ope_log.read_impression_log(tmp_path, attribution_window_s=window_ms // 1000)
    assert fb.dropped == {
        "reward_window_still_open": 29 * 3,
        "impression_in_incomplete_slate": 2,
    }
    with pytest.raises(DataError, match="reward_window_still_open"):
        ope_log.read_impression_log(tmp_path, attribution_window_s=4 * 3600)


def test_where_filters_on_context(tmp_path: Path) -> None:
    log = sim.simulate(20, 3, 3, seed=5)
    events = sim.to_events(log, seed=5, t0_ms=T0)
    odd = events["request_id"].str[4:].astype(int) % 2 == 1
    events.loc[odd & events["context"].notna(), "context"] = events.loc[
        odd & events["context"].notna(), "context"
    ].map(lambda c: json.dumps({**json.loads(c), "variant": "B"}))
    write_events(tmp_path, events, source="test")
    fb = ope_log.read_impression_log(tmp_path, until_ms=T0 + 20_000, where={"variant": "B"})
    assert fb.n_rounds == 30 and fb.dropped == {"filtered_by_where": 30}


def test_cli_prints_every_estimator(archive: tuple[Path, sim.Log]) -> None:
    path, _ = archive
    args = ["evaluate-policy", "--log", str(path), "--until", str(UNTIL), "-p", "random"]
    runner = CliRunner()
    out = runner.invoke(app, [*args, "--json", "--resamples", "200"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    fb = ope_log.read_impression_log(path, until_ms=UNTIL)
    ref = ope_log.evaluate_policy(fb, ope_policies.parse_policy("random"), n_resamples=200)
    assert got["results"][0]["estimates"] == json.loads(json.dumps(ref.to_dict()["estimates"]))
    table = runner.invoke(app, [*args, "-p", "score:affinity", "--resamples", "200"])
    assert table.exit_code == 0, table.output
    for name in ("IPS", "SNIPS", "DM", "DR", "policy random", "policy score:affinity"):
        assert name in table.stdout
    assert f"{ref.estimates['dr'].value:.5f}" in table.stdout


def test_cli_reads_obd_and_rejects_bad_specs() -> None:
    runner = CliRunner()
    out = runner.invoke(
        app,
        ["evaluate-policy", "--log", str(OBD_DIR / "all.csv"), "-p", "random", "--json"],
    )
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)["results"][0]["estimates"]
    assert got["ips"]["value"] == pytest.approx(38 / 10_000)  # uniform logger, uniform policy
    bad = runner.invoke(app, ["evaluate-policy", "--log", str(OBD_DIR / "all.csv"), "-p", "best"])
    assert isinstance(bad.exception, DataError)
