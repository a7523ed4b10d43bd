"""Fuzzing the OpenAPI spec: malformed requests to every operation never produce a 5xx.

Schemathesis-style, seeded and self-contained: for each operation in the app's own
`/openapi.json`, parameters get values from a pool of hostile strings and numbers, and
bodies get random JSON (and mutated valid events). Every answer must be < 500 and, when
it is an error, the JSON error body naming what was wrong (never a stack trace).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from features.repo import apply
from online.app import create_app
from online.loop import seed_history, train_and_publish
from online.server import BackgroundServer
from online.services import build_services
from streamrec.settings import load_settings
from streamrec.simulation import World, WorldParams
from streams.broker import free_port

pytestmark = pytest.mark.integration

NASTY: list[Any] = [
    "",
    " ",
    "a" * 129,
    "a" * 5000,
    "\x00",
    "\ud83d\ude00",
    "😀" * 40,
    "%00",
    "../../etc/passwd",
    "-1",
    "0",
    "1001",
    "99999999999999999999999",
    "1e309",
    "NaN",
    "-Infinity",
    "true",
    "null",
    "[]",
    "{}",
    "<script>",
    "' OR 1=1 --",
    "u1",
]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -(2**70), 10**400 if depth else 7])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-320, 3.14])
    if kind in (4, 5):
        return rng.choice(NASTY)
    if kind in (6, 7):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["event_id", "event_type", "user_id", "item_id", "ts", "context", "events", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def _mutated_event(rng: random.Random) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": f"e{rng.randrange(10**6)}",
        "event_type": "click",
        "user_id": "u1",
        "item_id": "i1",
        "ts": int(time.time() * 1000),
        "request_id": "r1",
        "position": 1,
        "propensity": 0.5,
        "context": {"device": "ios"},
    }
    for _ in range(rng.randrange(1, 4)):
        field = rng.choice([*ev.keys(), "unknown_field"])
        ev[field] = _random_json(rng, 1)
    return ev


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root: Path = tmp_path_factory.mktemp("fuzz")
    settings = load_settings(data_dir=root, api_auth="off", max_batch_events=50)
    world = World(WorldParams(users=100, items=80, seed=2))
    seed_history(settings, world, 10_000, days=1)
    assert train_and_publish(settings, epochs=1).published
    apply(settings)
    services = build_services(settings, kafka=False)
    services.start()
    app = create_app(settings, services)
    with BackgroundServer(app, free_port()) as srv:
        yield srv, app.openapi()
    services.stop()


def _quote(value: str) -> str:
    """Percent-encode raw bytes, lone surrogates included (clients refuse to send those)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _check(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what} -> {r.status_code}: {r.text[:300]}"
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        if "results" in body:  # ingest: per-event reasons
            bad = [e for e in body["results"] if e["status"] == "rejected"]
            assert bad and all(e["message"] for e in bad), f"{what}: {r.text[:200]}"
        else:
            assert body["error"]["message"], f"{what}: {r.text[:200]}"
        assert "Traceback" not in r.text


def test_no_operation_answers_5xx_to_malformed_input(server: Any) -> None:
    srv, spec = server
    rng = random.Random(7)
    sent = 0
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                params = op.get("parameters", [])
                for _ in range(150):
                    url = path
                    query: dict[str, Any] = {}
                    headers: dict[str, str] = {}
                    for p in params:
                        if p["in"] == "path":
                            value = _quote(str(rng.choice(NASTY))) or "x"
                            url = url.replace("{" + p["name"] + "}", value)
                        elif rng.random() < 0.7:
                            value = rng.choice(NASTY)
                            if p["in"] == "query":
                                query[p["name"]] = _quote(str(value))
                            elif p["in"] == "header":
                                printable = "".join(c for c in str(value) if "!" <= c <= "~")
                                headers[p["name"]] = printable
                    content: bytes | None = None
                    if "requestBody" in op:
                        choice = rng.randrange(4)
                        if choice == 0:
                            content = json.dumps(_random_json(rng)).encode()
                        elif choice == 1:
                            batch = [_mutated_event(rng) for _ in range(rng.randrange(1, 5))]
                            content = json.dumps(batch).encode()
                        elif choice == 2:
                            content = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
                        else:
                            content = json.dumps([_mutated_event(rng)] * 60).encode()  # > max
                    if query:
                        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
                    r = client.request(method.upper(), url, headers=headers, content=content)
                    _check(r, f"{method.upper()} {url} {query} {content[:80] if content else ''!r}")
                    sent += 1
    assert sent >= 600


def test_bad_parameters_get_4xx_naming_the_field(server: Any) -> None:
    srv, _ = server
    cases = {
        "/v1/recommendations/u1?k=0": "k",
        "/v1/recommendations/u1?k=abc": "k",
        "/v1/recommendations/u1?k=101": "k",  # above max_k (100), below the hard cap
        f"/v1/recommendations/{'a' * 129}": "user_id",
        f"/v1/recommendations/u1?device={'d' * 65}": "device",
        "/v1/recommendations/u1?policy=greedyy": "policy",
        "/v1/recommendations/u1?exclude_seen=maybe": "exclude_seen",
    }
    for url, field in cases.items():
        r = httpx.get(srv.url + url)
        assert r.status_code == 422, url
        assert r.json()["error"]["field"] == field, (url, r.text)
    r = httpx.post(f"{srv.url}/v1/events", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    many = [{"event_id": str(n)} for n in range(51)]
    r = httpx.post(f"{srv.url}/v1/events", json=many)
    assert r.status_code == 413 and r.json()["error"]["field"] == "events"
