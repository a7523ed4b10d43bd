"""Prometheus metrics of the stream workers (served by `streamrec worker --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "streamrec_stream_events_total",
    "Messages handled by the stream workers, by outcome.",
    ["outcome"],  # applied | duplicate | invalid | replayed
)
BATCH_SECONDS = Histogram(
    "streamrec_stream_batch_seconds",
    "Time to process one micro-batch (state commit included), by worker role.",
    ["role"],  # all | features | archive
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FRESHNESS = Histogram(
    "streamrec_feature_freshness_seconds",
    "Event time to the feature row being written to the online store, by feature view"
    " (a row's oldest unwritten event).",
    ["view"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60),
)
ROWS = Counter(
    "streamrec_online_rows_written_total", "Feature rows written to the online store.", ["view"]
)
