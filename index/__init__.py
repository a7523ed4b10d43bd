"""Nearest-neighbour indexes over item embeddings (FAISS CPU/GPU, exact torch search)."""
