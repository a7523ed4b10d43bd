"""Saving and loading a trained two-tower model: safetensors weights plus a JSON manifest.

Weights never go through pickle: `weights.safetensors` holds raw tensors and cannot run
code when read. `model.json` holds the config, the dimensions the model was built with,
each tensor's shape and the weights file's SHA-256, so a truncated, bit-flipped or
swapped weights file is refused with ArtifactError instead of loading garbage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.config import TwoTowerConfig
from models.two_tower import TwoTower
from streamrec.errors import ArtifactError
from streamrec.files import sha256_file, write_atomic

logger = logging.getLogger(__name__)

FORMAT = "streamrec.two_tower"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "model.json"
_ARCHITECTURE = ("embedding_dim", "id_dim", "user_buckets", "user_hidden", "item_hidden")


def save_model(model: TwoTower, config: TwoTowerConfig, directory: Path) -> None:
    """Write `weights.safetensors` and `model.json` into `directory` (created if needed).

    `config` is recorded as the run's configuration; its architecture fields must match
    the model's, or the artifact could not be loaded back (ValueError).
    """
    for key in _ARCHITECTURE:
        if getattr(config, key) != getattr(model.config, key):
            raise ValueError(
                f"config.{key} = {getattr(config, key)!r} but the model was built with "
                f"{getattr(model.config, key)!r}; pass the config the model was trained with."
            )
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.model_dump(mode="json"),
        "n_items": model.n_items,
        "user_dense_dim": model.user_dense_dim,
        "item_dense_dim": model.item_dense_dim,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "weights_sha256": sha256_file(weights),
        "torch_version": torch.__version__,
    }
    write_atomic(
        directory / MANIFEST_FILE,
        lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8"),
    )
    logger.info("saved two-tower model (%d items) to %s", model.n_items, directory)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"Unable to find model manifest at '{path}'. Check the model path.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"Model manifest '{path}' is unreadable ({exc}).") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArtifactError(f"'{path}' is not a two-tower model manifest.")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"Model format version {doc.get('format_version')!r} in '{path}' is not supported "
            f"(expected {FORMAT_VERSION}); retrain or use the streamrec that wrote it."
        )
    for key in ("config", "n_items", "user_dense_dim", "item_dense_dim", "weights_sha256"):
        if key not in doc:
            raise ArtifactError(f"Model manifest '{path}' lacks '{key}'.")
    return doc


def load_model(directory: Path) -> TwoTower:
    """Load a model written by `save_model` (CPU, eval mode); ArtifactError if anything is off."""
    doc = _read_manifest(directory / MANIFEST_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"Unable to find model weights at '{weights}'. Check the model path.")
    if sha256_file(weights) != doc["weights_sha256"]:
        raise ArtifactError(
            f"Model weights '{weights}' do not match their manifest checksum: the file was "
            "changed or truncated after saving. Re-publish the model."
        )
    try:
        config = TwoTowerConfig(**doc["config"])
        n_items, u_dim, i_dim = (
            int(doc[k]) for k in ("n_items", "user_dense_dim", "item_dense_dim")
        )
        model = TwoTower(config, n_items, u_dim, torch.zeros(n_items, i_dim))
    except (ValidationError, ValueError, TypeError) as exc:
        raise ArtifactError(f"Model manifest in '{directory}' is inconsistent ({exc}).") from exc
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"Model weights '{weights}' are unreadable ({exc}).") from exc
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(expected.keys() - found.keys())
        unexpected = sorted(found.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
        raise ArtifactError(
            f"Model weights '{weights}' do not fit the manifest's config: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {[(k, found[k], expected[k]) for k in wrong]}."
        )
    model.load_state_dict(tensors, strict=True)
    return model.eval()
