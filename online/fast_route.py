"""The hot route, `GET /v1/recommendations/{user_id}`, answered as plain ASGI.

FastAPI's request machinery (routing, dependency solving, a thread hop for the services
dependency, pydantic-checked parameters, JSONResponse) cost about 0.6 ms a request on
the 2-core dev machine: a quarter of the request's CPU. Requests in the common, clean
form skip it: `parse_request` accepts only a query it can validate exactly as the
FastAPI route would (known keys, once each, plain values inside the documented bounds)
and hands anything else (an error to report, an escape, a duplicate, an unknown key)
to the FastAPI route, which stays the specification: it documents the operation in
OpenAPI and answers every request the fast path declines. A test holds the two to the
same `RecRequest` on fuzzed queries.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import msgspec
from starlette.types import Scope, Send

from online import metrics
from online.recommender import RecAnswer, RecRequest
from streamrec.errors import StreamrecError
from streamrec.events import MAX_ID_CHARS

log = logging.getLogger(__name__)

PREFIX = "/v1/recommendations/"
CONTEXT_KEYS = ("device", "page", "surface")
CONTEXT_CHARS = 64
MAX_K = 1000  # the route's own bound; the configured max_k is checked on top
POLICIES = frozenset(("thompson", "greedy", "random"))
_PLAIN = re.compile(rf"[A-Za-z0-9_.~-]{{1,{CONTEXT_CHARS}}}")
_K = re.compile(r"[1-9][0-9]{0,3}")
_BOOL = {"true": True, "false": False, "1": True, "0": False}
_HEADERS = [(b"content-type", b"application/json")]
_ENCODE = msgspec.json.Encoder().encode


def parse_request(path: str, query: bytes, max_k: int) -> RecRequest | None:
    """The request, when path and query are in the clean form; None = let FastAPI decide."""
    user_id = path[len(PREFIX) :]
    if not user_id or len(user_id) > MAX_ID_CHARS or "/" in user_id:
        return None
    k, exclude_seen, policy = 10, True, None
    context: dict[str, str | int | float | bool] = {}
    if query:
        try:
            text = query.decode("ascii")
        except UnicodeDecodeError:
            return None
        seen: set[str] = set()
        for pair in text.split("&"):
            key, eq, value = pair.partition("=")
            if not eq or key in seen or not _PLAIN.fullmatch(value):
                return None
            seen.add(key)
            if key == "k":
                if not _K.fullmatch(value) or int(value) > min(MAX_K, max_k):
                    return None
                k = int(value)
            elif key == "exclude_seen":
                if value not in _BOOL:
                    return None
                exclude_seen = _BOOL[value]
            elif key == "policy":
                if value not in POLICIES:
                    return None
                policy = value
            elif key in CONTEXT_KEYS:
                context[key] = value
            else:
                return None
        # The route builds context in this order; keep it so impressions log the same.
        context = {key: context[key] for key in CONTEXT_KEYS if key in context}
    return RecRequest(user_id, k, context, exclude_seen, policy)


def answer_body(answer: RecAnswer) -> dict[str, Any]:
    """The response document (the `Recommendations` schema)."""
    return {
        "request_id": answer.request_id,
        "user_id": answer.user_id,
        "items": [
            {"item_id": i.item_id, "score": i.score, "propensity": i.propensity}
            for i in answer.items
        ],
        "model_version": answer.model_version,
        "policy": answer.policy,
        "degraded": answer.degraded,
        "reason": answer.reason,
    }


def known_error(exc: StreamrecError) -> tuple[int, dict[str, Any]]:
    """Status and error document for a StreamrecError (logged when it is the server's)."""
    code = type(exc).__name__
    if exc.http_status >= 500:
        log.error("%s: %s", code, exc.message)
    field = getattr(exc, "field", None)
    return exc.http_status, {"error": {"code": code, "message": exc.message, "field": field}}


async def try_fast(app: Any, scope: Scope, send: Send) -> bool:
    """Answer the request here if it is a clean recommendations GET; False = not handled."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return False
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return False
    services = getattr(app.state, "services", None)
    if services is None:
        return False
    req = parse_request(path, scope["query_string"], services.settings.max_k)
    if req is None:
        return False
    try:
        answer = services.recommender.recommend(req)
        if not all(math.isfinite(v) for i in answer.items for v in (i.score, i.propensity)):
            raise ValueError("a non-finite score or propensity")  # JSONResponse refuses too
        status, body = 200, _ENCODE(answer_body(answer))
        metrics.REQUESTS.labels("recommendations", "degraded" if answer.degraded else "ok").inc()
    except StreamrecError as exc:  # as the app's handler for known errors answers
        status, doc = known_error(exc)
        body = _ENCODE(doc)
    except Exception:  # as the app's catch-all handler answers
        log.exception("unhandled error on GET %s", path)
        metrics.REQUESTS.labels(path, "error").inc()
        status = 500
        message = "Internal error; the server log has the details."
        body = _ENCODE({"error": {"code": "internal", "message": message, "field": None}})
    headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return True
