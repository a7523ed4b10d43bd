"""The one protocol every vector backend speaks, and the array helpers they share.

A backend knows rows (0..n-1) and vectors only; `ItemIndex` maps rows to item ids.
Scores are inner products, larger is closer. A result row shorter than k is padded
with row -1 and score -inf, whatever the backend, so callers need one rule only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streamrec.errors import DataError

Floats = npt.NDArray[np.float32]
Rows = npt.NDArray[np.int64]


@runtime_checkable
class VectorBackend(Protocol):
    """Top-k inner-product search over a fixed set of vectors."""

    #: Family written to `index.json` (`faiss` or `torch`); picks the loader.
    family: str

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    @property
    def device(self) -> str:
        """Where searches run: `cpu` or `cuda` (with the device number, e.g. `cuda:0`)."""
        ...

    @property
    def max_k(self) -> int | None:
        """Largest k one search accepts (faiss GPU: 2048); None = no limit."""
        ...

    def __len__(self) -> int:
        """Number of vectors."""
        ...

    def search(self, queries: Floats, k: int, *, exhaustive: bool = False) -> tuple[Floats, Rows]:
        """Best k rows per query: scores float32 (q, k) descending, rows int64 (q, k).

        `exhaustive=True` asks an approximate backend to consider every vector (IVF: all
        lists; HNSW: its flat storage), so a result is short only when n < k. The
        exclusion fallback uses it; exact backends ignore it.
        """
        ...

    def params(self) -> dict[str, Any]:
        """The parameters that shape results (e.g. nlist, nprobe), for `info` and reloading."""
        ...

    def save(self, directory: Path) -> list[str]:
        """Write the vectors/index under `directory`; return the file names written."""
        ...


def as_queries(queries: npt.ArrayLike, dim: int) -> Floats:
    """Validate queries and return them as a C-contiguous float32 (q, dim) array.

    Raises DataError naming the problem: wrong rank, wrong dimension, NaN or inf.
    """
    arr = np.asarray(queries)
    if arr.ndim != 2:
        raise DataError(f"queries must be a 2-D array (n_queries, {dim}), got shape {arr.shape}.")
    if arr.shape[1] != dim:
        raise DataError(f"queries have dimension {arr.shape[1]}, the index has {dim}.")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"queries must be numeric, got dtype {arr.dtype}.")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DataError("queries contain NaN or infinite values.")
    return out


def pad_missing(scores: Floats, rows: Rows) -> tuple[Floats, Rows]:
    """Normalise padding: wherever a row is -1, its score is -inf (faiss uses -FLT_MAX)."""
    missing = rows < 0
    if missing.any():
        scores = scores.copy()
        scores[missing] = -np.inf
    return scores, rows
