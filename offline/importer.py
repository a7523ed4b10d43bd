"""`streamrec import`: a team's existing interaction log into the offline store.

Accepts CSV or Parquet with `user_id,item_id,timestamp` and optionally `event_type` (one of
the v1 types) or `rating` (at or above `positive_rating` counts as a click, below as an
impression: shown, not taken). Timestamps are ISO 8601 (UTC if no offset is given) or
epoch seconds / milliseconds. Each row is checked against the same bounds as a live event;
rows that fail are written, with their reason, to a `rejected-*.csv` beside the archive,
and counted. Event ids are derived from the row's content and position, so importing the
same file twice adds nothing (the archive reader drops repeated ids).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from offline.archive import write_events
from streamrec.errors import DataError
from streamrec.events import EVENT_TYPES, MAX_ID_CHARS, MIN_TS_MS

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "timestamp")
_SECONDS_BELOW = 100_000_000_000  # an epoch number below this is seconds (year < 5138)


@dataclass
class ImportReport:
    rows: int = 0
    loaded: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    rejected_file: Path | None = None
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"No such file: '{path}'.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, sep=None, engine="python")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"Could not read '{path}': {exc}") from exc
    raise DataError(f"'{path}': unsupported file type {suffix!r}; use .csv or .parquet.")


def _timestamps(raw: pd.Series) -> np.ndarray:
    """Epoch ms per row; -1 where unparseable."""
    text = raw.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    out = np.full(len(raw), -1, dtype=np.int64)
    is_num = numeric.notna().to_numpy()
    nums = numeric.to_numpy(dtype=np.float64)
    out[is_num] = np.where(nums[is_num] < _SECONDS_BELOW, nums[is_num] * 1000, nums[is_num]).astype(
        np.int64
    )
    if (~is_num).any():
        parsed = pd.to_datetime(text[~is_num], errors="coerce", utc=True, format="ISO8601")
        ok = parsed.notna().to_numpy()
        ms = np.full(len(parsed), -1, dtype=np.int64)
        ms[ok] = parsed[ok].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        out[~is_num] = ms
    return out


def _event_ids(frame: pd.DataFrame) -> list[str]:
    keys = (
        frame["user_id"]
        + "\x1f"
        + frame["item_id"]
        + "\x1f"
        + frame["ts_ms"].astype(str)
        + "\x1f"
        + frame["event_type"]
        + "\x1f"
        + frame.groupby(["user_id", "item_id", "ts_ms", "event_type"]).cumcount().astype(str)
    )
    return ["imp-" + hashlib.blake2b(k.encode(), digest_size=12).hexdigest() for k in keys]


def import_interactions(
    path: Path,
    archive_dir: Path,
    *,
    positive_rating: float = 4.0,
    default_event_type: str = "click",
    max_future_skew_s: int = 300,
) -> ImportReport:
    """Validate `path`, archive its good rows, set aside its bad rows; report counts."""
    frame = _read(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(
            f"'{path.name}' lacks column(s) {missing}; need {list(REQUIRED)} plus optional "
            f"event_type or rating. Found: {list(frame.columns)}."
        )
    report = ImportReport(rows=len(frame))
    reason = pd.Series("", index=frame.index, dtype=object)

    def reject(mask: pd.Series | np.ndarray, why: str) -> None:
        m = pd.Series(mask, index=frame.index) & (reason == "")
        reason[m] = why

    for col in ("user_id", "item_id"):
        frame[col] = frame[col].astype(str).str.strip()
        reject(frame[col].isin(["", "nan", "None"]), f"{col}: empty")
        reject(frame[col].str.len() > MAX_ID_CHARS, f"{col}: longer than {MAX_ID_CHARS} chars")
    ts = _timestamps(frame["timestamp"])
    now_ms = int(time.time() * 1000)
    reject(ts < 0, "timestamp: not ISO 8601 or epoch seconds/milliseconds")
    reject((ts >= 0) & (ts < MIN_TS_MS), "timestamp: before 2000-01-01")
    reject(ts > now_ms + max_future_skew_s * 1000, "timestamp: in the future")
    if "event_type" in frame.columns:
        etype = frame["event_type"].astype(str).str.strip().str.lower()
        reject(~etype.isin(EVENT_TYPES), f"event_type: not one of {', '.join(EVENT_TYPES)}")
    elif "rating" in frame.columns:
        rating = pd.to_numeric(frame["rating"], errors="coerce")
        reject(rating.isna(), "rating: not a number")
        etype = pd.Series(
            np.where(rating >= positive_rating, "click", "impression"), index=frame.index
        )
    else:
        etype = pd.Series(default_event_type, index=frame.index)

    bad = reason != ""
    report.rejected = int(bad.sum())
    report.reasons = Counter(reason[bad])
    if report.rejected:
        out = archive_dir.parent / "imports" / f"rejected-{path.stem}-{int(time.time())}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        frame[bad].assign(reason=reason[bad]).to_csv(out, index_label="row")
        report.rejected_file = out
        log.warning("import: %d row(s) rejected, see %s", report.rejected, out)
    good = frame[~bad]
    events = pd.DataFrame(
        {
            "user_id": good["user_id"].to_numpy(),
            "item_id": good["item_id"].to_numpy(),
            "ts_ms": ts[~bad.to_numpy()],
            "event_type": etype[~bad].to_numpy(),
        }
    )
    events["event_id"] = _event_ids(events) if len(events) else []
    report.loaded = write_events(archive_dir, events, source="import")
    if len(events):
        report.first_ts_ms = int(events["ts_ms"].min())
        report.last_ts_ms = int(events["ts_ms"].max())
    log.info("import: %d loaded, %d rejected from %s", report.loaded, report.rejected, path)
    return report
