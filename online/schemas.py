"""Request and response bodies of the API (separate models; OpenAPI is generated from them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Item(BaseModel):
    item_id: str
    score: float = Field(description="What the policy ranked by (bandit score or popularity).")
    propensity: float = Field(
        description="Probability that the policy puts this item at this position (logged)."
    )


class Recommendations(BaseModel):
    request_id: str = Field(description="Send it back on clicks (`request_id`) to earn rewards.")
    user_id: str
    items: list[Item]
    model_version: str | None
    policy: str = Field(description="thompson | greedy | random, or popularity when degraded.")
    degraded: bool = Field(description="True when answered from the popularity fallback.")
    reason: str | None = Field(None, description="Why degraded: no_model, store_down, …")


class EventResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected", "dropped"]
    event_id: str | None = None
    field: str | None = None
    message: str | None = None


class IngestResult(BaseModel):
    accepted: int
    rejected: int
    dropped: int = Field(description="Valid but not queued: the Kafka buffer is full; retry.")
    results: list[EventResult]


class EventIn(BaseModel):
    """Event contract v1 (documentation only: bodies are validated by `streamrec.events`)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(max_length=128)
    event_type: Literal["impression", "click", "add_to_cart", "purchase", "view"]
    user_id: str = Field(max_length=128)
    item_id: str = Field(max_length=128)
    ts: str | int = Field(description="ISO 8601 with offset, or epoch milliseconds (UTC).")
    request_id: str | None = Field(None, max_length=128)
    position: int | None = Field(None, ge=0, le=10_000)
    propensity: float | None = Field(None, gt=0, le=1)
    context: dict[str, str | int | float | bool] | None = Field(None, max_length=16)


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    checks: dict[str, Any]


class ReloadResult(BaseModel):
    model_version: str | None
    changed: bool
    error: str | None = None
