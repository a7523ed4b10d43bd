"""Reading real-time features back through Feast's own `get_online_features`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from features.aggregates import ITEM_FEATURES, USER_FEATURES
from features.repo import ITEM_KEY, ITEM_VIEW, USER_KEY, USER_VIEW

if TYPE_CHECKING:
    from feast import FeatureStore

VIEWS = {
    "user": (USER_VIEW, USER_KEY, USER_FEATURES),
    "item": (ITEM_VIEW, ITEM_KEY, ITEM_FEATURES),
}


def read_features(store: FeatureStore, kind: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per id, in order; features of an unknown entity come back as None."""
    view, key, names = VIEWS[kind]
    response = store.get_online_features(
        features=[f"{view}:{n}" for n in names], entity_rows=[{key: i} for i in ids]
    ).to_dict()
    return [{n: response[n][row] for n in (key, *names)} for row in range(len(ids))]
