"""Event contract v1: parse_event accepts valid events and rejects the rest with InvalidEvent."""

from __future__ import annotations

import calendar
import contextlib
import json
import random
from typing import Any

import pytest

from streamrec.errors import InvalidEvent
from streamrec.events import (
    EVENT_TYPES,
    KNOWN_FIELDS,
    MAX_CONTEXT_KEYS,
    MIN_TS_MS,
    REQUIRED_FIELDS,
    Event,
    UnknownFields,
    _parse_fast,
    parse_event,
    validate_event,
)

NOW = calendar.timegm((2026, 11, 22, 12, 0, 0)) * 1000
TS_ISO = "2026-11-22T10:00:00.123Z"
TS_MS = calendar.timegm((2026, 11, 22, 10, 0, 0)) * 1000 + 123
VALID: dict[str, Any] = {
    "event_id": "e-1",
    "event_type": "click",
    "user_id": "u1",
    "item_id": "i9",
    "ts": TS_ISO,
    "request_id": "r-7",
    "position": 2,
    "propensity": 0.31,
    "context": {"device": "ios"},
}


def parse(obj: Any, **kw: Any) -> Event:
    return parse_event(json.dumps(obj).encode(), now_ms=NOW, **kw)


def rejected(raw: bytes | None, **kw: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, now_ms=NOW, **kw)
    return info.value


def with_(**changes: Any) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def test_valid_iso_event() -> None:
    ev = parse(VALID)
    assert ev == Event("e-1", "click", "u1", "i9", TS_MS, "r-7", 2, 0.31, {"device": "ios"})


def test_valid_epoch_ms_and_offsets() -> None:
    assert parse({**VALID, "ts": TS_MS}).ts_ms == TS_MS
    assert parse({**VALID, "ts": "2026-11-22T12:00:00.123+02:00"}).ts_ms == TS_MS
    minimal = {k: VALID[k] for k in REQUIRED_FIELDS}
    ev = parse(minimal)
    assert (ev.request_id, ev.position, ev.propensity, ev.context) == (None, None, None, {})
    assert parse({**VALID, "propensity": 1}).propensity == 1.0


def test_round_trip_via_to_bytes() -> None:
    ev = parse(VALID)
    assert parse_event(ev.to_bytes(), now_ms=NOW) == ev
    minimal = parse({k: VALID[k] for k in REQUIRED_FIELDS})
    assert json.loads(minimal.to_bytes()).keys() == set(REQUIRED_FIELDS)
    assert parse_event(minimal.to_bytes(), now_ms=NOW) == minimal


def test_round_trip_keeps_every_millisecond() -> None:
    rng = random.Random(0)
    for _ in range(5000):
        ms = rng.randrange(MIN_TS_MS, NOW)
        ev = Event("e", "view", "u", "i", ms)
        assert parse_event(ev.to_bytes(), now_ms=NOW).ts_ms == ms, ev.to_wire()["ts"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"a": 1', b"\xff\xfe{}"])
def test_bad_json(raw: bytes) -> None:
    err = rejected(raw)
    assert err.field is None and "not valid JSON" in err.message


def test_invalid_utf8_inside_a_valid_event() -> None:
    raw = with_(user_id="uXX").replace(b"uXX", b"u\xff\xfe")
    assert rejected(raw).field is None


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"event"', b"3", b"null", b"true"])
def test_non_object_json(raw: bytes) -> None:
    err = rejected(raw)
    assert err.field is None and "JSON object" in err.message


def test_oversized_event() -> None:
    raw = with_()
    assert parse_event(raw, now_ms=NOW, max_bytes=len(raw)).event_id == "e-1"
    err = rejected(raw, max_bytes=len(raw) - 1)
    assert err.field is None and "limit" in err.message


def test_tombstone() -> None:
    err = rejected(None)
    assert "tombstone" in err.message


@pytest.mark.parametrize("name", REQUIRED_FIELDS)
def test_missing_required_field(name: str) -> None:
    obj = {k: v for k, v in VALID.items() if k != name}
    assert rejected(json.dumps(obj).encode()).field == name
    assert rejected(with_(**{name: None})).field == name


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"user_id": 7}, "user_id"),
        ({"item_id": ["i1"]}, "item_id"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"request_id": 5}, "request_id"),
        ({"position": True}, "position"),
        ({"position": -1}, "position"),
        ({"position": 10_001}, "position"),
        ({"position": 1.5}, "position"),
        ({"propensity": 0}, "propensity"),
        ({"propensity": 1.5}, "propensity"),
        ({"propensity": -0.2}, "propensity"),
        ({"propensity": True}, "propensity"),
        ({"propensity": "0.3"}, "propensity"),
        ({"context": {"a": {"b": 1}}}, "context"),
        ({"context": {"a": [1]}}, "context"),
        ({"context": {"a": None}}, "context"),
        ({"context": {"a": "x" * 129}}, "context"),
        ({"context": {"k" * 129: 1}}, "context"),
        ({"context": ["a"]}, "context"),
        ({"context": {f"k{i}": i for i in range(MAX_CONTEXT_KEYS + 1)}}, "context"),
        ({"event_type": "like"}, "event_type"),
        ({"event_type": "Click"}, "event_type"),
        ({"event_type": ["click"]}, "event_type"),
        ({"ts": True}, "ts"),
        ({"ts": 1.7e12}, "ts"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": {"ms": 1}}, "ts"),
    ],
)
def test_wrong_types(changes: dict[str, Any], field: str) -> None:
    assert rejected(with_(**changes)).field == field


