"""Read and write the offline event log: the hive-partitioned Parquet archive.

The stream workers write it (`streams/archive.py`), `streamrec import` adds a team's own
history to it (`offline/importer.py`), and every batch job reads it through
`read_events`, which prunes by time, drops repeated `event_id`s (a producer that sent an
event twice) and returns the events in time order.
"""

from __future__ import annotations

import logging
import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from streamrec.errors import DataError
from streamrec.files import write_atomic
from streams.archive import SCHEMA

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "event_type", "user_id", "item_id", "ts_ms")


def _dataset(archive_dir: Path) -> ds.Dataset | None:
    if not archive_dir.exists() or not any(archive_dir.glob("date=*/hour=*/*.parquet")):
        return None
    return ds.dataset(
        archive_dir,
        format="parquet",
        partitioning="hive",
        schema=SCHEMA,
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )


def read_events(
    archive_dir: Path,
    since_ms: int | None = None,
    until_ms: int | None = None,
    columns: tuple[str, ...] = ("request_id", "position", "propensity"),
) -> pd.DataFrame:
    """Events with `since_ms <= ts < until_ms`, deduplicated by event_id, in time order.

    Always returns `EVENT_COLUMNS` (`ts_ms` as int64 epoch milliseconds) plus `columns`.
    An archive with no events gives an empty frame, not an error.
    """
    wanted = ["event_id", "event_type", "user_id", "item_id", *columns]
    dataset = _dataset(archive_dir)
    if dataset is None:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in wanted})
        empty["ts_ms"] = pd.Series(dtype=np.int64)
        return empty[list(EVENT_COLUMNS) + list(columns)]
    ts = ds.field("event_timestamp")
    flt = None
    if since_ms is not None:
        flt = ts >= pa.scalar(since_ms, pa.timestamp("ms", tz="UTC"))
    if until_ms is not None:
        upper = ts < pa.scalar(until_ms, pa.timestamp("ms", tz="UTC"))
        flt = upper if flt is None else flt & upper
    table = dataset.to_table(columns=[*wanted, "event_timestamp"], filter=flt)
    frame = table.to_pandas()
    frame["ts_ms"] = table.column("event_timestamp").cast(pa.int64()).to_numpy()
    frame = frame.drop(columns="event_timestamp")
    before = len(frame)
    frame = frame.sort_values("ts_ms", kind="stable").drop_duplicates("event_id", keep="first")
    if len(frame) < before:
        log.info("archive: dropped %d repeated event_id(s)", before - len(frame))
    return frame[list(EVENT_COLUMNS) + list(columns)].reset_index(drop=True)


def _optional(chunk: pd.DataFrame, name: str) -> list[object]:
    """An optional archive column as a list with None for missing values."""
    if name not in chunk.columns:
        return [None] * len(chunk)
    values = chunk[name]
    return list(values.astype(object).where(values.notna(), None))


def write_events(archive_dir: Path, events: pd.DataFrame, source: str) -> int:
    """Append events (columns of `EVENT_COLUMNS`, optional archive columns) to the archive.

    Files are named `part-{source}-{uuid}.parquet`, so the stream sink's recovery (which
    only touches its own `part-{topic}-p{P}-…` files) never deletes them. Each file is
    written beside its target and renamed into place, so readers never see half a file.
    """
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise DataError(f"events to archive lack column(s) {missing}")
    if events.empty:
        return 0
    ts = events["ts_ms"].to_numpy(dtype=np.int64)
    hours = ts // 3_600_000
    frame = events.assign(_hour=hours)
    run = uuid.uuid4().hex[:12]
    for hour, chunk in frame.groupby("_hour", sort=True):
        n = len(chunk)
        table = pa.table(
            {
                "event_id": chunk["event_id"].astype(str).tolist(),
                "event_type": chunk["event_type"].astype(str).tolist(),
                "user_id": chunk["user_id"].astype(str).tolist(),
                "item_id": chunk["item_id"].astype(str).tolist(),
                "event_timestamp": chunk["ts_ms"].to_numpy(dtype=np.int64),
                "request_id": _optional(chunk, "request_id"),
                "position": _optional(chunk, "position"),
                "propensity": _optional(chunk, "propensity"),
                "context": _optional(chunk, "context"),
                "kafka_partition": [-1] * n,
                "kafka_offset": [-1] * n,
            },
            schema=SCHEMA,
        )
        hour_ms = int(str(hour)) * 3_600_000
        stamp = pd.Timestamp(hour_ms, unit="ms", tz="UTC")
        out = (
            archive_dir
            / f"date={stamp:%Y-%m-%d}"
            / f"hour={stamp:%H}"
            / f"part-{source}-{run}.parquet"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, partial(pq.write_table, table, compression="zstd"))
    log.info("archive: wrote %d events from %s", len(events), source)
    return len(events)
