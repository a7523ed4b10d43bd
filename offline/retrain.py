"""The nightly retrain: archive → examples → two-tower → evaluate → gate → publish + index.

Each step logs what it did; the result is a `RetrainResult` the CLI turns into a
one-screen summary. A refused model is still committed as a version (so it can be
inspected, or promoted with `streamrec models promote --force`), but it does not serve.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.build import build_index
from models.data import FIRST_ITEM
from models.embed import item_embeddings
from models.io import save_model
from models.registry import Registry, code_version
from models.train import train_two_tower
from offline.archive import read_events
from offline.config import RetrainConfig
from offline.dataset import build_training_set
from offline.drift import save_training_reference
from offline.evaluate import (
    evaluate,
    load_serving,
    model_recommendations,
    popularity_recommendations,
    serving_recommendations,
    to_catalog,
    user_vectors,
)
from offline.report import write_card, write_plot, write_report
from streamrec.errors import ArtifactError, DataError

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RetrainResult:
    version: str | None
    published: bool
    summary: dict[str, Any]
    version_dir: Path | None


def decide(
    metric: str,
    new: dict[str, float],
    popularity: dict[str, float],
    serving: dict[str, float] | None,
    tolerance: float,
    min_lift: float,
) -> tuple[bool, str]:
    """(publish?, why) by the gate's rule."""
    n, p = new[metric], popularity[metric]
    if n < p + min_lift:
        return False, f"{metric} {n:.4f} does not beat popularity {p:.4f} (+{min_lift})"
    if serving is None:
        return True, f"first model; {metric} {n:.4f} beats popularity {p:.4f}"
    s = serving[metric]
    if n >= s - tolerance:
        return True, f"{metric} {n:.4f} >= serving {s:.4f} - tolerance {tolerance}"
    return False, f"{metric} {n:.4f} < serving {s:.4f} - tolerance {tolerance}"


def retrain(
    archive_dir: Path,
    registry: Registry,
    config: RetrainConfig,
    since_ms: int | None = None,
    until_ms: int | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> RetrainResult:
    t_start = time.monotonic()
    events = read_events(archive_dir, since_ms, until_ms)
    if events.empty:
        raise DataError(
            f"No events in the archive at '{archive_dir}' for this window. Run the stream "
            "worker, `streamrec simulate`, or `streamrec import FILE` first."
        )
    log.info("retrain: %d events read", len(events))
    ds_cfg = config.dataset
    ts = build_training_set(events, ds_cfg, config.model.user_buckets)

    t_train = time.monotonic()
    result = train_two_tower(ts.train, ts.items, config.model, progress=progress)
    train_s = time.monotonic() - t_train
    model = result.model

    ks = config.evaluation.ks
    kmax = max(ks)
    recs = {
        "two_tower": to_catalog(ts, ts.vocab, model_recommendations(model, ts.test, kmax)),
        "popularity": to_catalog(ts, ts.vocab, popularity_recommendations(ts, kmax)),
    }
    serving_name = registry.current()
    if serving_name is not None:
        try:
            serving = load_serving(registry.verify(serving_name), serving_name)
            recs["serving"] = serving_recommendations(ts, serving, kmax)
        except ArtifactError as exc:
            log.error("retrain: serving version %s not comparable: %s", serving_name, exc)
    metrics = evaluate(ts, recs, ks)
    gate = config.gate
    publish, why = decide(
        gate.metric,
        metrics["two_tower"],
        metrics["popularity"],
        metrics.get("serving"),
        gate.tolerance,
        gate.min_lift_over_popularity,
    )
    decision = "publish" if publish else "refuse"
    if not publish and force:
        decision, why = "publish (forced)", f"--force overrode the gate: {why}"
        publish = True

    # --- artifacts -------------------------------------------------------------------
    staged = registry.stage()
    version = registry.next_version()
    try:
        save_model(model, config.model, staged / "model")
        ts.vocab.save(staged / "vocab.json")
        item_vecs = item_embeddings(model)[FIRST_ITEM:]
        sample = user_vectors(model, ts.test)[: config.index.recall_sample_queries]
        index = build_index(
            item_vecs, ts.vocab.ids[FIRST_ITEM:], config.index, sample_queries=sample
        )
        index.save(staged / "index")
        summary: dict[str, Any] = {
            "window": {
                "since_ms": since_ms if since_ms is not None else int(events["ts_ms"].min()),
                "until_ms": until_ms if until_ms is not None else int(events["ts_ms"].max()) + 1,
            },
            "dataset": ts.stats,
            "positive_events": list(ds_cfg.positive_events),
            "training": {
                "epochs": len(result.history),
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "seconds": round(train_s, 2),
                "device": result.device,
                "history": result.history,
            },
            "metrics": metrics,
            "gate": {
                "metric": gate.metric,
                "decision": decision,
                "reason": why,
                "serving": serving_name,
            },
            "index": index.info,
            "seed": config.model.seed,
            "version": version,
            "config": json.loads(config.model_dump_json()),
        }
        (staged / "metrics.json").write_text(json.dumps(metrics, indent=2))
        save_training_reference(  # what `streamrec drift` compares traffic with
            staged,
            events,
            model=model,
            vocab=ts.vocab,
            user_buckets=config.model.user_buckets,
            recent_items=ds_cfg.recent_items,
        )
        write_plot(staged / "report.png", metrics, result.history)
        summary["code_version"] = code_version()
        write_card(staged / "card.md", summary)
        write_report(staged / "report.md", summary)
        (staged / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        meta = {k: summary[k] for k in ("window", "seed", "gate", "positive_events")}
        meta["recent_items"] = ds_cfg.recent_items
        meta["metrics"] = metrics
        registry.commit(staged, meta, version)
    except BaseException:
        registry.discard(staged)
        raise
    version_dir = registry.path(version)
    if publish:
        registry.promote(version, reason=why)
    else:
        registry.record("refuse", version=version, reason=why)
        log.warning("retrain: %s not published: %s", version, why)
    summary["seconds_total"] = round(time.monotonic() - t_start, 2)
    return RetrainResult(version, publish, summary, version_dir)
