"""The Feast repository: entities, push sources and feature views, built from settings.

`import feast` costs seconds, so it happens inside these functions, never at import.
The online store is SQLite under `data_dir` by default, Redis when `STREAMREC_REDIS_URL`
is set. The offline side is the feature log (`data_dir/feature_log/{user,item}`), written by
`features.backfill` from the archived events, so historical retrieval is point-in-time
correct by construction.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from features.aggregates import ITEM_FEATURES, USER_FEATURES
from streamrec.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

USER_VIEW = "user_realtime"
ITEM_VIEW = "item_realtime"
USER_KEY = "user_id"
ITEM_KEY = "item_id"


def feature_log_dir(settings: Settings, kind: str) -> Path:
    return (settings.data_dir / "feature_log" / kind).resolve()


def redis_connection_string(url: str) -> str:
    """Feast's Redis config wants `host:port,db=N[,password=...]`, not a URL."""
    u = urlparse(url)
    parts = [f"{u.hostname or '127.0.0.1'}:{u.port or 6379}"]
    db = (u.path or "/0").lstrip("/") or "0"
    parts.append(f"db={db}")
    if u.password:
        parts.append(f"password={u.password}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def repo_config_dict(settings: Settings) -> dict[str, Any]:
    """The feature_store.yaml content for these settings."""
    repo = settings.feature_repo_dir.resolve()
    online: dict[str, Any]
    if settings.redis_url:
        # skip_dedup: the stream writes each entity from one owner in order, and rows
        # may repeat an event time with new counts (a late event); Feast's timestamp
        # check would drop those.
        online = {
            "type": "redis",
            "connection_string": redis_connection_string(settings.redis_url),
            "skip_dedup": True,
        }
    else:
        online = {"type": "sqlite", "path": str(repo / "online.db")}
    return {
        "project": settings.feast_project,
        "provider": "local",
        "registry": {"path": str(repo / "registry.db"), "cache_ttl_seconds": 5},
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def feature_objects(settings: Settings) -> list[Any]:
    """Entities, sources and feature views of the streamrec feature repository."""
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Array, Float64, Int64, String

    user = Entity(
        name="user",
        join_keys=[USER_KEY],
        value_type=ValueType.STRING,
        description="A person using the product.",
    )
    item = Entity(
        name="item",
        join_keys=[ITEM_KEY],
        value_type=ValueType.STRING,
        description="Something that can be recommended.",
    )

    def sources(kind: str) -> tuple[Any, Any]:
        batch = FileSource(
            name=f"{kind}_feature_log",
            path=str(feature_log_dir(settings, kind)),
            timestamp_field="event_timestamp",
        )
        push = PushSource(name=f"{kind}_push", batch_source=batch)
        return batch, push

    _, user_push = sources("user")
    _, item_push = sources("item")
    user_types = {"recent_items": Array(String)} | {f: Int64 for f in USER_FEATURES[1:]}
    item_types = {f: Int64 for f in ITEM_FEATURES} | {"ctr_smoothed": Float64}
    user_view = FeatureView(
        name=USER_VIEW,
        entities=[user],
        ttl=None,
        online=True,
        source=user_push,
        schema=[Field(name=f, dtype=user_types[f]) for f in USER_FEATURES],
        description="Real-time user features from the event stream.",
    )
    item_view = FeatureView(
        name=ITEM_VIEW,
        entities=[item],
        ttl=None,
        online=True,
        source=item_push,
        schema=[Field(name=f, dtype=item_types[f]) for f in ITEM_FEATURES],
        description="Real-time item features from the event stream.",
    )
    return [user, item, user_push, item_push, user_view, item_view]


def write_repo_files(settings: Settings) -> Path:
    """Write feature_store.yaml so the `feast` CLI works on the same repository."""
    import yaml

    repo = settings.feature_repo_dir
    repo.mkdir(parents=True, exist_ok=True)
    for kind in ("user", "item"):
        feature_log_dir(settings, kind).mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(repo_config_dict(settings)))
    return repo


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore over this repository (not applied; see `apply`)."""
    from feast import FeatureStore, RepoConfig

    repo = write_repo_files(settings)
    config = RepoConfig(repo_path=repo.resolve(), **repo_config_dict(settings))
    return FeatureStore(config=config)


@lru_cache(maxsize=4)
def _cached_store(settings: Settings) -> FeatureStore:
    return open_store(settings)


def apply(settings: Settings) -> FeatureStore:
    """Register entities and views and create the online tables (idempotent)."""
    store = _cached_store(settings)
    store.apply(feature_objects(settings))
    log.info("feature repository applied at %s", settings.feature_repo_dir)
    return store


def feature_view(store: FeatureStore, name: str) -> FeatureView:
    return store.get_feature_view(name)
