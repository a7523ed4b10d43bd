"""`streamrec bench index`: build time, single-query latency, batch QPS and recall@100.

Data: synthetic embeddings shaped like a trained two-tower's, not uniform noise (uniform
high-dimensional vectors have no neighbourhood structure and are an unrealistic worst
case for any ANN index). Items are an L2-normalised mixture of Gaussians: `clusters`
unit-norm centres ("categories") plus isotropic noise of norm about `spread`, so an item
has cosine ~0.6 with its centre at the default spread of 1.25 and clusters overlap.
Queries (user vectors) are drawn the same way, independently of the items. Raise `spread`
for a harder set: at 1.5 the default index needs ~4x the nprobe for the same recall.

Timed: `build_index` (construction, then the build-time recall check and tuning, both
reported); single queries one at a time through `ItemIndex.search` (ids and scores, as
serving calls it) after a warm-up; batches of `batch_size` through `search_rows`. Recall
is measured on the benchmark's own queries against exact search (faiss IndexFlatIP).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import faiss
import numpy as np
from rich.console import Console

from index import IndexConfig, build_index, exact_search
from index.base import Floats
from index.build import recall_at_k

log = logging.getLogger(__name__)
K = 100
WARMUP_QUERIES = 50


def clustered_embeddings(
    n: int, dim: int, *, clusters: int, spread: float, rng: np.random.Generator, centres: Floats
) -> Floats:
    """n L2-normalised points around random `centres` (clusters x dim) with noise norm ~spread."""
    labels = rng.integers(0, clusters, n)
    points = centres[labels]
    points += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def run_index_bench(
    items: int = 1_000_000,
    dim: int = 64,
    queries: int = 2000,
    seed: int = 0,
    config: IndexConfig | None = None,
    *,
    clusters: int = 1000,
    spread: float = 1.25,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Build an index over `items` synthetic embeddings and measure it; return the figures."""
    console = Console(stderr=True)
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    with console.status(f"generating {items:,} x {dim} embeddings"):
        vectors = clustered_embeddings(
            items, dim, clusters=clusters, spread=spread, rng=rng, centres=centres
        )
        qs = clustered_embeddings(
            queries, dim, clusters=clusters, spread=spread, rng=rng, centres=centres
        )
        ids = [f"item{i}" for i in range(items)]

    with console.status(f"building the index over {items:,} items"):
        started = time.perf_counter()
        index = build_index(vectors, ids, config or IndexConfig(seed=seed))
        build_total_s = time.perf_counter() - started
    info = index.info

    with console.status(f"exact top-{K} for {queries:,} queries (the recall oracle)"):
        exact_rows = exact_search(vectors, qs, min(K, items))[1]
    del vectors

    with console.status(f"{queries:,} single queries"):
        for i in range(min(WARMUP_QUERIES, queries)):
            index.search(qs[i : i + 1], K)
        latencies = np.empty(queries)
        for i in range(queries):
            t0 = time.perf_counter()
            index.search(qs[i : i + 1], K)
            latencies[i] = time.perf_counter() - t0

    with console.status(f"batches of {batch_size}"):
        index.search_rows(qs[:batch_size], K)  # warm-up
        found = np.empty((queries, K), dtype=np.int64)
        t0 = time.perf_counter()
        for start in range(0, queries, batch_size):
            found[start : start + batch_size] = index.search_rows(
                qs[start : start + batch_size], K
            )[1]
        batch_s = time.perf_counter() - t0

    result = {
        "items": items,
        "dim": dim,
        "queries": queries,
        "kind": info["kind"],
        "backend": info["backend"],
        "device": info["device"],
        "params": info["params"],
        "build_s": info["build_s"],
        "build_total_s": round(build_total_s, 3),
        "build_recall_at_100": info["recall_at_100"],
        "query_p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
        "query_p90_ms": round(float(np.percentile(latencies, 90)) * 1e3, 3),
        "query_p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
        "batch_size": batch_size,
        "batch_qps": round(queries / batch_s, 1),
        "recall_at_100": round(recall_at_k(found, exact_rows), 4),
        "data": f"L2-normalised mixture of {clusters} Gaussians, spread {spread}, seed {seed}",
        "threads": faiss.omp_get_max_threads(),
        # Other processes on the same cores show up in the tail latencies: record them.
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "faiss_version": faiss.__version__,
    }
    log.info("index bench: %s", result)
    return result
