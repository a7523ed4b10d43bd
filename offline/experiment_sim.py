"""Planted experiments: simulated impression, click and conversion logs with a known
lift or a lost share of users, for demos (`streamrec experiment simulate`) and tests."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from online.experiments import Experiment


def simulate_experiment(
    world: Any,
    exp: Experiment,
    *,
    sessions: int,
    start_ms: int,
    span_ms: int,
    ctr_lift: dict[str, float] | None = None,
    lost_users: dict[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Archive-shaped events of `exp` running on a `streamrec.simulation.World`.

    Users arrive by the world's activity, see a popularity-drawn slate and click by its
    click model, plus `ctr_lift[variant]` (absolute; 0.02 = a 2-point CTR lift) for the
    users `assign` puts in that variant. `lost_users[variant]` is the share of that
    variant's users whose events never reach the log: a planted sample-ratio mismatch.
    """
    from online.experiments import assign

    p = world.params
    rng = np.random.default_rng(seed)
    lift, lost = ctr_lift or {}, lost_users or {}
    names = [v.name for v in exp.variants]
    users = rng.choice(p.users, size=sessions, p=world.activity)
    seen = np.unique(users)
    variant_of = np.zeros(p.users, dtype=np.int64)
    variant_of[seen] = [names.index(assign(exp, f"u{u}").name) for u in seen]
    lift_of = np.array([lift.get(n, 0.0) for n in names])[variant_of]
    lose_of = rng.random(p.users) < np.array([lost.get(n, 0.0) for n in names])[variant_of]
    users = users[~lose_of[users]]
    n = len(users)
    slates = rng.choice(p.items, size=(n, p.slate), p=world.popularity).ravel()
    position = np.tile(np.arange(p.slate), n)
    u_rep = np.repeat(users, p.slate)
    prob = world.click_prob(u_rep, slates, position) + lift_of[u_rep]
    clicked = rng.random(prob.shape) < np.clip(prob, 0.0, 1.0)
    cart = clicked & (rng.random(prob.shape) < p.cart_rate)
    buy = cart & (rng.random(prob.shape) < p.purchase_rate)
    t_imp = np.repeat(start_ms + np.sort(rng.integers(0, span_ms, size=n)), p.slate)
    # Every event is (impression row, type): impressions, then their reactions.
    parts = [np.arange(n * p.slate)] + [np.flatnonzero(m) for m in (clicked, cart, buy)]
    row = np.concatenate(parts)
    kind = np.repeat(np.arange(4), [len(x) for x in parts])
    delay = np.array([0, 5_000, 60_000, 120_000])[kind] + 1000 * position[row] * (kind > 0)
    ts = t_imp[row] + delay
    order = np.argsort(ts, kind="stable")
    row, kind, ts = row[order], kind[order], ts[order]
    none = np.array([None], dtype=object)
    req = np.repeat(np.array([f"r{seed}-{i}" for i in range(n)], dtype=object), p.slate)
    ctx = np.array(
        [json.dumps({"experiment": exp.name, "variant": nm, "policy": "sim"}) for nm in names],
        dtype=object,
    )[variant_of[u_rep]]
    return pd.DataFrame(
        {
            "event_id": f"x{seed}-" + pd.RangeIndex(len(row)).astype(str),
            "event_type": np.array(["impression", "click", "add_to_cart", "purchase"])[kind],
            "user_id": np.array([f"u{u}" for u in range(p.users)], dtype=object)[u_rep[row]],
            "item_id": np.array([f"i{i}" for i in range(p.items)], dtype=object)[slates[row]],
            "ts_ms": ts,
            "request_id": np.where(kind <= 1, req[row], none),
            "position": np.where(kind <= 1, position[row].astype(object), none),
            "context": np.where(kind == 0, ctx[row], none),
        }
    )
