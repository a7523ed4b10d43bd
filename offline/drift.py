"""Drift monitoring: does today's traffic still look like what the serving model saw?

Every published model carries `drift_reference.json`: per feature, quantile bins and a
CDF of its distribution over the last `window_hours` of its training window. A check
computes the same features over the last `window_hours` of traffic and compares:

- **PSI** (population stability index) over the reference's quantile bins,
  sum((cur - ref) * ln(cur / ref)), empty bins floored at 1e-4. Rule of thumb: < 0.1
  stable, 0.1-0.2 moderate, > 0.2 a real shift (the default threshold).
- **KS**: the largest gap between the two CDFs, evaluated at the reference's
  percentiles (within 0.01 of the exact two-sample statistic). Numeric features only.

Features, all computed from the archive the same way at training and at check time:

- the user features the model reads (`features.vectors.USER_DENSE_NAMES`: event counts
  of the last hour and day, hours since seen), taken at each impression (the moment
  serving computed them), with a day of history before the window so counts are whole;
- the item features (`ITEM_DENSE_NAMES`: windowed counts, smoothed CTR, popularity) of
  each impressed item as of the window's end: the item-popularity mix users are shown;
- `event_type`: the mix of event types (categorical, PSI only);
- `score`: the serving model's score of each impressed (user, item), when the model is
  at hand (cheap: one user-tower pass over a sample).

Windows without impressions (an imported click history) use every event as the moment.
A drifted feature is one whose PSI (or KS, if `ks_threshold` is set) crosses its
threshold; `min_drifted_features` of them make the check recommend a retrain, or run
one (`on_drift = "retrain"`), at most once per `cooldown_hours` for the same version.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.aggregates import HOUR_MS
from offline.drift_actions import DriftGauges, act, default_gauges
from offline.drift_features import LOOKBACK_MS, Features, ModelScorer, window_features
from streamrec.config_files import first_error, read_toml
from streamrec.errors import ArtifactError, ConfigError, DataError

if TYPE_CHECKING:
    from models.data import ItemVocab
    from models.registry import Registry
    from models.two_tower import TwoTower

log = logging.getLogger(__name__)

DEFAULT_DRIFT_CONFIG = Path(__file__).with_name("drift.toml")
REFERENCE_FILE = "drift_reference.json"
_FORMAT, _VERSION = "streamrec-drift-reference", 1
_PSI_FLOOR = 1e-4
_CDF_POINTS = 101


class DriftConfig(BaseModel):
    """Settings of drift checks (`offline/drift.toml`); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_hours: float = Field(
        24.0, gt=0, description="Recent traffic compared; the reference spans the same length."
    )
    bins: int = Field(10, ge=2, le=100, description="Quantile bins of the PSI.")
    max_rows: int = Field(200_000, ge=100, description="Sampled impressions per window.")
    min_rows: int = Field(1000, ge=1, description="Fewer in the recent window: no decision.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI at or above this = drifted.")
    ks_threshold: float | None = Field(
        None, gt=0, le=1, description="KS at or above this also = drifted; unset = PSI only."
    )
    min_drifted_features: int = Field(1, ge=1, description="Drifted features that trigger.")
    ignore: tuple[str, ...] = Field((), description="Features reported but never counted.")
    on_drift: Literal["retrain", "recommend"] = Field(
        "recommend", description="Run `streamrec retrain`, or only say it is due."
    )
    cooldown_hours: float = Field(
        12.0, ge=0, description="No second trigger for the same serving version within this."
    )
    retrain_days: float | None = Field(
        7.0, gt=0, description="Days of history a triggered retrain uses; unset = all."
    )
    retrain_config: Path | None = Field(None, description="Retrain TOML; unset = the default.")
    seed: int = Field(0, ge=0, description="Seed of the row sample.")


def load_drift_config(path: Path | None = None) -> DriftConfig:
    """Read a drift TOML (default `offline/drift.toml`); ConfigError names the bad key."""
    path = path or DEFAULT_DRIFT_CONFIG
    raw = read_toml(path, "drift config")
    try:
        return DriftConfig(**raw)
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise ConfigError(f"{path}: {key}: {msg}") from exc


# --- features ----------------------------------------------------------------------------


# --- reference and comparison --------------------------------------------------------


