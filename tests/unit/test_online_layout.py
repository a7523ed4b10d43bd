"""The hand-written Feast byte layout equals what Feast's own code produces, byte for byte."""

from __future__ import annotations

import types
from typing import Any

import pytest

from features import online_layout as layout


@pytest.fixture(scope="module")
def feast() -> types.SimpleNamespace:
    """Feast's encoders, imported once per module (the import takes seconds)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import StringList, Value
    from google.protobuf.timestamp_pb2 import Timestamp

    return types.SimpleNamespace(
        serialize_entity_key=serialize_entity_key,
        mmh3=_mmh3,
        EntityKey=EntityKey,
        Value=Value,
        StringList=StringList,
        Timestamp=Timestamp,
    )


INTS = [0, 1, 127, 128, 300, 16_383, 16_384, -1, -5, 2**31, 2**40, 2**63 - 1, -(2**63)]
FLOATS = [0.0, -0.0, 1.0, 0.1, -2.5, 1 / 3, 1e-300, 1e300, float("inf"), float("-inf")]
STRINGS = ["", "a", "u1", "ctr_smoothed", "ünïcødé", "😀-emoji", "x" * 127, "y" * 300]
STRING_LISTS: list[Any] = [
    [],
    [""],
    ["i1"],
    ["i1", "i2", "i3"],
    ["ü", "😀", ""],
    [f"item-{k}" for k in range(200)],
    ("t1", "t2"),
]


@pytest.mark.parametrize("value", INTS)
def test_int(feast: Any, value: int) -> None:
    assert layout.encode_value(value) == feast.Value(int64_val=value).SerializeToString()


@pytest.mark.parametrize("value", FLOATS)
def test_float(feast: Any, value: float) -> None:
    assert layout.encode_value(value) == feast.Value(double_val=value).SerializeToString()


def test_nan(feast: Any) -> None:
    expected = feast.Value(double_val=float("nan")).SerializeToString()
    assert layout.encode_value(float("nan")) == expected


@pytest.mark.parametrize("value", STRINGS)
def test_string(feast: Any, value: str) -> None:
    assert layout.encode_value(value) == feast.Value(string_val=value).SerializeToString()


@pytest.mark.parametrize("value", STRING_LISTS)
def test_string_list(feast: Any, value: list[str]) -> None:
    expected = feast.Value(string_list_val=feast.StringList(val=list(value)))
    assert layout.encode_value(value) == expected.SerializeToString()


@pytest.mark.parametrize("value", [True, False])
def test_bool(feast: Any, value: bool) -> None:
    assert layout.encode_value(value) == feast.Value(bool_val=value).SerializeToString()


def test_decodes_with_feast(feast: Any) -> None:
    """Feast's parser reads the bytes back to the same value and type."""
    for value, kind in [
        (300, "int64_val"),
        (-5, "int64_val"),
        (0.25, "double_val"),
        ("ü", "string_val"),
        (False, "bool_val"),
    ]:
        parsed = feast.Value.FromString(layout.encode_value(value))
        assert parsed.WhichOneof("val") == kind
        assert getattr(parsed, kind) == value
    parsed = feast.Value.FromString(layout.encode_value([]))
    assert parsed.WhichOneof("val") == "string_list_val"
    assert list(parsed.string_list_val.val) == []


@pytest.mark.parametrize("value", [None, {"a": 1}, object()])
def test_unsupported_type(value: Any) -> None:
    with pytest.raises(TypeError):
        layout.encode_value(value)


@pytest.mark.parametrize(
    "ts_ms",
    [
        0,
        1,
        999,
        1000,
        1001,
        60_000,
        1_700_000_000_000,
        1_700_000_000_123,
        1_790_000_000_999,
        2**41,
        -1,
        -1000,
        -1500,
    ],
)
def test_timestamp(feast: Any, ts_ms: int) -> None:
    ts = feast.Timestamp()
    ts.FromMilliseconds(ts_ms)
    assert layout.encode_timestamp(ts_ms) == ts.SerializeToString()
    back = feast.Timestamp.FromString(layout.encode_timestamp(ts_ms))
    assert back.ToMilliseconds() == ts_ms


@pytest.mark.parametrize(
    ("join_key", "value"),
    [
        ("user_id", "u1"),
        ("user_id", "u123456789"),
        ("user_id", "ünï-😀"),
        ("item_id", "i9"),
        ("item_id", ""),
        ("item_id", "z" * 300),
    ],
)
def test_entity_key(feast: Any, join_key: str, value: str) -> None:
    key = feast.EntityKey(join_keys=[join_key], entity_values=[feast.Value(string_val=value)])
    assert layout.entity_key(join_key, value) == feast.serialize_entity_key(key, 3)


@pytest.mark.parametrize(
    ("view", "feature"),
    [
        ("user_realtime", "recent_items"),
        ("user_realtime", "n_click_1h"),
        ("item_realtime", "ctr_smoothed"),
        ("item_realtime", "popularity_24h"),
        ("vue", "fëature-😀"),
        ("", ""),
    ],
)
def test_redis_field(feast: Any, view: str, feature: str) -> None:
    assert layout.redis_field(view, feature) == feast.mmh3(f"{view}:{feature}")
    assert len(layout.redis_field(view, feature)) == 4


def test_redis_fields_differ_per_feature() -> None:
    names = ["recent_items", "n_click_1h", "n_click_24h", "last_seen_ms"]
    assert len({layout.redis_field("user_realtime", n) for n in names}) == len(names)
    assert layout.redis_field("a", "b:c") == layout.redis_field("a:b", "c")  # joined by ':'


def test_value_text() -> None:
    assert layout.value_text("abc") == "abc"
    assert layout.value_text(3) == "3"
    assert layout.value_text(0.5) == "0.5"
    assert layout.value_text(True) == "True"
    assert layout.value_text(["a"]) is None


def test_bytes_and_other_types_have_no_encoding() -> None:
    from features.online_layout import encode_value

    for value in (b"ab", bytearray(b"x"), {"a": 1}, None):
        with pytest.raises(TypeError):
            encode_value(value)
