"""`ItemIndex`: a vector backend plus the row -> item id map, its build info and its files.

On disk an index is one directory:

- `index.faiss` (faiss backends, `faiss.write_index`) or `vectors.npy` (torch backend),
- `items.json`: the item ids, row order,
- `index.json`: the build info, the backend family and the SHA-256 of every other file.

`index.json` is written last, so a directory without it is an unfinished save. Loading
checks checksums before deserialising anything (a corrupted or tampered file fails
loudly with ArtifactError instead of feeding garbage to faiss), then checks that ids,
vectors and info agree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.base import Floats, Rows, VectorBackend, as_queries
from streamrec.errors import ArtifactError, DataError
from streamrec.files import sha256_file, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INFO_FILE = "index.json"
ITEMS_FILE = "items.json"

Hit = tuple[str, float]


class ItemIndex:
    """Top-k item search by inner product, with per-query exclusions (e.g. already seen).

    Searching mutates nothing, so one instance serves concurrent request threads.
    """

    def __init__(
        self, backend: VectorBackend, item_ids: Sequence[str], info: Mapping[str, Any]
    ) -> None:
        ids = [str(i) for i in item_ids]
        if len(ids) != len(backend):
            raise DataError(f"{len(ids)} item ids for {len(backend)} vectors; they must match.")
        self._row_of = {item_id: row for row, item_id in enumerate(ids)}
        if len(self._row_of) != len(ids):
            raise DataError("item ids must be unique.")
        self._backend = backend
        self._ids = tuple(ids)
        self._info = dict(info)

    # --- what it holds -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._backend.dim

    @property
    def backend(self) -> VectorBackend:
        """The backend doing the search (for tuning and diagnostics)."""
        return self._backend

    @property
    def item_ids(self) -> Sequence[str]:
        """Item ids in row order (immutable; not copied per call)."""
        return self._ids

    @property
    def info(self) -> dict[str, Any]:
        """Build facts: kind, backend, device, params, n_items, dim, build_s, recall_at_100…"""
        return {**self._info, "params": self._backend.params(), "device": self._backend.device}

    def rows_of(self, item_ids: Collection[str]) -> Rows:
        """Rows of the given ids; ids not in the catalogue are skipped."""
        rows = [self._row_of[i] for i in item_ids if i in self._row_of]
        return np.unique(np.asarray(rows, dtype=np.int64))

    # --- search --------------------------------------------------------------------

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[Hit]]:
        """Best k (item_id, score) per query, best first, skipping each query's `exclude` ids.

        A row is shorter than k only when the catalogue (minus its exclusions) is smaller.
        """
        exclude_rows = None if exclude is None else [self.rows_of(e) for e in exclude]
        scores, rows = self.search_rows(queries, k, exclude_rows)
        ids = self._ids
        return [
            [
                (ids[r], float(s))
                for s, r in zip(srow.tolist(), rrow.tolist(), strict=True)
                if r >= 0
            ]
            for srow, rrow in zip(scores, rows, strict=True)
        ]

    def search_rows(
        self,
        queries: npt.ArrayLike,
        k: int,
        exclude_rows: Sequence[npt.ArrayLike] | None = None,
    ) -> tuple[Floats, Rows]:
        """Vectorised `search`: scores float32 (q, k) and rows int64 (q, k), -1/-inf padded.

        Exclusion over-fetches k + the largest exclusion set and filters. Rows an
        approximate index still left short are fetched again with double the fetch, and
        once the fetch reaches the catalogue size, exhaustively (see `VectorBackend.search`).
        """
        q = as_queries(queries, self.dim)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}.")
        k = int(k)
        n = len(self)
        out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        out_r = np.full((q.shape[0], k), -1, dtype=np.int64)
        if q.shape[0] == 0 or n == 0:
            return out_s, out_r
        limit = n if self._backend.max_k is None else min(n, self._backend.max_k)
        if exclude_rows is None or not any(np.size(e) for e in exclude_rows):
            if exclude_rows is not None and len(exclude_rows) != q.shape[0]:
                raise DataError(f"{len(exclude_rows)} exclusion sets for {q.shape[0]} queries.")
            take = min(k, limit)
            out_s[:, :take], out_r[:, :take] = self._backend.search(q, take)
            return out_s, out_r
        if len(exclude_rows) != q.shape[0]:
            raise DataError(f"{len(exclude_rows)} exclusion sets for {q.shape[0]} queries.")
        excluded = [_valid_rows(e, n) for e in exclude_rows]
        wanted = [min(k, n - len(e)) for e in excluded]
        pending = np.arange(q.shape[0])
        fetch = min(limit, k + max(len(e) for e in excluded))
        exhaustive = False
        while True:
            scores, rows = self._backend.search(q[pending], fetch, exhaustive=exhaustive)
            short = []
            for j, i in enumerate(pending.tolist()):
                keep = (rows[j] >= 0) & ~np.isin(rows[j], excluded[i], assume_unique=False)
                got_r, got_s = rows[j][keep][:k], scores[j][keep][:k]
                out_r[i, : len(got_r)], out_s[i, : len(got_s)] = got_r, got_s
                if len(got_r) < wanted[i]:
                    short.append(i)
            if not short or exhaustive:
                break
            pending = np.asarray(short, dtype=np.int64)
            exhaustive = fetch >= limit
            fetch = min(limit, fetch * 2)
        if short:
            log.debug(
                "%d queries got fewer than k=%d after exclusions at fetch %d", len(short), k, fetch
            )
        return out_s, out_r

    # --- persistence ---------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the index files into `directory` (created if needed); `index.json` last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = self._backend.save(directory)
        _write_atomic(directory / ITEMS_FILE, json.dumps(list(self._ids)).encode())
        names.append(ITEMS_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "family": self._backend.family,
            "files": {name: sha256_file(directory / name) for name in names},
            "info": self.info,
        }
        _write_atomic(directory / INFO_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
        log.info("saved %s index of %d items to %s", self._info.get("kind"), len(self), directory)

    @classmethod
    def load(cls, directory: Path, *, device: str = "auto", mmap: bool = False) -> ItemIndex:
        """Load a saved index; ArtifactError if a file is missing, corrupted or inconsistent.

        `device`: auto = the GPU when the backend can use one here, else CPU.
        `mmap`: map a CPU IVF index's lists from the file instead of copying them, so
        processes serving the same version share one copy (read-only: cannot be saved).
        """
        # Imported here so that `import index` does not pull in torch (~1 s).
        from index.faiss_backend import FaissBackend, faiss_gpus
        from index.torch_backend import TorchBackend

        directory = Path(directory)
        meta = _read_meta(directory)
        for name, digest in meta["files"].items():
            path = directory / name
            if not path.is_file():
                raise ArtifactError(
                    f"Unable to find '{path}'. The index save is incomplete; rebuild it."
                )
            if sha256_file(path) != digest:
                raise ArtifactError(
                    f"'{path}' does not match its checksum in {INFO_FILE}: corrupted."
                )
        item_ids = _read_items(directory / ITEMS_FILE)
        info: dict[str, Any] = meta["info"]
        backend: VectorBackend
        if meta["family"] == "faiss":
            use_gpu = device != "cpu" and faiss_gpus() > 0
            if device == "cuda" and not use_gpu:
                raise ArtifactError("device='cuda' was asked for, but faiss sees no GPU here.")
            backend = FaissBackend.load(
                directory,
                str(info.get("kind")),
                info.get("params", {}),
                use_gpu=use_gpu,
                mmap=mmap,
            )
        elif meta["family"] == "torch":
            chunk = int(info.get("params", {}).get("chunk_items", 262_144))
            backend = TorchBackend.load(directory, device=device, chunk_items=chunk)
        else:
            raise ArtifactError(
                f"Unknown index backend family {meta['family']!r} in {directory / INFO_FILE}."
            )
        if len(backend) != len(item_ids) or len(backend) != info.get("n_items"):
            raise ArtifactError(
                f"{directory}: {len(item_ids)} item ids, {len(backend)} vectors, "
                f"n_items {info.get('n_items')} in {INFO_FILE}; they must agree. Rebuild the index."
            )
        if backend.dim != info.get("dim"):
            raise ArtifactError(
                f"{directory}: vectors have dimension {backend.dim}, "
                f"{INFO_FILE} says {info.get('dim')}. Rebuild the index."
            )
        return cls(backend, item_ids, info)


def _valid_rows(rows: npt.ArrayLike, n: int) -> Rows:
    arr = np.unique(np.asarray(rows, dtype=np.int64).ravel())
    return arr[(arr >= 0) & (arr < n)]


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / INFO_FILE
    if not path.is_file():
        raise ArtifactError(
            f"Unable to find '{path}'. Check the index directory, or rebuild the index."
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"'{path}' is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ArtifactError(
            f"'{path}' has index format {version!r}; this streamrec reads format {FORMAT_VERSION}."
        )
    files, info = meta.get("files"), meta.get("info")
    if not isinstance(files, dict) or ITEMS_FILE not in files or not isinstance(info, dict):
        raise ArtifactError(f"'{path}' lacks its file list or build info. Rebuild the index.")
    return meta


def _read_items(path: Path) -> list[str]:
    try:
        ids = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"'{path}' is not valid JSON: {exc}") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(f"'{path}' must hold a JSON list of item id strings.")
    if len(set(ids)) != len(ids):
        raise ArtifactError(f"'{path}' repeats item ids.")
    return ids
