"""Feast's own point-in-time join over the backfilled feature log equals what training uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.aggregates import USER_FEATURES
from features.backfill import backfill
from features.repo import USER_VIEW, apply
from features.timeline import UserTimeline
from offline.archive import read_events, write_events
from offline.simulate import history_frame
from streamrec.settings import load_settings
from streamrec.simulation import World, WorldParams

pytestmark = pytest.mark.integration

T0 = 1_780_000_000_000


def test_feast_historical_features_match_the_training_contexts(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, feast_project=f"hist{np.random.randint(1e9)}")
    world = World(WorldParams(users=40, items=60, seed=3))
    write_events(settings.archive_dir, history_frame(world, 3000, T0, 2 * 86_400_000), "sim")
    events = read_events(settings.archive_dir, columns=())
    counts = backfill(settings, events)
    assert counts["user_rows"] > 0 and counts["item_rows"] > 0
    store = apply(settings)

    rng = np.random.default_rng(0)
    users = rng.choice(events["user_id"].unique(), size=60)
    ts = rng.integers(T0 - 3_600_000, T0 + 2 * 86_400_000, size=60)
    entity = pd.DataFrame(
        {"user_id": users, "event_timestamp": pd.to_datetime(ts, unit="ms", utc=True)}
    )
    found = store.get_historical_features(
        entity_df=entity, features=[f"{USER_VIEW}:{f}" for f in USER_FEATURES]
    ).to_df()
    # This Feast version leaves out entity rows with no feature row at or before them.
    got = entity.merge(found, on=["user_id", "event_timestamp"], how="left")
    assert len(got) == len(entity)

    catalog, codes = np.unique(events["item_id"].to_numpy(dtype=object), return_inverse=True)
    timeline = UserTimeline(events, codes.astype(np.int64) + 1, settings.recent_items)
    g_users = got["user_id"].to_numpy(dtype=object)
    g_ts = (got["event_timestamp"].astype("int64") // 1_000_000).to_numpy()
    ctx = timeline.before(timeline.user_codes(g_users), g_ts + 1)  # Feast: rows at or before
    cols = ctx.columns()
    names = np.concatenate([[""], catalog])
    checked_history = 0
    for i in range(len(got)):
        row = got.iloc[i]
        if not ctx.has_history[i]:
            assert pd.isna(row["last_seen_ms"]), "Feast found a row before the first event"
            continue
        checked_history += 1
        for name, values in cols.items():
            assert row[name] == values[i], (name, g_users[i], g_ts[i])
        want = list(names[ctx.seq[i, : ctx.seq_len[i]]])
        assert list(row["recent_items"]) == want
    assert checked_history > 30
