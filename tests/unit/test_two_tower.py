"""The two-tower model: config, data contract, loss, training outcomes, artifacts."""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import (
    DEFAULT_CONFIG_PATH,
    Examples,
    ItemTable,
    ItemVocab,
    TrainResult,
    TwoTower,
    TwoTowerConfig,
    hash_ids,
    in_batch_softmax_loss,
    item_embeddings,
    load_config,
    load_model,
    save_model,
    score_top_k,
    train_two_tower,
    user_embeddings,
    validation_loss,
)
from offline.metrics import popularity_baseline, ranking_metrics
from streamrec.errors import ArtifactError, ConfigError, DataError
from streamrec.simulation import World, WorldParams

# --- config ---------------------------------------------------------------------------


def test_config_file_sets_every_key_and_equals_code_defaults() -> None:
    raw = tomllib.loads(DEFAULT_CONFIG_PATH.read_text())
    assert set(raw) == set(TwoTowerConfig.model_fields)
    assert load_config(DEFAULT_CONFIG_PATH) == TwoTowerConfig()


def test_config_rejects_unknown_key_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "tt.toml"
    path.write_text("embedding_dim = 32\ntemprature = 0.1\n")
    with pytest.raises(ConfigError, match=r"'temprature'.*Did you mean 'temperature'"):
        load_config(path)


def test_config_rejects_bad_value_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "tt.toml"
    path.write_text("batch_size = 1\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(path)
    path.write_text("user_hidden = [64, 0]\n")
    with pytest.raises(ConfigError, match="user_hidden"):
        load_config(path)
    path.write_text("seed = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


# --- data contract ----------------------------------------------------------------------


def test_vocab_reserves_pad_and_unknown_and_round_trips(tmp_path: Path) -> None:
    vocab = ItemVocab.from_ids(["b", "a", "c", "a"])
    assert vocab.ids[2:] == ["a", "b", "c"] and len(vocab) == 5
    assert ItemVocab.from_ids(["c", "b", "a"]).ids == vocab.ids  # order-independent
    assert vocab.lookup(["c", "zzz", "a", ""]).tolist() == [4, 1, 2, 1]
    assert vocab.lookup([]).dtype == np.int64
    vocab.save(tmp_path / "vocab.json")
    back = ItemVocab.load(tmp_path / "vocab.json")
    assert back.ids == vocab.ids
    assert back.lookup(["b"]).tolist() == [3]


def test_vocab_load_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="Unable to read"):
        ItemVocab.load(tmp_path / "missing.json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        ItemVocab.from_json("{")
    with pytest.raises(ArtifactError, match="corrupt"):
        ItemVocab.from_json(
            json.dumps({"format": "streamrec.item_vocab", "version": 1, "ids": ["a", "a"]})
        )


def test_hash_ids_is_stable_known_values() -> None:
    # Fixed values: a different function (or Python's salted hash) would break serving.
    assert hash_ids(["u1", "user-42", "", "ünï"], 1000).tolist() == [130, 23, 756, 72]
    assert hash_ids(["u1", "user-42"], 2**40).tolist() == [272332855698, 529586102383]
    many = hash_ids([f"u{i}" for i in range(5000)], 7)
    assert many.dtype == np.int64 and many.min() >= 0 and many.max() < 7
    assert np.bincount(many).min() > 600  # spread over every bucket


def _examples(n: int = 6, seq_len: int = 3, fu: int = 2, **override: Any) -> Examples:
    arrays: dict[str, Any] = {
        "user_bucket": np.arange(n, dtype=np.int64),
        "seq": np.full((n, seq_len), 2, dtype=np.int64),
        "user_dense": np.zeros((n, fu), dtype=np.float32),
        "target": np.arange(n, dtype=np.int64) + 2,
        "ts_ms": np.arange(n, dtype=np.int64) * 1000,
    }
    arrays.update(override)
    return Examples(**arrays)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("seq", np.zeros((6, 3), dtype=np.int32)),
        ("seq", np.zeros(6, dtype=np.int64)),
        ("user_dense", np.zeros((6, 2), dtype=np.float64)),
        ("user_dense", np.full((6, 2), np.nan, dtype=np.float32)),
        ("target", np.full(5, 2, dtype=np.int64)),
        ("target", np.ones(6, dtype=np.int64)),
        ("ts_ms", [0, 1, 2, 3, 4, 5]),
        ("user_bucket", -np.ones(6, dtype=np.int64)),
    ],
)
def test_examples_reject_bad_arrays_naming_the_field(field: str, bad: Any) -> None:
    with pytest.raises(DataError, match=f"^{field}:"):
        _examples(**{field: bad})


def test_split_by_time_keeps_latest_slice_and_ties_together() -> None:
    ts = np.array([5, 1, 9, 3, 9, 7, 2, 8, 4, 6], dtype=np.int64) * 1000
    ex = _examples(10, ts_ms=ts, target=np.arange(10, dtype=np.int64) + 2)
    early, late = ex.split_by_time(0.2)
    assert sorted(late.ts_ms.tolist()) == [9000, 9000]
    assert len(early) == 8 and early.ts_ms.max() < late.ts_ms.min()
    _, late3 = ex.split_by_time(0.1)  # asks for 1 row, but both rows at t=9 go together
    assert len(late3) == 2
    assert early.target.tolist() == [2, 3, 5, 7, 8, 9, 10, 11]  # original order kept


# --- the loss, by hand --------------------------------------------------------------------


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(x) for x in logits))


