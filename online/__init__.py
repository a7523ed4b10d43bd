"""The serving API: recommendations, HTTP ingest, health and metrics."""