def test_context_limits_accept_the_maximum() -> None:
    ctx: dict[str, Any] = {f"k{i}": i for i in range(MAX_CONTEXT_KEYS)}
    ctx.update(k0="x" * 128, k1=True, k2=0.5)
    assert parse({**VALID, "context": ctx}).context == ctx


def test_unknown_field_reject_and_ignore() -> None:
    raw = with_(extra=1, zeta=2)
    err = rejected(raw)
    assert err.field == "extra"
    ev = parse_event(raw, now_ms=NOW, unknown_fields="ignore")
    assert ev == parse(VALID)


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-22T10:00:00",
        "2026-11-22T10:00:00.123",
        "1999-12-31T23:59:59.999Z",
        MIN_TS_MS - 1,
        1_700_000_000,
        NOW + 300_001,
        "2026-11-22T12:05:01Z",
    ],
)
def test_bad_timestamps(ts: Any) -> None:
    assert rejected(with_(ts=ts)).field == "ts"


def test_timestamp_bounds_are_inclusive() -> None:
    assert parse({**VALID, "ts": MIN_TS_MS}).ts_ms == MIN_TS_MS
    assert parse({**VALID, "ts": NOW + 300_000}).ts_ms == NOW + 300_000
    assert parse({**VALID, "ts": NOW + 10}, max_future_skew_ms=10).ts_ms == NOW + 10
    assert rejected(with_(ts=NOW + 11), max_future_skew_ms=10).field == "ts"


def test_huge_integer_propensity_is_invalid_event() -> None:
    assert rejected(with_(propensity=10**400)).field == "propensity"


def test_lone_surrogate_id_is_rejected() -> None:
    assert rejected(with_(user_id="u\ud800")).field == "user_id"


# --- fuzz --------------------------------------------------------------------------------

# 10**400 has its own test above (a huge integer propensity).
_NUMBERS = [None, True, False, 0, 1, -1, 3, 0.5, 1.0, 1.5, -0.0, 2**63, 2**70, -(2**70), 1e308]
_TEXTS = ["", "x", "click", "impression", "2026-11-22T10:00:00Z", "2026-11-22T10:00:00"]
_ODD = ["0001-01-01", "9999-12-31T23:59:59+14:00", "\ud800", "é" * 130, float("nan")]
_NESTED = [[], [1, "a"], {}, {"a": 1}, {"a": {"b": []}}, TS_MS, MIN_TS_MS, NOW + 10**6]
_POOL: list[Any] = [*_NUMBERS, *_TEXTS, *_ODD, *_NESTED, float("inf")]