def test_logq_correction_matches_hand_computed_loss() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    target = torch.tensor([2, 3, 4])
    q = [0.5, 0.25, 0.25]
    t = 0.5
    s = (users @ items.T).tolist()
    plain = sum(_ce([x / t for x in s[i]], i) for i in range(3)) / 3
    corrected = (
        sum(_ce([x / t - math.log(q[j]) for j, x in enumerate(s[i])], i) for i in range(3)) / 3
    )
    log_q = torch.log(torch.tensor(q))
    assert in_batch_softmax_loss(users, items, target, t).item() == pytest.approx(plain, rel=1e-5)
    got = in_batch_softmax_loss(users, items, target, t, log_q).item()
    assert got == pytest.approx(corrected, rel=1e-5)
    assert abs(got - plain) > 0.05  # the correction does something
    # A constant log q (uniform sampling) shifts every logit alike: no change.
    uniform = in_batch_softmax_loss(users, items, target, t, torch.full((3,), -3.0))
    assert uniform.item() == pytest.approx(plain, rel=1e-5)


def test_duplicate_positive_in_batch_is_not_a_negative() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    target = torch.tensor([7, 9, 7])  # rows 0 and 2 share their positive item
    s = (users @ items.T).tolist()
    want = (_ce([s[0][0], s[0][1]], 0) + _ce(s[1], 1) + _ce([s[2][1], s[2][2]], 1)) / 3
    assert in_batch_softmax_loss(users, items, target, 1.0).item() == pytest.approx(want, rel=1e-5)


# --- the model ----------------------------------------------------------------------------

TINY = TwoTowerConfig(embedding_dim=8, id_dim=4, user_buckets=50, user_hidden=(16,), item_hidden=())


