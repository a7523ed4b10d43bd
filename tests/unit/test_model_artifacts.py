"""Saved two-tower weights: round trip, and refusal of tampered or mismatched files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models import (
    TwoTower,
    item_embeddings,
    load_model,
    save_model,
    user_embeddings,
)
from streamrec.errors import ArtifactError
from tests.unit.tiny_model import TINY, tiny_model

# --- artifacts ----------------------------------------------------------------------------


def _saved(tmp_path: Path) -> tuple[TwoTower, Path]:
    m = tiny_model().eval()
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
        save_model(tiny_model(), TINY.model_copy(update={"id_dim": 5}), tmp_path)


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
