"""The whole loop on one machine: history → retrain → stream worker → API → clicks → shift.

Shared by `streamrec demo` (the README's main command) and the end-to-end tests, so the
demo shows exactly what the tests assert: a user's recommendations moving toward the
latent group of the items they just clicked, within a second.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from models.registry import Registry
from offline.archive import write_events
from offline.config import RetrainConfig, load_retrain_config
from offline.retrain import RetrainResult, retrain
from offline.simulate import DAY_MS, history_frame
from streamrec.events import format_ts
from streamrec.settings import Settings
from streamrec.simulation import World


def quick_retrain_config(epochs: int = 8) -> RetrainConfig:
    """A retrain that takes seconds on a small world (the demo's and tests' model)."""
    base = load_retrain_config()
    model = base.model.model_copy(
        update={"max_epochs": epochs, "user_buckets": 5000, "progress_every": 0}
    )
    gate = base.gate.model_copy(update={"min_lift_over_popularity": -1.0})
    return base.model_copy(update={"model": model, "gate": gate})


def seed_history(settings: Settings, world: World, events: int, days: float) -> int:
    """Backdated simulated history (ending an hour ago) straight into the archive."""
    span = int(days * DAY_MS)
    end = int(time.time() * 1000) - 3_600_000
    return write_events(settings.archive_dir, history_frame(world, events, end - span, span), "sim")


def train_and_publish(settings: Settings, epochs: int = 8) -> RetrainResult:
    return retrain(
        settings.archive_dir, Registry(settings.registry_dir), quick_retrain_config(epochs)
    )


def group_of(world: World, item_ids: Sequence[str]) -> np.ndarray:
    """Latent group of each simulated item id (`i17` -> world.item_group[17]); -1 if foreign."""
    out = np.full(len(item_ids), -1, dtype=np.int64)
    for j, item in enumerate(item_ids):
        if item.startswith("i") and item[1:].isdigit() and int(item[1:]) < len(world.item_group):
            out[j] = world.item_group[int(item[1:])]
    return out


def group_share(world: World, item_ids: Sequence[str], group: int) -> float:
    if not item_ids:
        return 0.0
    return float(np.mean(group_of(world, item_ids) == group))


@dataclass
class Api:
    """A small client of the running API (the demo's and the tests' view of it)."""

    url: str
    key: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key} if self.key else {}

    def recommend(self, user: str, k: int = 10, **params: Any) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/v1/recommendations/{user}", params={"k": k, **params})
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def send(self, events: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/events", json=events, headers=self._headers())

    def click(self, user: str, items: Sequence[str], request_id: str | None = None) -> None:
        """The user clicks these items now (each followed by a product view)."""
        now = int(time.time() * 1000)
        events: list[dict[str, Any]] = []
        for j, item in enumerate(items):
            base = {"user_id": user, "item_id": item, "ts": format_ts(now + j)}
            click: dict[str, Any] = {"event_id": uuid.uuid4().hex, "event_type": "click", **base}
            if request_id:
                click["request_id"] = request_id
            events.append(click)
            events.append({"event_id": uuid.uuid4().hex, "event_type": "view", **base})
        r = self.send(events)
        r.raise_for_status()


def wait_for_shift(
    api: Api,
    world: World,
    user: str,
    group: int,
    before: float,
    margin: float,
    k: int,
    timeout_s: float = 5.0,
) -> tuple[float, float, dict[str, Any]]:
    """Poll recommendations until the group's share rises by `margin`.

    Returns (seconds waited, share reached, the last answer).
    """
    started = time.monotonic()
    while True:
        answer = api.recommend(user, k=k)
        share = group_share(world, [i["item_id"] for i in answer["items"]], group)
        waited = time.monotonic() - started
        if share >= before + margin or waited > timeout_s:
            return waited, share, answer
        time.sleep(0.02)
