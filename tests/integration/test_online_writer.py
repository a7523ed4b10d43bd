"""The fast layout writers against Feast's own SDK writer, read back through Feast."""

from __future__ import annotations

import pytest
import redis

from features.aggregates import ITEM_FEATURES, USER_FEATURES
from features.online_reader import read_features
from features.online_writer import FeastSdkWriter, RedisLayoutWriter, SqliteLayoutWriter
from features.repo import ITEM_KEY, ITEM_VIEW, USER_KEY, USER_VIEW, apply

pytestmark = pytest.mark.integration

TS = 1_790_000_123_456


def _user_row(k: int) -> dict:
    row: dict = {f: k * 3 + i for i, f in enumerate(USER_FEATURES)}
    row["recent_items"] = [f"i{k}", "ü-item", f"i{k + 1}"] if k % 3 else []
    return row


def _item_row(k: int) -> dict:
    row: dict = {f: k + i for i, f in enumerate(ITEM_FEATURES)}
    row["ctr_smoothed"] = 1 / (k + 3)
    return row


def _fast_writer(settings):
    if settings.redis_url:
        return RedisLayoutWriter(redis.Redis.from_url(settings.redis_url), settings.feast_project)
    return SqliteLayoutWriter(settings.feature_repo_dir / "online.db", settings.feast_project)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_fast_writer_reads_back_like_feast_sdk_writer(make_settings, redis_url, store):
    fast_settings = make_settings(store, redis_url=redis_url)
    sdk_settings = make_settings(store, redis_url=redis_url)
    users = [(f"u{k}", _user_row(k), TS + k) for k in range(25)]
    items = [(f"item-{k}", _item_row(k), TS - k) for k in range(25)]

    apply(fast_settings)
    fast = _fast_writer(fast_settings)
    fast.write(USER_VIEW, USER_KEY, users)
    fast.write(ITEM_VIEW, ITEM_KEY, items)
    sdk_store = apply(sdk_settings)
    sdk = FeastSdkWriter(sdk_store)
    sdk.write(USER_VIEW, USER_KEY, users)
    sdk.write(ITEM_VIEW, ITEM_KEY, items)

    for kind, rows in (("user", users), ("item", items)):
        ids = [r[0] for r in rows]
        got_fast = read_features(apply(fast_settings), kind, ids)
        got_sdk = read_features(sdk_store, kind, ids)
        assert got_fast == got_sdk
        # and both equal what was written (so neither side is silently empty)
        assert [{k: v for k, v in r.items() if not k.endswith("_id")} for r in got_fast] == [
            r[1] for r in rows
        ]
    fast.close()
