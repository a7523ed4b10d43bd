"""The Grafana dashboard charts every metric the API and the stream workers export."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import online.metrics
import streams.metrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "streamrec.json"


def _metric_names(module: object) -> set[str]:
    names = set()
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            names.add(value._name)
    return names


def test_every_exported_metric_is_on_the_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in doc["panels"] for t in p["targets"])
    names = _metric_names(online.metrics) | _metric_names(streams.metrics)
    assert len(names) >= 15
    missing = sorted(n for n in names if n not in exprs)
    assert not missing, f"not charted: {missing}"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
