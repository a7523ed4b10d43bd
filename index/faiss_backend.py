"""FAISS backend: exact flat, IVF (fp16 or float32 lists) or HNSW, inner product, CPU or GPU.

A GPU is used when the installed faiss has GPU support (`faiss-gpu`) and
`faiss.get_num_gpus() > 0`. HNSW has no GPU version, so it always runs on CPU. The GPU
path builds on CPU and then copies the trained index to the GPU with
`faiss.index_cpu_to_gpu` (the well-trodden route); saving copies it back first, so a
saved index loads on any machine. Indexes are written with `faiss.write_index`, never
pickled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.base import Floats, Rows, pad_missing
from index.config import IndexConfig
from streamrec.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
#: faiss GPU k-selection limit (GPU_MAX_SELECTION_K) in faiss >= 1.7.3.
GPU_MAX_K = 2048
#: Batches smaller than this search on one OpenMP thread (faiss's BLAS threshold is 20).
#: Below it faiss splits a flat scan of one query across threads; when another process
#: holds the other cores, every query then waits a scheduler slice for its second
#: thread: flat 100k x 64 went from 0.6 ms to 16 ms p50 on this 2-core machine.
#: Serving gets its parallelism from concurrent requests instead.
SMALL_BATCH_QUERIES = 20
#: The search-time knob of each approximate kind, as named in `params()`.
KNOBS = {"ivf": "nprobe", "hnsw": "ef_search"}
_KINDS = ("flat", "ivf", "hnsw")


def faiss_gpus() -> int:
    """GPUs faiss can use: 0 with the CPU-only wheel (it lacks the GPU symbols)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


