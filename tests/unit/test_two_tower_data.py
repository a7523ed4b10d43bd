"""The two-tower's config file and data contract: vocabulary, hashing, examples."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import (
    DEFAULT_CONFIG_PATH,
    Examples,
    ItemVocab,
    TwoTowerConfig,
    hash_ids,
    load_config,
)
from streamrec.errors import ArtifactError, ConfigError, DataError

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