def _tiny_model(seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(TINY, n_items=12, user_dense_dim=2, item_dense=torch.randn(12, 3))


def test_towers_give_unit_vectors_and_ignore_padding() -> None:
    m = _tiny_model().eval()
    ub, ud = torch.tensor([3, 3]), torch.zeros(2, 2)
    short = m.user_vectors(ub, torch.tensor([[5, 7], [0, 0]]), ud)
    long = m.user_vectors(ub, torch.tensor([[5, 7, 0, 0], [0, 0, 0, 0]]), ud)
    torch.testing.assert_close(short, long)
    assert not torch.allclose(short[0], short[1])  # history matters
    torch.testing.assert_close(short.norm(dim=1), torch.ones(2))
    assert m.all_item_vectors().shape == (12, 8)
    torch.testing.assert_close(m.all_item_vectors().norm(dim=1), torch.ones(12))


@dataclass
class Planted:
    train: Examples
    items: ItemTable
    test_users: tuple[np.ndarray, np.ndarray, np.ndarray]
    truth: list[np.ndarray]
    n_items: int


def planted(n_users: int = 400, n_items: int = 200, per_user: int = 30, seed: int = 0) -> Planted:
    """Users click items of their own latent group, more often the popular ones.

    Each user's last click is held out; the rest are training examples (recent items
    before each click, most recent first). A popularity ranking knows nothing of groups.
    """
    world = World(WorldParams(users=n_users, items=n_items, groups=4, dim=8, seed=seed))
    rng = np.random.default_rng(seed)
    probs = world.popularity[None, :] * (world.user_group[:, None] == world.item_group[None, :])
    probs /= probs.sum(axis=1, keepdims=True)
    hist = np.stack([rng.choice(n_items, size=per_user, p=p) for p in probs]) + 2
    buckets = hash_ids([f"u{u}" for u in range(n_users)], 1000)
    seq_len = 10
    ub, seq, target, ts = [], [], [], []
    for u in range(n_users):
        for t in range(per_user):
            prev = hist[u, :t][::-1][:seq_len]
            ub.append(buckets[u])
            seq.append(np.pad(prev, (0, seq_len - prev.shape[0])))
            target.append(hist[u, t])
            ts.append(t * 10_000 + u)
    n = len(ub)
    every = np.array(ts) // 10_000
    keep = every < per_user - 1
    all_ex = Examples(
        user_bucket=np.array(ub, dtype=np.int64),
        seq=np.array(seq, dtype=np.int64),
        user_dense=rng.normal(size=(n, 2)).astype(np.float32),
        target=np.array(target, dtype=np.int64),
        ts_ms=np.array(ts, dtype=np.int64),
    )
    held = all_ex.subset(~keep)
    item_dense = np.zeros((n_items + 2, 1), dtype=np.float32)
    item_dense[2:, 0] = np.log(world.popularity * n_items)
    return Planted(
        train=all_ex.subset(keep),
        items=ItemTable(item_dense),
        test_users=(held.user_bucket, held.seq, held.user_dense),
        truth=[np.array([t]) for t in held.target],
        n_items=n_items,
    )


PLANTED_CONFIG = TwoTowerConfig(
    user_buckets=1000,
    batch_size=256,
    max_epochs=15,
    num_threads=1,
    dropout=0.0,
    patience=2,
    min_steps_per_epoch=0,
)


@pytest.fixture(scope="module")
def world_data() -> Planted:
    return planted()


@pytest.fixture(scope="module")
def trained(world_data: Planted) -> tuple[TrainResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return train_two_tower(
        world_data.train, world_data.items, PLANTED_CONFIG, progress=events.append
    ), events


def _recall10(model: TwoTower, data: Planted) -> float:
    rec = score_top_k(model, *data.test_users, k=10)
    return ranking_metrics(rec, data.truth, ks=(10,))["recall@10"]


def test_model_learns_planted_groups_and_beats_popularity(
    world_data: Planted, trained: Any
) -> None:
    result, _ = trained
    pop = popularity_baseline(world_data.train.target, len(world_data.truth), 10)
    pop_recall = ranking_metrics(pop, world_data.truth, ks=(10,))["recall@10"]
    model_recall = _recall10(result.model, world_data)
    # Measured with seed 0: model 0.63 (the planted oracle reaches 0.64), popularity 0.40.
    assert model_recall > pop_recall + 0.15
    assert result.device == "cpu" and not result.model.training


def test_logq_correction_is_what_lets_popular_in_group_items_through(world_data: Planted) -> None:
    # Without the correction in-batch negatives over-penalise popular items; on this world,
    # where popular items of the user's group are the likeliest clicks, that costs recall.
    cfg = PLANTED_CONFIG.model_copy(update={"logq_correction": False, "max_epochs": 3})
    plain = train_two_tower(world_data.train, world_data.items, cfg).model
    corrected = train_two_tower(
        world_data.train, world_data.items, cfg.model_copy(update={"logq_correction": True})
    ).model
    assert _recall10(corrected, world_data) > _recall10(plain, world_data) + 0.1


def test_early_stopping_stops_and_restores_best_epoch(world_data: Planted, trained: Any) -> None:
    result, events = trained
    losses = [h["valid_loss"] for h in result.history]
    assert result.stopped_early and len(losses) < PLANTED_CONFIG.max_epochs
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert len(losses) == result.best_epoch + PLANTED_CONFIG.patience
    # The returned weights are the best epoch's, not the last one's.
    _, valid = world_data.train.split_by_time(PLANTED_CONFIG.validation_fraction)
    again = validation_loss(result.model, valid, result.log_q, PLANTED_CONFIG)
    assert again == pytest.approx(losses[result.best_epoch - 1], abs=1e-5)
    assert again < losses[-1] - 1e-3
    epoch_events = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epoch_events] == list(range(1, len(losses) + 1))
    assert {"train_loss", "valid_loss", "epoch_s", "examples_per_s", "step"} <= epoch_events[
        0
    ].keys()


def test_unseen_user_buckets_stay_zero(world_data: Planted, trained: Any) -> None:
    # A never-trained bucket contributes nothing: a new user is scored on history + features.
    emb = trained[0].model.user_emb.detach()
    used = np.zeros(PLANTED_CONFIG.user_buckets, dtype=bool)
    used[world_data.train.user_bucket] = True
    assert torch.all(emb[~used] == 0) and torch.all(emb[used].abs().sum(dim=1) > 0)


def test_same_seed_same_weights_other_seed_differs(world_data: Planted) -> None:
    small = world_data.train.subset(np.arange(3000))
    # Read-only inputs (e.g. memory-mapped) must work without torch's non-writable warning.
    small.seq.flags.writeable = False
    cfg = PLANTED_CONFIG.model_copy(
        update={"max_epochs": 2, "validation_fraction": 0.0, "dropout": 0.1}
    )
    a, b = (train_two_tower(small, world_data.items, cfg).model.state_dict() for _ in range(2))
    c = train_two_tower(
        small, world_data.items, cfg.model_copy(update={"seed": 1})
    ).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["item_emb"], c["item_emb"])


