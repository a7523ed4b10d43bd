"""Real-time features: their definitions, the Feast repository, and online-store writers."""