class FaissBackend:
    """A faiss index of one kind; `effort` is nprobe (IVF) or efSearch (HNSW)."""

    family = "faiss"

    def __init__(self, index: Any, kind: str, *, use_gpu: bool = False) -> None:
        if kind not in _KINDS:
            raise ConfigError(f"faiss backend kind must be one of {_KINDS}, got {kind!r}.")
        if kind == "hnsw" and use_gpu:
            raise ConfigError("HNSW has no faiss GPU version; use kind 'flat' or 'ivf' on cuda.")
        self._kind = kind
        self._mapped = False  # lists mapped from the file (load(mmap=True)): read-only
        self._cpu_index = index
        self._gpu_resources: Any = None
        self._index = index
        if use_gpu:
            self._gpu_resources = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)

    # --- construction --------------------------------------------------------------

    @classmethod
    def build(
        cls, vectors: Floats, kind: str, config: IndexConfig, *, use_gpu: bool
    ) -> FaissBackend:
        """Build a `kind` index over `vectors` (float32, C-contiguous, already validated)."""
        n, dim = vectors.shape
        index: Any
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
            index.hnsw.efSearch = config.hnsw_ef_search
        elif kind == "ivf":
            nlist = config.nlist_for(n)
            if config.ivf_storage == "fp16":
                index = faiss.IndexIVFScalarQuantizer(
                    faiss.IndexFlatIP(dim),
                    dim,
                    nlist,
                    faiss.ScalarQuantizer.QT_fp16,
                    faiss.METRIC_INNER_PRODUCT,
                )
            else:
                index = faiss.IndexIVFFlat(
                    faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT
                )
            index.cp.seed = config.seed
            rng = np.random.default_rng(config.seed)
            n_train = min(n, nlist * config.ivf_train_per_list)
            sample = (
                vectors if n_train == n else vectors[np.sort(rng.choice(n, n_train, replace=False))]
            )
            index.train(sample)
            index.nprobe = min(config.ivf_nprobe, nlist)
        else:
            raise ConfigError(f"faiss backend kind must be one of {_KINDS}, got {kind!r}.")
        index.add(vectors)
        return cls(index, kind, use_gpu=use_gpu)

    @classmethod
    def load(
        cls,
        directory: Path,
        kind: str,
        params: dict[str, Any],
        *,
        use_gpu: bool,
        mmap: bool = False,
    ) -> FaissBackend:
        """Read `index.faiss` from `directory`; raise ArtifactError if it is not that kind.

        `mmap` (CPU IVF only): the inverted lists stay in the file, mapped shared, instead
        of a private copy per process. Two API processes each scanning their own 13 MB of
        lists (100k x 64 fp16) crowd the shared L3 cache; mapped, they scan one copy.
        """
        path = directory / INDEX_FILE
        mapped = mmap and kind == "ivf" and not use_gpu
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mapped else 0)
        except RuntimeError as exc:
            raise ArtifactError(f"Unable to read the faiss index at '{path}': {exc}") from exc
        if mapped:
            raw = faiss.extract_index_ivf(index).invlists
            lists = faiss.downcast_InvertedLists(raw) if raw is not None else None
            if isinstance(lists, faiss.OnDiskInvertedLists):
                # Its prefetch threads made each query ~10x slower (measured); the lists
                # are in the page cache anyway once the checksum pass has read the file.
                lists.prefetch_nthread = 0
        expected = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVF, "hnsw": faiss.IndexHNSW}
        if kind not in expected or not isinstance(index, expected[kind]):
            raise ArtifactError(
                f"'{path}' holds a {type(index).__name__}, but index.json says kind {kind!r}. "
                "Rebuild the index."
            )
        backend = cls(index, kind, use_gpu=use_gpu and kind != "hnsw")
        backend._mapped = mapped
        knob = KNOBS.get(kind)
        if knob is not None and knob in params:
            backend.effort = int(params[knob])
        return backend

    # --- VectorBackend -------------------------------------------------------------

    @property
    def kind(self) -> str:
        """flat, ivf or hnsw."""
        return self._kind

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def device(self) -> str:
        return "cuda:0" if self._gpu_resources is not None else "cpu"

    @property
    def max_k(self) -> int | None:
        return GPU_MAX_K if self._gpu_resources is not None else None

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: Floats, k: int, *, exhaustive: bool = False) -> tuple[Floats, Rows]:
        if queries.shape[0] >= SMALL_BATCH_QUERIES or self._gpu_resources is not None:
            return self._search(queries, k, exhaustive)
        # omp_set_num_threads sets the calling thread's own ICV: other threads are unaffected.
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._search(queries, k, exhaustive)
        finally:
            faiss.omp_set_num_threads(before)

    def _search(self, queries: Floats, k: int, exhaustive: bool) -> tuple[Floats, Rows]:
        if exhaustive and self._kind == "ivf":
            nprobe = int(self._cpu_index.nlist)
            if self._gpu_resources is not None:
                nprobe = min(nprobe, GPU_MAX_K)  # faiss GPU caps nprobe like k
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            scores, rows = self._index.search(queries, k, params=params)
        elif exhaustive and self._kind == "hnsw":
            # The graph may reach fewer than k nodes; its flat storage holds every vector.
            scores, rows = faiss.downcast_index(self._index.storage).search(queries, k)
        else:
            scores, rows = self._index.search(queries, k)
        return pad_missing(scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False))

    def params(self) -> dict[str, Any]:
        if self._kind == "ivf":
            storage = (
                "fp16" if isinstance(self._cpu_index, faiss.IndexIVFScalarQuantizer) else "flat"
            )
            return {"nlist": int(self._cpu_index.nlist), "nprobe": self.effort, "storage": storage}
        if self._kind == "hnsw":
            hnsw = self._cpu_index.hnsw
            return {
                "m": int(self._cpu_index.hnsw.nb_neighbors(1)),
                "ef_construction": int(hnsw.efConstruction),
                "ef_search": self.effort,
            }
        return {}

    def save(self, directory: Path) -> list[str]:
        if self._mapped:
            raise ArtifactError("An index loaded with mmap=True is read-only; load it plainly.")
        index = (
            faiss.index_gpu_to_cpu(self._index) if self._gpu_resources is not None else self._index
        )
        tmp = directory / f".{INDEX_FILE}.tmp-{os.getpid()}"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, directory / INDEX_FILE)
        return [INDEX_FILE]

    # --- the search-effort knob ----------------------------------------------------

    @property
    def effort(self) -> int | None:
        """nprobe (IVF) or efSearch (HNSW); None for flat, which has no knob."""
        if self._kind == "ivf":
            return int(self._index.nprobe)
        if self._kind == "hnsw":
            return int(self._index.hnsw.efSearch)
        return None

    @effort.setter
    def effort(self, value: int) -> None:
        if self._kind == "ivf":
            nprobe = max(1, min(int(value), int(self._cpu_index.nlist)))
            self._index.nprobe = nprobe
            self._cpu_index.nprobe = nprobe
        elif self._kind == "hnsw":
            self._index.hnsw.efSearch = max(1, int(value))
        else:
            raise ConfigError("A flat index has no search-effort knob.")

    @property
    def max_effort(self) -> int | None:
        """The most effort that changes anything: nlist for IVF; None (unbounded) for HNSW."""
        return int(self._cpu_index.nlist) if self._kind == "ivf" else None
