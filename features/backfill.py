"""`streamrec features backfill`: the feature log Feast's offline store reads, from the archive.

The user log has one row per (user, event time): the user's features including every
event up to that time, so Feast's point-in-time join (`get_historical_features`, latest
row at or before the entity timestamp) returns what the online store held then. The
item log has one row per item and hour it was active, as of the end of that hour.
Both are computed by `features.timeline`, the same code training uses, and replace the
previous log atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.aggregates import HOUR_MS, ITEM_FEATURES, WINDOW_HOURS, AggregateConfig
from features.repo import feature_log_dir
from features.timeline import UserTimeline, item_snapshot
from streamrec.settings import Settings

log = logging.getLogger(__name__)


def user_log(events: pd.DataFrame, recent_items: int, chunk: int = 100_000) -> pa.Table:
    """One row per (user, event time) with the user's features as of that time."""
    catalog, codes = np.unique(events["item_id"].to_numpy(dtype=object), return_inverse=True)
    timeline = UserTimeline(events, codes.astype(np.int64) + 1, recent_items)  # 0 = padding
    names = np.concatenate([np.array([""], dtype=object), catalog])
    keys = events[["user_id", "ts_ms"]].drop_duplicates().sort_values(["user_id", "ts_ms"])
    parts = []
    for s in range(0, len(keys), chunk):
        part = keys.iloc[s : s + chunk]
        users = part["user_id"].to_numpy(dtype=object)
        ts = part["ts_ms"].to_numpy(dtype=np.int64)
        ctx = timeline.before(timeline.user_codes(users), ts + 1)
        inside = np.arange(ctx.seq.shape[1])[None, :] < ctx.seq_len[:, None]
        offsets = np.concatenate([[0], np.cumsum(ctx.seq_len)]).astype(np.int32)
        recent = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(names[ctx.seq[inside]], pa.string())
        )
        cols: dict[str, pa.Array] = {
            "user_id": pa.array(users, pa.string()),
            "event_timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "recent_items": recent,
        }
        cols |= {k: pa.array(v, pa.int64()) for k, v in ctx.columns().items()}
        parts.append(pa.table(cols))
    return pa.concat_tables(parts) if parts else pa.table({})


def item_log(events: pd.DataFrame, cfg: AggregateConfig) -> pa.Table:
    """One row per (item, active hour): its features as of the end of that hour."""
    hours = np.unique(events["ts_ms"].to_numpy() // HOUR_MS)
    frames = []
    ts = events["ts_ms"].to_numpy()
    for h in hours:
        cut = int(h + 1) * HOUR_MS
        recent = events[(ts >= cut - (WINDOW_HOURS + 1) * HOUR_MS) & (ts < cut)]
        active = recent.loc[recent["ts_ms"] >= cut - HOUR_MS, "item_id"].unique()
        snap = item_snapshot(recent, cut, cfg).loc[active, list(ITEM_FEATURES)]
        snap["event_timestamp"] = pd.Timestamp(cut - 1, unit="ms", tz="UTC")
        frames.append(snap)
    if not frames:
        return pa.table({})
    out = pd.concat(frames).rename_axis("item_id").reset_index()
    return pa.Table.from_pandas(out, preserve_index=False)


def _replace_dir(target: Path, table: pa.Table) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.parent / f".{target.name}-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    pq.write_table(table, staged / "part-0.parquet", compression="zstd")
    old = target.parent / f".{target.name}-old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.rename(target, old)
    os.rename(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def backfill(settings: Settings, events: pd.DataFrame) -> dict[str, int]:
    """Rewrite both feature logs from `events`; returns row counts."""
    cfg = AggregateConfig(
        recent_items=settings.recent_items,
        ctr_prior=settings.ctr_prior,
        ctr_prior_strength=settings.ctr_prior_strength,
    )
    users = user_log(events, settings.recent_items)
    items = item_log(events, cfg)
    _replace_dir(feature_log_dir(settings, "user"), users)
    _replace_dir(feature_log_dir(settings, "item"), items)
    log.info("backfill: %d user rows, %d item rows", users.num_rows, items.num_rows)
    return {"user_rows": users.num_rows, "item_rows": items.num_rows}
