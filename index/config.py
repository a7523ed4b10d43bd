"""Settings of an item index build: which kind, its parameters, the recall check.

Why IVF is the approximate kind `auto` picks (measured on this 2-core machine,
1M x 64 L2-normalised clustered vectors, recall@100 against exact `IndexFlatIP`):

- IVF4096,Flat builds in 10-45 s (k-means on 164k samples, then one assignment pass;
  the spread is other processes on the cores); HNSW (M=32, efConstruction=64) took
  55-165 s for the same vectors, and needs 256 more bytes per item for its graph.
- At equal single-query latency IVF had the higher recall. Bench set (spread 1.25):
  IVF recall 0.967 at nprobe 108, p50 0.5 ms; HNSW reached 0.98-0.99 only on the
  easiest set. Harder set (spread 1.5): IVF 0.95 at nprobe 512 (~2 ms), while HNSW
  plateaued near 0.86 at efSearch 512 (~1.1 ms), climbing only slowly.
- IVF also exists on the GPU (`faiss-gpu`), HNSW does not, so one kind serves both.

Exact flat search stays the choice up to 50k items. At 100k x 64 a single-threaded flat
query takes ~1.1 ms, while IVF (nprobe tuned to recall@100 >= 0.95) answered the serving
benchmark's user-tower queries in ~0.4 ms at recall 0.967: on a 2-core API box that
difference is a third of the request budget, so above 50k items the tuned IVF wins.

IVF lists hold the vectors as fp16 by default (`ivf_storage`). A query scans about a
tenth of the catalogue from memory, so halving the bytes halves most of its time: on the
serving benchmark's 100k x 64 catalogue, random user-like queries at nprobe 108 took
177 us with fp16 lists against 410 us with float32 ones, at recall@100 0.976 against
0.977. At equal recall IVF4096 (nprobe 256: 360 us) and HNSW32 (efSearch 128: 285 us
for 0.962) were slower.

HNSW stays available (`kind="hnsw"`) for catalogues where its graph does better.
Whatever the kind, the build measures recall against exact search and, with
`tune_search`, raises `nprobe` / `efSearch` step by step until `recall_target` (plus a
0.01 margin) is met on half the sample queries or the cap is reached, then bisects back
to the smallest effort that still meets it; the other half measures the recall recorded.
The recall of the defaults then holds for the data actually indexed, not only for the
data the defaults were picked on.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IndexKind = Literal["auto", "flat", "hnsw", "ivf", "torch"]
ResolvedKind = Literal["flat", "hnsw", "ivf", "torch"]
Device = Literal["auto", "cpu", "cuda"]


class IndexConfig(BaseModel):
    """How to build an `ItemIndex`. Every field has a default; typos are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: IndexKind = Field(
        default="auto",
        description="Index kind; auto = exact flat up to exact_max_items, else approx_kind.",
    )
    approx_kind: Literal["ivf", "hnsw"] = Field(
        default="ivf",
        description="Approximate kind `auto` picks above exact_max_items (see module doc).",
    )
    exact_max_items: int = Field(
        default=50_000,
        ge=0,
        description="Largest catalogue auto searches exactly (flat 50k x 64: ~0.5 ms a query).",
    )
    gpu_exact_max_items: int = Field(
        default=5_000_000,
        ge=0,
        description="Same threshold when the index runs on a GPU (flat is cheap there).",
    )

    # --- IVF -----------------------------------------------------------------------
    ivf_nlist: int | None = Field(
        default=None, ge=1, description="IVF lists; None = 4*sqrt(n) rounded to a power of two."
    )
    ivf_storage: Literal["fp16", "flat"] = Field(
        default="fp16",
        description="How IVF lists hold vectors: fp16 (half the bytes a query scans) or float32.",
    )
    ivf_nprobe: int = Field(default=32, ge=1, description="Lists scanned per query before tuning.")
    ivf_max_nprobe: int = Field(
        default=512,
        ge=1,
        description="Tuning never raises nprobe above this (bounds query latency).",
    )
    ivf_train_per_list: int = Field(
        default=40,
        ge=39,
        le=256,
        description="Training vectors per list for k-means (faiss wants >= 39).",
    )

    # --- HNSW ----------------------------------------------------------------------
    hnsw_m: int = Field(default=32, ge=4, le=128, description="HNSW graph degree (links per node).")
    hnsw_ef_construction: int = Field(default=64, ge=8, description="HNSW build beam width.")
    hnsw_ef_search: int = Field(
        default=128, ge=8, description="HNSW search beam width before tuning."
    )
    hnsw_max_ef_search: int = Field(
        default=1024, ge=8, description="Tuning never raises efSearch above this."
    )

    # --- recall check at build -----------------------------------------------------
    recall_sample_queries: int = Field(
        default=1000,
        ge=2,
        description="Queries for the build-time recall check (half tune, half score).",
    )
    recall_target: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Recall@100 (vs exact) the search parameters are tuned to reach.",
    )
    tune_search: bool = Field(
        default=True,
        description="Raise nprobe/efSearch at build until recall@100 reaches recall_target.",
    )
    query_noise: float = Field(
        default=0.25,
        ge=0,
        description="Sample queries = item vectors plus noise of this relative norm.",
    )

    # --- placement -----------------------------------------------------------------
    device: Device = Field(
        default="auto", description="Where to search: auto = a GPU when one is usable, else CPU."
    )
    torch_chunk_items: int = Field(
        default=262_144,
        ge=1,
        description="Items per matmul chunk of the torch backend (bounds memory).",
    )
    seed: int = Field(default=0, description="Seed of k-means sampling and of the recall sample.")

    def nlist_for(self, n_items: int) -> int:
        """IVF list count for `n_items`: the configured one, else 4*sqrt(n) as a power of two.

        Capped so every list gets enough training vectors (k-means on fewer is noise).
        """
        if self.ivf_nlist is not None:
            wanted = self.ivf_nlist
        else:
            wanted = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n_items))))
        return max(1, min(wanted, n_items // 39))