def _numeric_reference(values: np.ndarray, bins: int) -> dict[str, Any]:
    v = np.sort(values[np.isfinite(values)])
    edges = np.unique(np.quantile(v, np.arange(1, bins) / bins)) if len(v) else np.zeros(0)
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    cdf_x = np.unique(np.quantile(v, np.linspace(0, 1, _CDF_POINTS))) if len(v) else edges
    cdf_y = np.searchsorted(v, cdf_x, side="right") / max(len(v), 1)
    return {
        "kind": "numeric",
        "n": len(v),
        "edges": edges.tolist(),
        "fractions": (counts / max(len(v), 1)).tolist(),
        "cdf_x": cdf_x.tolist(),
        "cdf_y": cdf_y.tolist(),
        "mean": float(v.mean()) if len(v) else None,
    }


def _categorical_reference(labels: np.ndarray) -> dict[str, Any]:
    cats, counts = np.unique(labels.astype(str), return_counts=True)
    return {
        "kind": "categorical",
        "n": len(labels),
        "fractions": {str(c): float(n / len(labels)) for c, n in zip(cats, counts, strict=True)},
    }


def build_reference(features: Features, bins: int, **meta: Any) -> dict[str, Any]:
    """The JSON document saved with a model (`REFERENCE_FILE`)."""
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "window": {"since_ms": features.since_ms, "until_ms": features.until_ms},
        "rows": features.rows,
        **meta,
        "features": {
            **{n: _numeric_reference(v, bins) for n, v in features.numeric.items()},
            **{n: _categorical_reference(v) for n, v in features.categorical.items()},
        },
    }


def psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """Population stability index of two bin-fraction vectors (floored at 1e-4)."""
    r = np.maximum(np.asarray(ref, dtype=np.float64), _PSI_FLOOR)
    c = np.maximum(np.asarray(cur, dtype=np.float64), _PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    psi: float
    ks: float | None
    ref_mean: float | None
    cur_mean: float | None
    drifted: bool
    counted: bool  # False for features in `ignore`


Curve = tuple[np.ndarray, np.ndarray, np.ndarray]


def compare_feature(
    ref: dict[str, Any], cur: np.ndarray
) -> tuple[float, float | None, Curve | None]:
    """(PSI, KS, CDF curve) of current values against one feature's reference."""
    if ref["kind"] == "categorical":
        fr: dict[str, float] = ref["fractions"]
        cats, counts = np.unique(cur.astype(str), return_counts=True)
        now = dict(zip(cats.tolist(), (counts / max(len(cur), 1)).tolist(), strict=True))
        keys = sorted(set(fr) | set(now))
        p = psi(np.array([fr.get(k, 0.0) for k in keys]), np.array([now.get(k, 0.0) for k in keys]))
        return p, None, None
    v = np.sort(cur[np.isfinite(cur)])
    edges = np.asarray(ref["edges"], dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    p = psi(np.asarray(ref["fractions"]), counts / max(len(v), 1))
    x = np.asarray(ref["cdf_x"], dtype=np.float64)
    ref_cdf = np.asarray(ref["cdf_y"], dtype=np.float64)
    cur_cdf = np.searchsorted(v, x, side="right") / max(len(v), 1)
    ks = float(np.max(np.abs(cur_cdf - ref_cdf))) if len(x) else 0.0
    return p, ks, (x, ref_cdf, cur_cdf)


# --- a check -----------------------------------------------------------------------------

Decision = Literal["retrain", "recommend", "none", "insufficient"]


@dataclass
class DriftResult:
    version: str | None
    since_ms: int
    until_ms: int
    rows: int
    features: list[FeatureDrift]
    decision: Decision
    reason: str
    triggered: bool = False
    trigger_message: str | None = None
    # feature -> (x, reference CDF, current CDF) at the reference's percentiles, for plots
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted and f.counted]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self) | {"drifted": self.drifted}
        out.pop("curves")
        return out


Trigger = Callable[[DriftResult], str]


