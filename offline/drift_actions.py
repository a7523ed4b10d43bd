"""Acting on a drift check: its Prometheus gauges, the once-per-cooldown trigger, and
the real retrain it can start. The statistics and the check itself are `offline.drift`.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.aggregates import HOUR_MS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from offline.drift import DriftConfig, DriftResult, Trigger
    from streamrec.settings import Settings

log = logging.getLogger(__name__)


# --- Prometheus -------------------------------------------------------------------------


class DriftGauges:
    """`streamrec_drift_*` gauges; pass a registry in tests, the default one in the job."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        reg = registry if registry is not None else REGISTRY
        self.psi = Gauge(
            "streamrec_drift_psi", "PSI of a feature vs the reference.", ["feature"], registry=reg
        )
        self.ks = Gauge(
            "streamrec_drift_ks",
            "KS statistic of a feature vs the reference.",
            ["feature"],
            registry=reg,
        )
        self.drifted = Gauge(
            "streamrec_drift_features_drifted", "Features over their threshold.", registry=reg
        )
        self.last_run = Gauge(
            "streamrec_drift_last_check_timestamp_seconds",
            "When the last check finished.",
            registry=reg,
        )
        self.triggers = Counter(
            "streamrec_drift_retrain_triggers",
            "Retrains the drift check started or recommended.",
            ["action"],
            registry=reg,
        )

    def publish(self, result: DriftResult) -> None:
        for f in result.features:
            self.psi.labels(feature=f.feature).set(f.psi)
            if f.ks is not None:
                self.ks.labels(feature=f.feature).set(f.ks)
        self.drifted.set(len(result.drifted))
        self.last_run.set(time.time())
        if result.triggered:
            self.triggers.labels(action=result.decision).inc()


@lru_cache(maxsize=1)
def default_gauges() -> DriftGauges:
    """The process-wide gauges on prometheus_client's default registry (created once)."""
    return DriftGauges()


# --- acting on a result -----------------------------------------------------------------


def act(
    result: DriftResult,
    cfg: DriftConfig,
    trigger: Trigger | None,
    state_file: Path | None,
    now_ms: int,
) -> DriftResult:
    """Fire `trigger` for a "retrain" decision, once per cooldown per version (state on disk)."""
    if result.decision not in ("retrain", "recommend"):
        return result
    state: dict[str, Any] = {}
    if state_file is not None and state_file.exists():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            log.warning("drift: state file %s unreadable; starting afresh", state_file)
    last = state.get("last_trigger_ms")
    cooling = (
        state.get("version") == result.version
        and isinstance(last, int)
        and now_ms - last < cfg.cooldown_hours * HOUR_MS
    )
    if cooling:
        result.trigger_message = (
            f"{result.decision} already done for {result.version} within the cooldown"
        )
        log.info("drift: %s", result.trigger_message)
        return result
    if result.decision == "recommend":
        log.warning("drift: retrain recommended for %s: %s", result.version, result.reason)
        result.trigger_message = 'retrain recommended (on_drift = "recommend")'
    elif trigger is None:
        result.trigger_message = "retrain due (dry run: `streamrec drift watch` would start it)"
        return result
    result.triggered = True
    if state_file is not None:  # before the retrain: a failing one is not retried at once
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {"last_trigger_ms": now_ms, "version": result.version, "decision": result.decision}
        state_file.write_text(json.dumps(state))
    if result.decision == "retrain" and trigger is not None:
        log.warning("drift: triggering a retrain for %s: %s", result.version, result.reason)
        result.trigger_message = trigger(result)
    return result


def retrain_trigger(settings: Settings, cfg: DriftConfig) -> Trigger:
    """The real trigger: `offline.retrain.retrain` over the last `retrain_days` of archive."""

    def run(result: DriftResult) -> str:
        from models.registry import Registry
        from offline.config import load_retrain_config
        from offline.retrain import retrain

        until = int(time.time() * 1000)
        since = None if cfg.retrain_days is None else until - int(cfg.retrain_days * 24 * HOUR_MS)
        out = retrain(
            settings.archive_dir,
            Registry(settings.registry_dir),
            load_retrain_config(cfg.retrain_config),
            since,
            until,
        )
        verb = "published" if out.published else "refused by the gate"
        return f"retrained: {out.version} {verb}"

    return run
