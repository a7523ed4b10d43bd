"""Nearest-neighbour indexes over item embeddings: candidate retrieval for serving and batch.

`build_index` turns the published model's item embeddings into an `ItemIndex`: exact
inner-product search for small catalogues, IVF (or HNSW) above `exact_max_items`, with
recall@100 against exact search measured and recorded at build. Backends are pluggable
(`VectorBackend`): FAISS on CPU, FAISS on GPU when `faiss-gpu` sees one, and an exact
torch search for CUDA machines without `faiss-gpu`. Item ids map back from rows, and a
search can exclude items per query (already seen).
"""

from __future__ import annotations

from index.build import build_index, exact_search
from index.config import IndexConfig
from index.item_index import ItemIndex

__all__ = ["IndexConfig", "ItemIndex", "build_index", "exact_search"]