def evaluate(
    reference: dict[str, Any], current: Features, cfg: DriftConfig, version: str | None = None
) -> DriftResult:
    """Compare `current` with `reference` and decide (no side effects)."""
    if reference.get("format") != _FORMAT:
        raise ArtifactError("Not a drift reference document (format tag missing).")
    rows, curves = [], {}
    for name, ref in reference["features"].items():
        values = (
            current.categorical.get(name)
            if ref["kind"] == "categorical"
            else current.numeric.get(name)
        )
        if values is None or len(values) == 0:
            continue
        p, ks, curve = compare_feature(ref, values)
        if curve is not None:
            curves[name] = curve
        drifted = p >= cfg.psi_threshold or (
            ks is not None and cfg.ks_threshold is not None and ks >= cfg.ks_threshold
        )
        cur_mean = float(np.mean(values)) if ref["kind"] == "numeric" else None
        rows.append(
            FeatureDrift(
                name, ref["kind"], p, ks, ref.get("mean"), cur_mean, drifted, name not in cfg.ignore
            )
        )
    rows.sort(key=lambda f: -f.psi)
    since, until = current.since_ms or 0, current.until_ms or 0
    result = DriftResult(version, since, until, current.rows, rows, "none", "", curves=curves)
    n = len(result.drifted)
    if current.rows < cfg.min_rows:
        result.decision, result.reason = (
            "insufficient",
            f"{current.rows} rows < min_rows {cfg.min_rows}",
        )
    elif n >= cfg.min_drifted_features:
        result.decision = cfg.on_drift
        result.reason = (
            f"{n} feature(s) drifted (PSI >= {cfg.psi_threshold}): {', '.join(result.drifted)}"
        )
    else:
        result.reason = f"{n} drifted feature(s) < min_drifted_features {cfg.min_drifted_features}"
    return result


# --- references on disk -----------------------------------------------------------------


def save_training_reference(
    version_dir: Path,
    events: pd.DataFrame,
    *,
    model: TwoTower | None = None,
    vocab: ItemVocab | None = None,
    user_buckets: int | None = None,
    recent_items: int = 50,
    cfg: DriftConfig | None = None,
) -> Path:
    """Write `REFERENCE_FILE` for a model trained on `events` (the retrain calls this).

    The reference describes the last `window_hours` of the training window, with the
    model's scores when `model`, `vocab` and `user_buckets` are given.
    """
    cfg = cfg or load_drift_config()
    until = int(events["ts_ms"].max()) + 1
    since = max(int(events["ts_ms"].min()), until - int(cfg.window_hours * HOUR_MS))
    scorer = None
    if model is not None and vocab is not None and user_buckets is not None:
        scorer = ModelScorer(model, vocab, user_buckets, recent_items)
    feats = window_features(events, since, until, cfg, scorer)
    path = version_dir / REFERENCE_FILE
    path.write_text(
        json.dumps(build_reference(feats, cfg.bins, created_ms=int(time.time() * 1000)))
    )
    return path


def load_reference(version_dir: Path) -> dict[str, Any]:
    path = version_dir / REFERENCE_FILE
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"No readable drift reference at '{path}' ({exc}). Versions published before "
            "drift monitoring have none: run `streamrec retrain` to publish one that does."
        ) from exc
    if doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        raise ArtifactError(f"'{path}' is not a drift reference of version {_VERSION}.")
    return doc


def load_scorer(version_dir: Path) -> ModelScorer | None:
    """The version's model as a scorer, or None (logged) if it cannot be loaded."""
    try:
        from models.data import ItemVocab
        from models.io import load_model

        model = load_model(version_dir / "model")
        vocab = ItemVocab.load(version_dir / "vocab.json")
        meta = json.loads((version_dir / "meta.json").read_text())
    except (ArtifactError, DataError, OSError, ValueError) as exc:
        log.warning("drift: no score feature; model at %s not loadable: %s", version_dir, exc)
        return None
    return ModelScorer(model, vocab, model.config.user_buckets, int(meta.get("recent_items", 50)))


def check(
    archive_dir: Path,
    registry: Registry,
    cfg: DriftConfig,
    *,
    now_ms: int | None = None,
    trigger: Trigger | None = None,
    gauges: DriftGauges | None = None,
    state_file: Path | None = None,
) -> DriftResult:
    """One drift check of the serving version against the last `window_hours` of traffic."""
    from offline.archive import read_events

    version = registry.current()
    if version is None:
        raise ArtifactError(
            "No model is serving yet, so there is no reference: run `streamrec retrain`."
        )
    vdir = registry.verify(version)
    reference = load_reference(vdir)
    scorer = load_scorer(vdir) if "score" in reference["features"] else None
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    since = now_ms - int(cfg.window_hours * HOUR_MS)
    events = read_events(archive_dir, since - LOOKBACK_MS, now_ms, columns=())
    current = window_features(events, since, now_ms, cfg, scorer)
    result = evaluate(reference, current, cfg, version)
    result = act(result, cfg, trigger, state_file, now_ms)
    (gauges or default_gauges()).publish(result)
    log.info("drift: %s %s (%d rows): %s", version, result.decision, result.rows, result.reason)
    return result


# --- the readable report ----------------------------------------------------------------
