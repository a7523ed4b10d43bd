"""The HTTP API: thin routes over `Services`. OpenAPI at /docs and /openapi.json.

    GET  /v1/recommendations/{user_id}?k=10&exclude_seen=true&device=…&page=…&surface=…
    POST /v1/events            one v1 event, a JSON array of them, or {"events": [...]}
    GET  /healthz  /readyz  /metrics
    POST /v1/admin/reload      swap in the registry's current model now

Errors are JSON `{"error": {"code", "message", "field"}}` with a 4xx status naming the
bad field; nothing ever answers with a stack trace.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from online import metrics
from online.fast_route import CONTEXT_CHARS, answer_body, known_error, try_fast
from online.recommender import RecRequest
from online.schemas import (
    ErrorBody,
    EventIn,
    EventResult,
    Health,
    IngestResult,
    Readiness,
    Recommendations,
    ReloadResult,
)
from online.services import Services, build_services
from streamrec.errors import InvalidEvent, RequestError, StoreError, StreamrecError, Unauthorized
from streamrec.events import MAX_ID_CHARS, validate_event
from streamrec.settings import Settings, get_settings

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key."},
    413: {"model": ErrorBody, "description": "Too many events or too large a body."},
    422: {"model": ErrorBody, "description": "A parameter or body field is invalid."},
}


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status)


async def get_services(request: Request) -> Services:  # async: no thread hop per request
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_key(
    services: ServicesDep, x_api_key: Annotated[str | None, Header(max_length=256)] = None
) -> None:
    if not services.check_key(x_api_key):
        raise Unauthorized("Missing or wrong X-API-Key header.")


AuthDep = Depends(require_key)


class StreamrecAPI(FastAPI):
    """FastAPI, with clean recommendation GETs answered first by `online.fast_route`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await try_fast(self, scope, send):
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """The ASGI app. Pass `services` to control their lifetime (tests, benchmarks)."""
    owned = services is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = app.state.services = services or build_services(settings or get_settings())
        if owned:
            await run_in_threadpool(svc.start)
        # Everything loaded so far (torch, FAISS, the model) lives for the whole process:
        # move it out of the collector's sight so a full GC pass does not stall requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if owned:
                await run_in_threadpool(svc.stop)

    app = StreamrecAPI(
        title="streamrec",
        version="1",
        summary="Real-time recommendations with bandit reranking, and event ingest.",
        lifespan=lifespan,
    )
    if services is not None:
        app.state.services = services
    _install_error_handlers(app)
    _routes(app)
    return app


