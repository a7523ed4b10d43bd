"""Torch backend: exact inner-product top-k by chunked matmul, on any CUDA device or CPU.

It exists for GPU machines without `faiss-gpu` (its wheel cannot be installed there):
torch alone gives them an exact GPU search. Items are scanned in chunks of
`chunk_items` rows so the (queries x chunk) score block stays small, and a running top-k
is merged chunk by chunk. Vectors are saved as `vectors.npy` (loaded with
`allow_pickle=False`), never pickled. Runs on torch 2.11 and 2.13 (no newer APIs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.base import Floats, Rows
from streamrec.errors import ArtifactError, ConfigError

VECTORS_FILE = "vectors.npy"


def resolve_torch_device(device: str) -> torch.device:
    """`auto` = cuda when torch sees a GPU, else cpu; `cuda` without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for, but torch sees no CUDA device.")
    return torch.device(device)


class TorchBackend:
    """Exact top-k over a (n, d) float32 matrix held on one torch device."""

    family = "torch"

    def __init__(
        self, vectors: Floats, *, device: str = "auto", chunk_items: int = 262_144
    ) -> None:
        if chunk_items < 1:
            raise ConfigError(f"chunk_items must be >= 1, got {chunk_items}.")
        self._device = resolve_torch_device(device)
        self._chunk = int(chunk_items)
        self._vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(
            self._device
        )

    @classmethod
    def load(
        cls, directory: Path, *, device: str = "auto", chunk_items: int = 262_144
    ) -> TorchBackend:
        """Read `vectors.npy`; ArtifactError if it is unreadable or not a 2-D float32 array."""
        path = directory / VECTORS_FILE
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"Unable to read the vectors at '{path}': {exc}") from exc
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise ArtifactError(
                f"'{path}' holds a {vectors.dtype} array of shape {vectors.shape}; "
                "expected 2-D float32. Rebuild the index."
            )
        return cls(vectors, device=device, chunk_items=chunk_items)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def max_k(self) -> int | None:
        return None

    def __len__(self) -> int:
        return int(self._vectors.shape[0])

    @torch.inference_mode()
    def search(self, queries: Floats, k: int, *, exhaustive: bool = False) -> tuple[Floats, Rows]:
        del exhaustive  # always exhaustive
        n_q, n = queries.shape[0], len(self)
        take = min(k, n)
        q = torch.from_numpy(queries).to(self._device)
        best_scores = torch.full((n_q, 0), float("-inf"), device=self._device)
        best_rows = torch.zeros((n_q, 0), dtype=torch.int64, device=self._device)
        for start in range(0, n, self._chunk):
            block = q @ self._vectors[start : start + self._chunk].T
            s, r = torch.topk(block, min(take, block.shape[1]), dim=1)
            # Merge the chunk's best into the running best: top-k of the union.
            merged_s = torch.cat([best_scores, s], dim=1)
            merged_r = torch.cat([best_rows, r + start], dim=1)
            best_scores, pick = torch.topk(merged_s, min(take, merged_s.shape[1]), dim=1)
            best_rows = torch.gather(merged_r, 1, pick)
        scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        rows = np.full((n_q, k), -1, dtype=np.int64)
        scores[:, :take] = best_scores.cpu().numpy()
        rows[:, :take] = best_rows.cpu().numpy()
        return scores, rows

    def params(self) -> dict[str, Any]:
        return {"chunk_items": self._chunk}

    def save(self, directory: Path) -> list[str]:
        tmp = directory / f".{VECTORS_FILE}.tmp-{os.getpid()}.npy"
        np.save(tmp, self._vectors.cpu().numpy(), allow_pickle=False)
        os.replace(tmp, directory / VECTORS_FILE)
        return [VECTORS_FILE]
