"""A simulated world with a planted ground truth, for demos, benchmarks and learning tests.

Users and items live in latent taste groups. Each user has a latent vector near its
group's centroid, each item one near its own group's centroid, and a popularity from a
Zipf law. A session shows a user a slate of items drawn by a known logging policy
(popularity-weighted, so every impression carries its true propensity), and each shown
item is clicked with probability

    P(click | u, i, pos) = position_bias[pos] * sigmoid(affinity * <u, i> + pop_weight *
                           log(popularity_i * n_items) + bias)

A click is followed by a product `view`, sometimes an `add_to_cart`, sometimes a
`purchase`. Later stages test that they learn this model: the latent groups, the click
model and the seed are saved (`World.save`, plain .npz, no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WorldParams:
    users: int = 1000
    items: int = 500
    groups: int = 8
    dim: int = 16
    slate: int = 10
    affinity: float = 2.5
    pop_weight: float = 0.3
    bias: float = -2.5
    zipf: float = 0.9
    spread: float = 0.1  # per-dimension spread of users/items around their group centroid
    cart_rate: float = 0.3
    purchase_rate: float = 0.5
    seed: int = 0


class World:
    def __init__(self, params: WorldParams) -> None:
        if params.users < 1 or params.items < params.slate:
            raise ValueError("need at least one user and at least `slate` items")
        self.params = p = params
        rng = np.random.default_rng(p.seed)
        centroids = rng.normal(size=(p.groups, p.dim))
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        self.user_group = rng.integers(0, p.groups, size=p.users)
        self.item_group = rng.integers(0, p.groups, size=p.items)
        self.user_vec = centroids[self.user_group] + p.spread * rng.normal(size=(p.users, p.dim))
        self.item_vec = centroids[self.item_group] + p.spread * rng.normal(size=(p.items, p.dim))
        self.user_vec /= np.linalg.norm(self.user_vec, axis=1, keepdims=True)
        self.item_vec /= np.linalg.norm(self.item_vec, axis=1, keepdims=True)
        ranks = rng.permutation(p.items) + 1
        pop = 1.0 / ranks.astype(float) ** p.zipf
        self.popularity = pop / pop.sum()
        activity = 1.0 / (rng.permutation(p.users) + 1.0) ** 0.5
        self.activity = activity / activity.sum()
        self.position_bias = 1.0 / np.log2(np.arange(p.slate) + 2.0)
        self._rng = np.random.default_rng(p.seed + 1)
        self._next_id = 0

    # --- the planted model -------------------------------------------------------------

    def click_prob(self, users: np.ndarray, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
        p = self.params
        logit = (
            p.affinity * np.einsum("ij,ij->i", self.user_vec[users], self.item_vec[items])
            + p.pop_weight * np.log(self.popularity[items] * p.items)
            + p.bias
        )
        return self.position_bias[positions] / (1.0 + np.exp(-logit))

    # --- events ------------------------------------------------------------------------

    def _eid(self) -> str:
        self._next_id += 1
        return f"s{self.params.seed}-{self._next_id}"

    def session(self, user: int | None = None, n_sessions: int = 1) -> Iterator[dict[str, Any]]:
        """Events (without `ts`) of sessions: a slate of impressions, then the reactions."""
        p, rng = self.params, self._rng
        for _ in range(n_sessions):
            u = user if user is not None else int(rng.choice(p.users, p=self.activity))
            slate = rng.choice(p.items, size=p.slate, replace=False, p=self.popularity)
            positions = np.arange(p.slate)
            clicks = rng.random(p.slate) < self.click_prob(np.full(p.slate, u), slate, positions)
            request_id = f"r-{self._eid()}"
            uid = f"u{u}"
            for pos, item in enumerate(slate):
                yield {
                    "event_id": self._eid(),
                    "event_type": "impression",
                    "user_id": uid,
                    "item_id": f"i{item}",
                    "request_id": request_id,
                    "position": pos,
                    "propensity": round(float(min(1.0, p.slate * self.popularity[item])), 6),
                }
            for clicked in np.flatnonzero(clicks):
                iid = f"i{slate[clicked]}"
                base = {"user_id": uid, "item_id": iid}
                yield {
                    "event_id": self._eid(),
                    "event_type": "click",
                    **base,
                    "request_id": request_id,
                    "position": int(clicked),
                }
                yield {"event_id": self._eid(), "event_type": "view", **base}
                if rng.random() < p.cart_rate:
                    yield {"event_id": self._eid(), "event_type": "add_to_cart", **base}
                    if rng.random() < p.purchase_rate:
                        yield {"event_id": self._eid(), "event_type": "purchase", **base}

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """Exactly `n` events (without `ts`) from as many sessions as needed."""
        produced = 0
        while produced < n:
            for ev in self.session():
                yield ev
                produced += 1
                if produced >= n:
                    return

    def history(self, n: int, start_ms: int, span_ms: int) -> Iterator[dict[str, Any]]:
        """Exactly `n` events with event times: sessions spread evenly over the span.

        A backdated log for offline work (training, evaluation, demos) that needs days of
        history without waiting for them; events of one session are a second apart.
        """
        if n < 1 or span_ms < 1:
            return
        sessions = max(1, n // (self.params.slate + 2))
        gap = span_ms / sessions
        produced, s = 0, 0
        while produced < n:
            t0 = start_ms + int(min(s, sessions - 1) * gap)
            for k, ev in enumerate(self.session()):
                ev["ts"] = t0 + 1000 * k
                yield ev
                produced += 1
                if produced >= n:
                    return
            s += 1

    def click_log(self, n: int, start_ms: int, span_ms: int) -> dict[str, np.ndarray]:
        """`n` clicks drawn in bulk from the same click model, impressions left out.

        The shape a team's own interaction history has (`user_id,item_id,timestamp`):
        what benchmarks and `streamrec import` tests train on at millions of rows, where
        the session-by-session generator would take minutes. Slates are drawn with
        replacement here (a rare repeat in a slate), the only difference.
        """
        p, rng = self.params, self._rng
        users_out, items_out = [], []
        have = 0
        while have < n:
            sessions = max(1024, int((n - have) / 0.5))
            users = rng.choice(p.users, size=sessions, p=self.activity)
            slates = rng.choice(p.items, size=(sessions, p.slate), p=self.popularity)
            pos = np.broadcast_to(np.arange(p.slate), slates.shape)
            probs = self.click_prob(np.repeat(users, p.slate), slates.ravel(), pos.ravel()).reshape(
                slates.shape
            )
            clicked = rng.random(slates.shape) < probs
            users_out.append(np.broadcast_to(users[:, None], slates.shape)[clicked])
            items_out.append(slates[clicked])
            have += int(clicked.sum())
        users_arr = np.concatenate(users_out)[:n]
        items_arr = np.concatenate(items_out)[:n]
        ts = start_ms + np.sort(rng.integers(0, span_ms, size=n))
        return {"user": users_arr, "item": items_arr, "ts_ms": ts}

    # --- persistence -------------------------------------------------------------------

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            params=np.array(json.dumps(asdict(self.params))),
            user_group=self.user_group,
            item_group=self.item_group,
            user_vec=self.user_vec,
            item_vec=self.item_vec,
            popularity=self.popularity,
        )

    @staticmethod
    def load(path: Path) -> World:
        with np.load(path, allow_pickle=False) as data:
            params = WorldParams(**json.loads(str(data["params"])))
        return World(params)
