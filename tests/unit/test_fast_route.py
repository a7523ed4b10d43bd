"""The plain-ASGI recommendations route agrees with the FastAPI route it shortcuts.

Every request the fast path accepts must be one the FastAPI route also accepts, turned
into the same `RecRequest` and answered with the same document; everything else it must
leave to FastAPI (which names the bad field).
"""

from __future__ import annotations

import asyncio
import json
import random
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI

from online.app import create_app
from online.fast_route import parse_request
from online.recommender import RecAnswer, RecItem, RecRequest
from streamrec.errors import StoreError
from streamrec.settings import load_settings

KEYS = ["k", "exclude_seen", "device", "page", "surface", "policy", "K", "x", ""]
VALUES = [
    "10", "1", "0", "01", "1000", "1001", "9999", "+5", " 5", "5.0", "-1", "",
    "true", "false", "True", "yes", "on", "0", "1", "thompson", "greedy", "random",
    "THOMPSON", "ios", "a" * 64, "a" * 65, "%41", "a+b", "a%20b", "~x-y_z.1", "é",
]  # fmt: skip
USERS = ["u1", "a" * 128, "a" * 129, "a/b", "😀", " x", "u%41", "", "x" * 3]


class Capture:
    def __init__(self) -> None:
        self.seen: list[RecRequest] = []

    def recommend(self, req: RecRequest) -> RecAnswer:
        self.seen.append(req)
        items = [RecItem(f"i{j}", 1.0 / (j + 1), 0.5) for j in range(min(req.k, 3))]
        return RecAnswer("r1", req.user_id, items, "v1", req.policy or "thompson", False)


def _app(max_k: int = 100) -> tuple[FastAPI, Capture]:
    capture = Capture()
    settings = load_settings(api_auth="off", max_k=max_k)
    services: Any = SimpleNamespace(settings=settings, recommender=capture)
    return create_app(settings, services), capture


def _call(app: Any, path: str, query: str, *, slow: bool) -> tuple[int, Any]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "query_string": query.encode("utf-8"),
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    handler = FastAPI.__call__ if slow else type(app).__call__
    try:
        asyncio.run(handler(app, scope, receive, send))
    except Exception:  # Starlette re-raises after answering 500, for the server to log
        if not sent:
            raise
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_clean_requests_take_the_fast_path() -> None:
    req = parse_request("/v1/recommendations/u1", b"k=5&device=ios&exclude_seen=false", 100)
    assert req == RecRequest("u1", 5, {"device": "ios"}, False, None)
    assert parse_request("/v1/recommendations/u1", b"", 100) == RecRequest("u1", 10)
    assert parse_request("/v1/recommendations/u1", b"k=101", 100) is None  # over max_k
    assert parse_request("/v1/recommendations/u1", b"k=5&k=6", 100) is None  # duplicate


def test_fast_and_fastapi_routes_agree_on_fuzzed_requests() -> None:
    rng = random.Random(7)
    app, capture = _app()
    fast_taken = 0
    for _ in range(600):
        user = rng.choice(USERS)
        pairs = [
            f"{rng.choice(KEYS)}={rng.choice(VALUES)}" if rng.random() < 0.9 else rng.choice(KEYS)
            for _ in range(rng.randrange(4))
        ]
        if rng.random() < 0.5:  # mostly well-formed: the fast path should see plenty
            pairs = [p for p in pairs if p.split("=")[0] in ("k", "device", "policy")]
        query = "&".join(pairs)
        path = f"/v1/recommendations/{user}"
        parsed = parse_request(path, query.encode(), 100)
        capture.seen.clear()
        slow_status, slow_body = _call(app, path, query, slow=True)
        slow_req = capture.seen[-1] if capture.seen else None
        if parsed is None:
            continue
        fast_taken += 1
        capture.seen.clear()
        fast_status, fast_body = _call(app, path, query, slow=False)
        assert (fast_status, slow_status) == (200, 200), (path, query, slow_body)
        assert capture.seen == [parsed] and slow_req == parsed, (path, query)
        assert fast_body == slow_body
    assert fast_taken > 100  # the comparison above really ran


def test_declined_requests_still_get_fastapis_answer() -> None:
    app, _ = _app(max_k=20)
    status, body = _call(app, "/v1/recommendations/u1", "k=50", slow=False)
    assert status == 422 and body["error"]["field"] == "k"
    status, body = _call(app, "/v1/recommendations/u1", "policy=best", slow=False)
    assert status == 422 and body["error"]["field"] == "policy"
    status, body = _call(app, "/v1/recommendations/" + "a" * 129, "", slow=False)
    assert status == 422 and body["error"]["field"] == "user_id"


class Failing(Capture):
    def __init__(self, exc: Exception | None = None, score: float = 1.0) -> None:
        super().__init__()
        self.exc, self.score = exc, score

    def recommend(self, req: RecRequest) -> RecAnswer:
        if self.exc is not None:
            raise self.exc
        return RecAnswer("r1", req.user_id, [RecItem("i1", self.score, 1.0)], "v1", "x", False)


@pytest.mark.parametrize(
    ("recommender", "status"),
    [
        (Failing(StoreError("redis down")), 503),
        (Failing(RuntimeError("boom")), 500),
        (Failing(score=float("nan")), 500),
    ],
)
def test_failures_answer_the_same_on_both_paths(recommender: Capture, status: int) -> None:
    app, _ = _app()
    app.state.services.recommender = recommender
    fast = _call(app, "/v1/recommendations/u1", "k=3", slow=False)
    slow = _call(app, "/v1/recommendations/u1", "k=3", slow=True)
    assert fast == slow and fast[0] == status