def _random_obj(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return rng.choice(_POOL)
    obj: dict[str, Any] = {k: v for k, v in VALID.items() if rng.random() < 0.8}
    for _ in range(rng.randrange(4)):
        key = rng.choice([*sorted(KNOWN_FIELDS), "extra", "", "ts ", "EVENT_ID"])
        obj[key] = rng.choice(_POOL)
    return obj


def _random_bytes(rng: random.Random) -> bytes:
    mode = rng.randrange(3)
    if mode == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    raw = bytearray(with_())
    for _ in range(rng.randrange(1, 4)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    if mode == 2:
        del raw[rng.randrange(len(raw)) :]
    return bytes(raw)


def test_fuzz_raises_only_invalid_event() -> None:
    rng = random.Random(0)
    accepted = rejected_n = 0
    for i in range(2000):
        raw = _random_bytes(rng) if i % 2 else json.dumps(_random_obj(rng)).encode()
        try:
            ev = parse_event(raw, now_ms=NOW, unknown_fields=rng.choice(["reject", "ignore"]))
        except InvalidEvent as exc:
            assert isinstance(exc.message, str) and exc.message
            rejected_n += 1
            continue
        accepted += 1
        assert ev.event_type in EVENT_TYPES
        assert MIN_TS_MS <= ev.ts_ms <= NOW + 300_000
        assert all(
            isinstance(x, str) and 0 < len(x) <= 128 for x in (ev.event_id, ev.user_id, ev.item_id)
        )
        assert ev.propensity is None or 0.0 < ev.propensity <= 1.0
    assert accepted > 50 and rejected_n > 500  # the fuzz reached both outcomes


def _slow(raw: bytes, unknown_fields: UnknownFields) -> Event | str:
    """The reference outcome: json.loads + validate_event, or the rejection reason."""
    try:
        return validate_event(json.loads(raw), now_ms=NOW, unknown_fields=unknown_fields)
    except (ValueError, RecursionError):
        return "bad json"
    except InvalidEvent as exc:
        return f"{exc.field}: {exc.message}"


def _outcome(raw: bytes, unknown_fields: UnknownFields) -> Event | str:
    try:
        return parse_event(raw, now_ms=NOW, unknown_fields=unknown_fields)
    except InvalidEvent as exc:
        return (
            "bad json"
            if exc.message.startswith("not valid JSON")
            else f"{exc.field}: {exc.message}"
        )


def test_fast_path_never_changes_the_verdict() -> None:
    """parse_event (msgspec first) agrees with json.loads + validate_event on every input."""
    rng = random.Random(1)
    cases = [
        with_(),
        with_(context={}),
        with_(ts=TS_MS),
        with_(propensity=1),
        with_(ts=" " + TS_ISO),
    ]
    cases += [json.dumps({**VALID, "context": {f"k{i}": i for i in range(16)}}).encode()]
    cases += [with_(user_id="é" * 128), with_(user_id="é" * 129), with_(user_id="\U0001f600" * 128)]
    cases += [b'{"event_id":"a","event_id":"b"' + with_()[1:]]  # duplicate key: last wins
    cases += [with_()[:-1] + b',"zz":' + b"[" * 1000 + b"]" * 1000 + b"}"]  # deep, ignored
    # invalid UTF-8 in each kind of string the strict schema decodes (it skips no field)
    cases += [
        with_(context={"kXX": "v"}).replace(b"kXX", b"k\xff"),
        with_(context={"k": "vXX"}).replace(b"vXX", b"v\xed\xa0\x80"),
        with_(request_id="rXX").replace(b"rXX", b"r\xc3"),
        with_()[:-1] + b',"zz\xff":1}',
    ]
    cases += [_random_bytes(rng) for _ in range(1500)]
    cases += [json.dumps(_random_obj(rng)).encode() for _ in range(1500)]
    fast_hits = 0
    for raw in cases:
        for mode in ("reject", "ignore"):
            assert _outcome(raw, mode) == _slow(raw, mode), raw
            with contextlib.suppress(InvalidEvent):  # a ts out of bounds is judged there
                fast_hits += _parse_fast(raw, NOW, mode, 300_000) is not None
    assert fast_hits > 100  # the fast path really decided many of them
