"""`streamrec recommend`: top-K per user from the published model and its index, to CSV.

For e-mail campaigns, caches and offline evaluation against an external test set. Each
user is described as of the end of the archive (their recent items and real-time
features, as the stream last wrote them) and the items they already interacted with
are excluded.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.timeline import UserTimeline
from index.item_index import ItemIndex
from models.data import ItemVocab
from models.io import load_model
from models.registry import Registry
from offline.archive import read_events
from offline.dataset import user_batch
from offline.evaluate import user_vectors
from streamrec.errors import ArtifactError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecommendReport:
    version: str
    users: int
    rows: int
    seconds: float


def read_user_file(path: Path) -> list[str]:
    """User ids from a CSV with a `user_id` column, or one id per line."""
    if not path.exists():
        raise DataError(f"No such file: '{path}'.")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if lines and "user_id" in lines[0].split(","):
        col = lines[0].split(",").index("user_id")
        return [row[col] for row in csv.reader(lines[1:]) if len(row) > col and row[col]]
    return lines


def recommend(
    archive_dir: Path,
    registry: Registry,
    out: Path,
    k: int,
    users: list[str] | None = None,
    chunk: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> RecommendReport:
    """Write `user_id,item_id,rank,score` for `users` (None = every user in the archive)."""
    started = time.monotonic()
    name = registry.current()
    if name is None:
        raise ArtifactError("No published model yet. Run `streamrec retrain` first.")
    vdir = registry.verify(name)
    model = load_model(vdir / "model")
    vocab = ItemVocab.load(vdir / "vocab.json")
    index = ItemIndex.load(vdir / "index")
    events = read_events(archive_dir, columns=())
    codes = vocab.lookup(list(events["item_id"]))
    meta = json.loads((vdir / "meta.json").read_text())
    timeline = UserTimeline(events, codes, int(meta.get("recent_items", 50)))
    all_users = np.unique(events["user_id"].to_numpy(dtype=object))
    wanted = all_users if users is None else np.asarray(users, dtype=object)
    now_ms = int(events["ts_ms"].max()) + 1 if len(events) else int(time.time() * 1000)
    ids = np.asarray(vocab.ids, dtype=object)
    buckets = int(model.config.user_buckets)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rank", "score"])
        for s in range(0, len(wanted), chunk):
            part = wanted[s : s + chunk]
            batch = user_batch(events, timeline, codes, part, now_ms, buckets)
            exclude = [set(ids[seen]) for seen in batch.seen]
            results = index.search(user_vectors(model, batch), k, exclude=exclude)
            for user, recs in zip(part, results, strict=True):
                for rank, (item, score) in enumerate(recs, start=1):
                    w.writerow([user, item, rank, f"{score:.6f}"])
                    rows += 1
            if progress:
                progress(min(s + chunk, len(wanted)), len(wanted))
    tmp.replace(out)
    seconds = time.monotonic() - started
    log.info("recommend: %d rows for %d users from %s in %.1fs", rows, len(wanted), name, seconds)
    return RecommendReport(name, len(wanted), rows, seconds)