def app_from_settings() -> FastAPI:
    """The app for `streamrec serve` (a factory, so each server process builds its own)."""
    return create_app(get_settings())


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header")]
        field = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request"))
        metrics.REQUESTS.labels("validation", "client_error").inc()
        return _error(422, "invalid_request", f"{field}: {msg}" if field else msg, field)

    @app.exception_handler(StreamrecError)
    async def known(_: Request, exc: StreamrecError) -> JSONResponse:
        status, doc = known_error(exc)
        return JSONResponse(doc, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.REQUESTS.labels(request.url.path, "error").inc()
        return _error(500, "internal", "Internal error; the server log has the details.")


def _routes(app: FastAPI) -> None:
    @app.get(
        "/v1/recommendations/{user_id}",
        response_model=Recommendations,
        responses=_ERRORS,
        tags=["serving"],
    )
    async def recommendations(
        services: ServicesDep,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
        k: Annotated[int, Query(ge=1, le=1000, description="How many items (≤ max_k).")] = 10,
        exclude_seen: Annotated[bool, Query(description="Skip recently seen items.")] = True,
        device: Annotated[str | None, Query(max_length=CONTEXT_CHARS)] = None,
        page: Annotated[str | None, Query(max_length=CONTEXT_CHARS)] = None,
        surface: Annotated[str | None, Query(max_length=CONTEXT_CHARS)] = None,
        policy: Annotated[
            Literal["thompson", "greedy", "random"] | None,
            Query(description="Override the configured reranking policy."),
        ] = None,
    ) -> Recommendations | JSONResponse:
        if k > services.settings.max_k:
            raise RequestError(f"k: at most {services.settings.max_k}", field="k")
        context: dict[str, str | int | float | bool] = {
            name: value
            for name, value in (("device", device), ("page", page), ("surface", surface))
            if value is not None
        }
        req = RecRequest(user_id, k, context, exclude_seen, policy)
        answer = services.recommender.recommend(req)
        metrics.REQUESTS.labels("recommendations", "degraded" if answer.degraded else "ok").inc()
        return JSONResponse(answer_body(answer))

    @app.post(
        "/v1/events",
        response_model=IngestResult,
        responses=_ERRORS,
        dependencies=[AuthDep],
        tags=["ingest"],
        openapi_extra={"requestBody": _events_body_schema()},
    )
    async def events(request: Request, services: ServicesDep) -> JSONResponse:
        s = services.settings
        limit = s.max_batch_events * s.max_event_bytes + 1024
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"body: larger than {limit} bytes", field="body", status=413)
        raw = await request.body()
        if len(raw) > limit:
            raise RequestError(f"body: larger than {limit} bytes", field="body", status=413)
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise RequestError("body: not valid JSON", field="body", status=400) from None
        batch = _event_list(doc)
        if len(batch) > s.max_batch_events:
            raise RequestError(
                f"events: at most {s.max_batch_events} per request", field="events", status=413
            )
        results, valid = [], []
        now_ms = int(time.time() * 1000)
        for i, obj in enumerate(batch):
            try:
                ev = validate_event(
                    obj,
                    now_ms=now_ms,
                    unknown_fields=s.unknown_fields,
                    max_future_skew_ms=s.max_future_skew_s * 1000,
                )
            except InvalidEvent as exc:
                results.append(
                    EventResult(index=i, status="rejected", field=exc.field, message=exc.reason)
                )
                continue
            valid.append((i, ev))
            results.append(EventResult(index=i, status="accepted", event_id=ev.event_id))
        dropped = 0
        if valid and services.ingest is not None:
            for i, ev in valid:
                if services.ingest.offer([ev]):
                    dropped += 1
                    results[i] = EventResult(
                        index=i,
                        status="dropped",
                        event_id=ev.event_id,
                        message="Kafka buffer full; retry later",
                    )
        rejected = sum(r.status == "rejected" for r in results)
        accepted = len(results) - rejected - dropped
        metrics.INGESTED.labels("accepted").inc(accepted)
        metrics.INGESTED.labels("rejected").inc(rejected)
        metrics.INGESTED.labels("dropped").inc(dropped)
        body = IngestResult(accepted=accepted, rejected=rejected, dropped=dropped, results=results)
        status = 202 if accepted == len(results) else (503 if dropped and not rejected else 422)
        if accepted and accepted < len(results):
            status = 207
        return JSONResponse(body.model_dump(), status_code=status)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["operations"])
    async def readyz(services: ServicesDep) -> JSONResponse:
        checks: dict[str, Any] = {}
        snap = services.models.current
        checks["model"] = snap.version if snap else (services.models.last_error or "not loaded")
        checks["index"] = len(snap.index) if snap else 0
        try:
            services.features.users(["__readyz__"])
            checks["online_store"] = "ok"
        except StoreError as exc:
            checks["online_store"] = exc.message
        checks["online_state"] = services.live.last_error or "ok"
        ready = snap is not None and checks["online_store"] == "ok"
        body = Readiness(ready=ready, model_version=snap.version if snap else None, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/admin/reload",
        response_model=ReloadResult,
        responses=_ERRORS,
        dependencies=[AuthDep],
        tags=["operations"],
    )
    async def reload(services: ServicesDep) -> ReloadResult:
        version, changed = await run_in_threadpool(services.reload)
        return ReloadResult(
            model_version=version, changed=changed, error=services.models.last_error
        )


def _event_list(doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and set(doc) == {"events"}:
        if not isinstance(doc["events"], list):
            raise RequestError("events: must be a list", field="events")
        return list(doc["events"])
    if isinstance(doc, dict):
        return [doc]
    raise RequestError('body: an event object, a list of events or {"events": [...]}', "body")


def _events_body_schema() -> dict[str, Any]:
    one = EventIn.model_json_schema()
    many = {"type": "array", "items": one}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        one,
                        many,
                        {"type": "object", "properties": {"events": many}, "required": ["events"]},
                    ]
                }
            }
        },
    }
