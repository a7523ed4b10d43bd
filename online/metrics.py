"""Prometheus metrics of the serving API (exposed at `GET /metrics`).

Names start with `streamrec_api_`; `deploy/grafana/streamrec.json` charts every one.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_MS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1)

STAGE_SECONDS = Histogram(
    "streamrec_api_stage_seconds",
    "Time spent per stage of a recommendation request.",
    ["stage"],  # features | user_tower | retrieve | rerank | publish | total
    buckets=_MS,
)
REQUESTS = Counter(
    "streamrec_api_requests_total",
    "API requests by route and outcome.",
    ["route", "outcome"],  # outcome: ok | degraded | client_error | unauthorized | error
)
DEGRADED = Counter(
    "streamrec_api_degraded_total",
    "Recommendations answered from the popularity fallback, by cause.",
    ["cause"],  # no_model | store_down | model_error
)
OUTBOX = Counter(
    "streamrec_api_outbox_events_total",
    "Events serving sends to Kafka (impressions, HTTP ingest), by fate.",
    ["kind", "fate"],  # kind: impression | ingest; fate: queued | dropped (buffer full, timeout)
)
INGESTED = Counter(
    "streamrec_api_ingested_events_total",
    "Events received on POST /v1/events, by outcome.",
    ["outcome"],  # accepted | rejected | dropped
)
POLICY_CTR = Gauge(
    "streamrec_api_policy_ctr",
    "Clicks per impression by reranking policy (joined by the stream workers).",
    ["policy"],
)
POLICY_IMPRESSIONS = Gauge(
    "streamrec_api_policy_impressions",
    "Impressions joined by the stream workers, by policy.",
    ["policy"],
)
FEATURE_AGE = Histogram(
    "streamrec_api_feature_age_seconds",
    "Age of the user's latest event when the request read their features.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 60, 600, 3600, 86400),
)
MODEL_INFO = Gauge(
    "streamrec_api_model_info", "The model version being served (value 1).", ["version"]
)
MODEL_LOADED_AT = Gauge(
    "streamrec_api_model_loaded_timestamp_seconds", "When the served model was swapped in."
)
STATE_AGE = Gauge(
    "streamrec_api_online_state_age_seconds",
    "Seconds since serving last refreshed bandit parameters and the item board.",
)
