"""Impression messages from byte templates against the plain formulation: one dict per
event, encoded by msgspec, as the request path wrote them before."""

from __future__ import annotations

import json

import msgspec
import numpy as np

from models.bandit_state import encode_x
from online.impressions import impression_messages
from streamrec.events import parse_event


def reference(request_id, user_id, ts, items, context, x):  # type: ignore[no-untyped-def]
    ctx = dict(context)
    head = {"event_type": "impression", "user_id": user_id, "ts": ts}
    out = []
    for pos, (item_id, propensity) in enumerate(items):
        if x is not None:
            ctx["x"] = encode_x(x[pos])
        wire = {
            "event_id": f"{request_id}-{pos}",
            **head,
            "item_id": item_id,
            "request_id": request_id,
            "position": pos,
            "propensity": propensity,
            "context": ctx,
        }
        out.append((msgspec.json.encode(wire), user_id.encode()))
    return out


def test_messages_equal_the_dict_encoding() -> None:
    rng = np.random.default_rng(0)
    odd_ids = ['i"quoted"', "i\\back", "ünï", "i\nnl", "plain"]
    contexts = [
        {"policy": "thompson", "model": "v0001"},
        {"device": "ios", "page": 3, "ok": True, "policy": "random"},
        {"policy": "greedy", "x": "stale"},  # an "x" already there is replaced
    ]
    for trial in range(60):
        k = int(rng.integers(1, 12))
        items = [(odd_ids[j % 5] + str(j), float(rng.uniform(1e-4, 1))) for j in range(k)]
        x = rng.normal(size=(k, 7)) * 10.0 ** rng.integers(-6, 6, (k, 7)) if trial % 3 else None
        args = ("ab" * 16, f"user-{trial}-ü", "2026-12-02T10:00:00.123Z", items)
        ctx = contexts[trial % 3]
        got = impression_messages(*args, ctx, x)
        want = reference(*args, ctx, x)
        assert [key for _, key in got] == [key for _, key in want]
        assert [json.loads(v) for v, _ in got] == [json.loads(v) for v, _ in want]
        for value, _ in got:  # and each is a valid contract-v1 event
            parse_event(value, now_ms=1_796_300_000_000, max_bytes=4096)
