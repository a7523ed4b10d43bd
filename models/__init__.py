"""Learned models: the two-tower retrieval model and the bandit rerankers (torch-only imports)."""
