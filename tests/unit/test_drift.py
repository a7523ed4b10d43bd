"""Drift monitoring: PSI/KS against references, planted user-mix shifts, trigger, gauges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from scipy import stats
from typer.testing import CliRunner

from features.vectors import USER_DENSE_NAMES
from models.registry import Registry
from offline.archive import write_events
from offline.drift import (
    DriftConfig,
    DriftResult,
    build_reference,
    check,
    compare_feature,
    evaluate,
    load_drift_config,
    load_reference,
    psi,
    save_training_reference,
)
from offline.drift_actions import DriftGauges, act, retrain_trigger
from offline.drift_features import Features, window_features
from offline.drift_report import write_outputs
from offline.simulate import history_frame
from streamrec.errors import ArtifactError, ConfigError
from streamrec.settings import Settings
from streamrec.simulation import World, WorldParams

T0 = 1_780_000_000_000
H = 3_600_000
DAY = 24 * H


def traffic(
    world: World, sessions: int, start: int, span: int, seed: int, users: np.ndarray | None = None
) -> pd.DataFrame:
    """Archive-shaped sessions of the simulator, users drawn by `users` (default: activity)."""
    rng = np.random.default_rng(seed)
    who = rng.choice(
        world.params.users, size=sessions, p=world.activity if users is None else users
    )
    starts = start + np.sort(rng.integers(0, span, size=sessions))
    rows = []
    for t0, u in zip(starts, who, strict=True):
        for k, ev in enumerate(world.session(user=int(u))):
            rows.append(ev | {"ts_ms": int(t0) + 1000 * k})
    return pd.DataFrame(rows)


class Planted:
    """Three days of ordinary traffic, then a fourth day two ways: unchanged, or shifted."""

    def __init__(self) -> None:
        self.world = w = World(WorldParams(users=2000, items=500, seed=3))
        self.base = traffic(w, 6000, T0, 3 * DAY, seed=1)
        self.same_day = traffic(w, 2000, T0 + 3 * DAY, DAY, seed=2)
        # The user mix shifts: traffic now comes only from two of the eight taste groups.
        only = np.where(np.isin(w.user_group, [0, 1]), w.activity, 0.0)
        self.shift_day = traffic(w, 2000, T0 + 3 * DAY, DAY, seed=3, users=only / only.sum())

    def with_day(self, day: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([self.base, day], ignore_index=True).sort_values("ts_ms", kind="stable")


@pytest.fixture(scope="module")
def planted() -> Planted:
    return Planted()


CFG = DriftConfig(on_drift="retrain", min_rows=500)


def reference_of(p: Planted, cfg: DriftConfig = CFG) -> dict[str, Any]:
    """The reference a model trained on the first two days would carry."""
    return build_reference(window_features(p.base, T0 + DAY, T0 + 2 * DAY, cfg), cfg.bins)


# --- the statistics --------------------------------------------------------------------


def test_psi_is_zero_for_equal_mixes_and_matches_its_formula() -> None:
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5])) == 0.0
    ref, cur = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    by_hand = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(ref, cur) == pytest.approx(by_hand)
    assert np.isfinite(psi(np.array([0.0, 1.0]), np.array([1.0, 0.0])))  # empty bins floored


def test_ks_at_reference_percentiles_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 20_000), rng.normal(0.15, 1.1, 20_000)
    ref = build_reference(Features(numeric={"x": a}), 10)["features"]["x"]
    _, ks, _ = compare_feature(ref, b)
    assert ks == pytest.approx(stats.ks_2samp(a, b).statistic, abs=0.011)
    # Counts (the usual feature here) have few distinct values: then it is exact.
    c, d = rng.poisson(2.0, 5000).astype(float), rng.poisson(2.4, 5000).astype(float)
    ref = build_reference(Features(numeric={"n": c}), 10)["features"]["n"]
    p, ks, _ = compare_feature(ref, d)
    assert ks == pytest.approx(stats.ks_2samp(c, d).statistic, abs=1e-12)
    assert p > 0.02 and compare_feature(ref, c)[0] == pytest.approx(0.0, abs=1e-12)


def test_categorical_features_compare_by_mix() -> None:
    ref = build_reference(Features(categorical={"t": np.array(["a"] * 90 + ["b"] * 10)}), 10)
    fr = ref["features"]["t"]
    same, ks, _ = compare_feature(fr, np.array(["a"] * 900 + ["b"] * 100))
    moved, _, _ = compare_feature(fr, np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20))
    assert same == pytest.approx(0.0) and ks is None and moved > 0.5


# --- planted shifts ---------------------------------------------------------------------


def test_planted_user_mix_shift_fires_the_trigger_and_unchanged_traffic_does_not(
    planted: Planted,
) -> None:
    ref = reference_of(planted)
    fired: list[DriftResult] = []

    def fake_trigger(result: DriftResult) -> str:
        fired.append(result)
        return "fake retrain"

    since, until = T0 + 3 * DAY, T0 + 4 * DAY
    same = evaluate(
        ref, window_features(planted.with_day(planted.same_day), since, until, CFG), CFG, "v1"
    )
    act(same, CFG, fake_trigger, None, until)
    assert same.decision == "none" and not fired, same.reason
    assert max(f.psi for f in same.features) < CFG.psi_threshold

    shifted = evaluate(
        ref, window_features(planted.with_day(planted.shift_day), since, until, CFG), CFG, "v1"
    )
    act(shifted, CFG, fake_trigger, None, until)
    assert shifted.decision == "retrain" and fired == [shifted], shifted.reason
    assert shifted.triggered and shifted.trigger_message == "fake retrain"
    top = shifted.features[0]
    assert top.psi >= CFG.psi_threshold and top.feature in USER_DENSE_NAMES
    # Fewer, busier users: the day's impression count per user is what moved most.
    assert "log1p_n_impression_24h" in shifted.drifted

    recommend = CFG.model_copy(update={"on_drift": "recommend"})
    advice = evaluate(
        ref, window_features(planted.with_day(planted.shift_day), since, until, recommend),
        recommend, "v1",
    )  # fmt: skip
    act(advice, recommend, fake_trigger, None, until)
    assert advice.decision == "recommend" and len(fired) == 1  # advised, not run


def test_the_trigger_fires_once_per_cooldown_per_version(tmp_path: Path) -> None:
    calls: list[str | None] = []

    def trigger(r: DriftResult) -> str:
        calls.append(r.version)
        return "ok"

    state = tmp_path / "state.json"

    def due(version: str) -> DriftResult:
        return DriftResult(version, 0, 1, 5000, [], "retrain", "planted")

    act(due("v1"), CFG, trigger, state, T0)
    act(due("v1"), CFG, trigger, state, T0 + 11 * H)  # inside the 12 h cooldown
    act(due("v2"), CFG, trigger, state, T0 + 11 * H)  # a new model: new reference, may fire
    act(due("v2"), CFG, trigger, state, T0 + 24 * H)  # cooldown over
    assert calls == ["v1", "v2", "v2"]
    assert json.loads(state.read_text())["version"] == "v2"

    def failing(r: DriftResult) -> str:
        calls.append(r.version)
        raise ArtifactError("disk full")

    with pytest.raises(ArtifactError):
        act(due("v3"), CFG, failing, state, T0 + 48 * H)
    quiet = act(due("v3"), CFG, failing, state, T0 + 49 * H)  # a failed retrain is not hammered
    assert calls[-1] == "v3" and len(calls) == 4 and not quiet.triggered


def _publish_reference(root: Path, events: pd.DataFrame, cfg: DriftConfig) -> Registry:
    """A registry whose serving version holds only a drift reference (no model needed)."""
    reg = Registry(root)
    staged = reg.stage()
    save_training_reference(staged, events, cfg=cfg)
    reg.promote(reg.commit(staged, {"window": "planted"}), reason="test")
    return reg


def test_check_reads_the_archive_exports_gauges_and_writes_the_report(
    planted: Planted, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    write_events(archive, planted.with_day(planted.shift_day), "sim")
    reg = _publish_reference(
        tmp_path / "registry", planted.base[planted.base.ts_ms < T0 + 2 * DAY], CFG
    )
    assert "log1p_n_impression_24h" in load_reference(reg.path(reg.current() or ""))["features"]
    prom = CollectorRegistry()
    gauges = DriftGauges(prom)
    fired: list[DriftResult] = []

    def trigger(r: DriftResult) -> str:
        fired.append(r)
        return "fake"

    calm = check(archive, reg, CFG, now_ms=T0 + 3 * DAY, trigger=trigger, gauges=gauges)
    assert calm.decision == "none" and not fired, calm.reason
    result = check(archive, reg, CFG, now_ms=T0 + 4 * DAY, trigger=trigger, gauges=gauges)
    assert result.decision == "retrain" and fired == [result] and result.version == reg.current()
    for f in result.features:
        assert prom.get_sample_value("streamrec_drift_psi", {"feature": f.feature}) == f.psi
    top = result.features[0]
    assert prom.get_sample_value("streamrec_drift_ks", {"feature": top.feature}) == top.ks
    assert prom.get_sample_value("streamrec_drift_features_drifted") == len(result.drifted)
    assert (
        prom.get_sample_value("streamrec_drift_retrain_triggers_total", {"action": "retrain"}) == 1
    )
    paths = write_outputs(result, CFG, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "**RETRAIN**" in md and "| log1p_n_impression_24h |" in md and "DRIFTED" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["drifted"] == result.drifted


def test_a_version_without_reference_is_named(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    with pytest.raises(ArtifactError, match="No model is serving"):
        check(tmp_path / "archive", reg, CFG)
    staged = reg.stage()
    (staged / "metrics.json").write_text("{}")
    reg.promote(reg.commit(staged, {}), reason="test")
    with pytest.raises(ArtifactError, match="run `streamrec retrain`"):
        check(tmp_path / "archive", reg, CFG)


def test_cli_drift_report_and_watch(
    planted: Planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamrec.cli import app
    from streamrec.settings import get_settings

    data = tmp_path / "data"
    write_events(data / "archive", planted.with_day(planted.shift_day), "sim")
    _publish_reference(data / "registry", planted.base[planted.base.ts_ms < T0 + 2 * DAY], CFG)
    cfg = tmp_path / "drift.toml"
    cfg.write_text('on_drift = "recommend"\nmin_rows = 500\ncooldown_hours = 0\n')
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(data))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = runner.invoke(
            app, ["drift", "report", "--now", str(T0 + 4 * DAY), "--config", str(cfg)]
        )
        assert out.exit_code == 0, out.output
        assert ": recommend (" in out.output and "drifted (PSI >= 0.2)" in out.output
        assert (data / "drift" / "report.png").exists()
        # watch checks "now", long after the planted days: too little traffic to decide.
        watch = runner.invoke(app, ["drift", "watch", "--checks", "1", "--config", str(cfg)])
        assert watch.exit_code == 0, watch.output
        assert "insufficient" in watch.output
        bad = tmp_path / "bad.toml"
        bad.write_text('on_drift = "panic"\n')
        refused = runner.invoke(app, ["drift", "report", "--config", str(bad)])
        assert isinstance(refused.exception, ConfigError) and "on_drift" in str(refused.exception)
    finally:
        get_settings.cache_clear()


# --- config and the retrain ------------------------------------------------------------


def test_config_rejects_typos_and_ships_valid(tmp_path: Path) -> None:
    assert load_drift_config().on_drift in ("retrain", "recommend")
    bad = tmp_path / "drift.toml"
    bad.write_text("psi_treshold = 0.3\n")
    with pytest.raises(ConfigError, match="psi_treshold"):
        load_drift_config(bad)


def test_retrain_saves_a_reference_with_scores_and_the_real_trigger_retrains(
    tmp_path: Path,
) -> None:
    world = World(WorldParams(users=300, items=200, seed=5))
    data = tmp_path / "data"
    write_events(data / "archive", history_frame(world, 30_000, T0, 5 * DAY), "sim")
    retrain_toml = tmp_path / "retrain.toml"
    retrain_toml.write_text(
        "[gate]\nmin_lift_over_popularity = -1.0\n"
        "[model]\nmax_epochs = 1\nuser_buckets = 1000\nprogress_every = 0\n"
    )
    cfg = DriftConfig(
        on_drift="retrain", min_rows=100, retrain_days=None, retrain_config=retrain_toml
    )
    settings = Settings(data_dir=data)
    reg = Registry(settings.registry_dir)
    message = retrain_trigger(settings, cfg)(DriftResult(None, 0, 1, 0, [], "retrain", "test"))
    assert message.startswith("retrained: v0001") and message.endswith("published")
    vdir = reg.verify(reg.current() or "")  # the reference is in the checksummed manifest
    ref = load_reference(vdir)
    assert {"score", "event_type", *USER_DENSE_NAMES} <= set(ref["features"])
    assert ref["features"]["score"]["n"] > 100
    # Checked over the very window it describes, everything (the score too) is stable.
    until = ref["window"]["until_ms"]
    result = check(
        data / "archive", reg, cfg, now_ms=until, gauges=DriftGauges(CollectorRegistry())
    )
    assert result.decision == "none", result.reason
    assert {f.feature for f in result.features} >= {"score"}
    assert max(f.psi for f in result.features) < 0.05