def test_training_rejects_indices_outside_the_config(world_data: Planted) -> None:
    ok = world_data.train.subset(np.arange(10))
    cfg = PLANTED_CONFIG.model_copy(update={"validation_fraction": 0.0})
    too_big = replace(ok, user_bucket=np.full(10, 5000, dtype=np.int64))
    with pytest.raises(DataError, match=r"user_bucket: bucket 5000 >= user_buckets \(1000\)"):
        train_two_tower(too_big, world_data.items, cfg)
    off_vocab = replace(ok, target=np.full(10, 999, dtype=np.int64))
    with pytest.raises(DataError, match=r"target: item index 999 >= len\(vocab\) \(202\)"):
        train_two_tower(off_vocab, world_data.items, cfg)
    with pytest.raises(DataError, match=r"valid\.seq"):
        train_two_tower(ok, world_data.items, cfg, valid=replace(ok, seq=ok.seq + 500))


def test_score_top_k_never_returns_reserved_or_excluded_items() -> None:
    m = _tiny_model()
    ub, seq, ud = np.array([1, 2]), np.array([[2, 3], [0, 0]]), np.zeros((2, 2), np.float32)
    full = score_top_k(m, ub, seq, ud, k=12)
    assert full[:, 10:].tolist() == [[-1, -1], [-1, -1]]  # only 10 real items exist
    assert sorted(full[0, :10].tolist()) == list(range(2, 12))
    top = score_top_k(m, ub, seq, ud, k=3, exclude=[full[0, :2], np.array([], dtype=np.int64)])
    assert top[0].tolist() == full[0, 2:5].tolist()
    assert top[1].tolist() == full[1, :3].tolist()
    # Ranking follows the exact inner product of the exported vectors.
    scores = user_embeddings(m, ub, seq, ud) @ item_embeddings(m).T
    assert full[1, :10].tolist() == (np.argsort(-scores[1, 2:], kind="stable") + 2).tolist()


# --- artifacts ----------------------------------------------------------------------------


def _saved(tmp_path: Path) -> tuple[TwoTower, Path]:
    m = _tiny_model().eval()
    save_model(m, TINY, tmp_path / "model")
    return m, tmp_path / "model"


def test_save_load_round_trip_gives_identical_vectors(tmp_path: Path) -> None:
    m, path = _saved(tmp_path)
    back = load_model(path)
    ub, seq, ud = np.array([0, 49]), np.array([[2, 5, 0], [0, 0, 0]]), np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(item_embeddings(back), item_embeddings(m))
    np.testing.assert_array_equal(
        user_embeddings(back, ub, seq, ud), user_embeddings(m, ub, seq, ud)
    )
    assert back.config == TINY and not back.training
    manifest = json.loads((path / "model.json").read_text())
    assert manifest["n_items"] == 12 and manifest["item_dense_dim"] == 3


def test_save_refuses_a_config_that_does_not_match_the_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="id_dim"):
        save_model(_tiny_model(), TINY.model_copy(update={"id_dim": 5}), tmp_path)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _reseal(path: Path) -> None:
    """Make the manifest checksum agree with a tampered weights file (a forged artifact)."""
    import hashlib

    manifest = json.loads((path / "model.json").read_text())
    manifest["weights_sha256"] = hashlib.sha256(
        (path / "weights.safetensors").read_bytes()
    ).hexdigest()
    (path / "model.json").write_text(json.dumps(manifest))


def test_tampered_or_truncated_weights_are_refused(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    weights = path / "weights.safetensors"
    original = weights.read_bytes()
    _flip_byte(weights, len(original) - 10)  # inside tensor data: only the checksum sees it
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(path)
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(path)
    _reseal(path)  # even with a matching checksum, a truncated file is unreadable
    with pytest.raises(ArtifactError, match="unreadable"):
        load_model(path)


def test_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    other = TwoTower(TINY.model_copy(update={"id_dim": 6}), 12, 2, torch.zeros(12, 3))
    save_model(other, other.config, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "weights.safetensors", path / "weights.safetensors")
    _reseal(path)
    with pytest.raises(ArtifactError, match="wrong shape"):
        load_model(path)


def test_missing_files_are_refused(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)
    (path / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="Unable to find model weights"):
        load_model(path)
    with pytest.raises(ArtifactError, match="Unable to find model manifest"):
        load_model(tmp_path / "nowhere")
    (path / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_model(path)
