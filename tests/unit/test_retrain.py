"""The nightly retrain end to end on a simulated archive: publish, gate, rollback, tamper.

Real torch training and a real FAISS index; the archive is Parquet on disk. No broker is
involved (the archive is the offline store, written here as the stream would).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from index.item_index import ItemIndex
from models.registry import Registry
from offline.archive import read_events, write_events
from offline.config import RetrainConfig, load_retrain_config
from offline.recommend import recommend
from offline.retrain import retrain
from offline.simulate import history_frame
from streamrec.errors import ArtifactError, ConfigError, DataError
from streamrec.simulation import World, WorldParams

T0 = 1_780_000_000_000
DAY = 86_400_000


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    world = World(WorldParams(users=300, items=200, seed=5))
    write_events(root, history_frame(world, 40_000, T0, 7 * DAY), "sim")
    return root


def small_config(**model: object) -> RetrainConfig:
    """A quick model; the gate compares with the serving model only (popularity lift off)."""
    base = load_retrain_config()
    update = {"max_epochs": 3, "user_buckets": 1000, "progress_every": 0} | model
    gate = base.gate.model_copy(update={"min_lift_over_popularity": -1.0})
    return base.model_copy(update={"model": base.model.model_copy(update=update), "gate": gate})


def test_retrain_publishes_a_versioned_model_with_its_index(archive: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    result = retrain(archive, reg, small_config())
    assert result.published and reg.current() == result.version
    vdir = reg.verify(result.version or "")
    for name in ("model", "vocab.json", "index", "metrics.json", "card.md", "report.md"):
        assert (vdir / name).exists(), name
    assert (vdir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = result.summary
    assert set(s["metrics"]) == {"two_tower", "popularity"}
    assert 0.0 <= s["metrics"]["two_tower"]["recall@50"] <= 1.0
    assert s["dataset"]["train_examples"] > 500 and s["dataset"]["test_users"] > 20
    assert s["window"]["since_ms"] >= T0 and s["seed"] == 0
    index = ItemIndex.load(vdir / "index")
    assert len(index) == s["dataset"]["vocab_items"]
    assert index.info["recall_at_100"] >= 0.95

    out = tmp_path / "recs.csv"
    report = recommend(archive, reg, out, k=5, users=["u1", "u2", "never-seen"])
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert report.rows == len(rows) == 15
    events = read_events(archive, columns=())
    seen = set(events.loc[events["user_id"] == "u1", "item_id"])
    u1 = [r for r in rows if r["user_id"] == "u1"]
    assert [int(r["rank"]) for r in u1] == [1, 2, 3, 4, 5]
    interacted = set(
        events.loc[(events["user_id"] == "u1") & (events["event_type"] != "impression"), "item_id"]
    )
    assert not interacted & {r["item_id"] for r in u1}
    assert seen  # u1 exists in the archive, so the exclusion above was exercised
    scores = [float(r["score"]) for r in u1]
    assert scores == sorted(scores, reverse=True)

    # A clearly worse model (no sampling-bias correction: it favours the long tail) is
    # committed for inspection but refused, and the first version keeps serving.
    worse = retrain(archive, reg, small_config(logq_correction=False))
    assert not worse.published
    assert "serving" in worse.summary["metrics"]
    assert reg.current() == result.version
    assert worse.summary["gate"]["decision"] == "refuse"
    assert "< serving" in worse.summary["gate"]["reason"]

    # Forced in by hand, then rolled back: the first version and its index serve again.
    reg.promote(worse.version or "")
    assert reg.rollback() == result.version
    assert ItemIndex.load(reg.verify(reg.current() or "") / "index").info == index.info

    # Tampered weights are refused; what serves is untouched.
    weights = next((reg.path(worse.version or "") / "model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        reg.promote(worse.version or "")
    assert reg.current() == result.version


def test_same_seed_same_metrics(archive: Path, tmp_path: Path) -> None:
    cfg = small_config(max_epochs=2)
    cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"tolerance": 1.0})})
    a = retrain(archive, Registry(tmp_path / "a"), cfg, force=True)
    b = retrain(archive, Registry(tmp_path / "b"), cfg, force=True)
    assert a.summary["metrics"] == b.summary["metrics"]
    assert a.summary["gate"]["decision"].startswith("publish")


def test_empty_window_and_bad_config_are_clear_errors(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No events"):
        retrain(archive, Registry(tmp_path), small_config(), since_ms=T0 + 30 * DAY)
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate]\nmetrik = 'recall@50'\n")
    with pytest.raises(ConfigError, match="metrik"):
        load_retrain_config(bad)
    bad.write_text("[model]\nembeding_dim = 8\n")
    with pytest.raises(ConfigError, match="embeding_dim"):
        load_retrain_config(bad)
    assert np.isfinite(load_retrain_config().model.temperature)
