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


# --- decoders: decode(encode(v)) == v, and Feast's parser agrees on what the bytes mean --


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same type, and for floats the same bits (-0.0, nan)."""
    if isinstance(a, float):
        return type(b) is float and layout._F64.pack(a) == layout._F64.pack(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", [*INTS, *FLOATS, float("nan"), *STRINGS, True, False])
def test_decode_round_trips_scalars(value: Any) -> None:
    assert _same(layout.decode_value(layout.encode_value(value)), value)


@pytest.mark.parametrize("value", STRING_LISTS)
def test_decode_round_trips_string_lists(value: list[str]) -> None:
    assert layout.decode_value(layout.encode_value(value)) == list(value)
    assert type(layout.decode_value(layout.encode_value(value))) is list


def test_decoded_lists_are_fresh() -> None:
    raw = layout.encode_value(["a"])
    first = layout.decode_value(raw)
    first.append("b")
    assert layout.decode_value(raw) == ["a"]


def test_unset_value_decodes_to_none(feast: Any) -> None:
    assert layout.decode_value(b"") is None
    assert layout.decode_value(feast.Value().SerializeToString()) is None


@pytest.mark.parametrize(
    "value",
    [
        {"int64_val": 0},
        {"int64_val": -(2**63)},
        {"double_val": 0.1},
        {"string_val": "ünï"},
        {"bool_val": False},
        {"string_list_val": {"val": ["", "😀", "x" * 200]}},
    ],
)
def test_decodes_what_feast_serializes(feast: Any, value: dict[str, Any]) -> None:
    ((field, payload),) = value.items()
    if field == "string_list_val":
        proto = feast.Value(string_list_val=feast.StringList(**payload))
        expected: Any = list(payload["val"])
    else:
        proto = feast.Value(**{field: payload})
        expected = payload
    assert _same(layout.decode_value(proto.SerializeToString()), expected)


def test_last_field_of_the_oneof_wins_as_in_protobuf(feast: Any) -> None:
    """Concatenated messages merge; for a oneof the last field set is the value."""
    raw = layout.encode_value(7) + layout.encode_value("s") + layout.encode_value(2.5)
    parsed = feast.Value.FromString(raw)
    assert parsed.WhichOneof("val") == "double_val"
    assert layout.decode_value(raw) == parsed.double_val == 2.5


@pytest.mark.parametrize(
    "raw",
    [
        b"\x20",  # int64 tag with no varint
        b"\x20\x80",  # varint cut short
        b"\x20" + b"\xff" * 11,  # varint longer than 64 bits
        b"\x29\x00\x00",  # double cut short
        b"\x12\x05ab",  # string shorter than its length
        b"\x12\x01\xff",  # not UTF-8
        b"\x62\x03\x0a\x05a",  # list item runs past the list
        b"\x62\x02\x12\x00",  # a StringList with a field other than val
        b"\x0a\x01x",  # bytes_val: a Value field streamrec never writes
        b"\x18\x01",  # int32_val: likewise
    ],
)
def test_malformed_or_foreign_values_raise(raw: bytes) -> None:
    with pytest.raises(ValueError):
        layout.decode_value(raw)


@pytest.mark.parametrize(
    "ts_ms",
    [0, 1, 999, 1000, 1001, 1_700_000_000_123, 1_790_000_000_999, 2**41, -1, -1000, -1500],
)
def test_timestamp_round_trips(ts_ms: int) -> None:
    assert layout.decode_timestamp(layout.encode_timestamp(ts_ms)) == ts_ms


def test_timestamp_decodes_feast_nanos(feast: Any) -> None:
    ts = feast.Timestamp(seconds=1_700_000_000, nanos=123_456_789)
    assert layout.decode_timestamp(ts.SerializeToString()) == ts.ToMilliseconds()
    with pytest.raises(ValueError):
        layout.decode_timestamp(b"\x18\x01")


def test_entity_keys_equal_entity_key_plus_suffix() -> None:
    values = ["u1", "", "ünï-😀", "z" * 300]
    assert layout.entity_keys("user_id", values, b"proj") == [
        layout.entity_key("user_id", v) + b"proj" for v in values
    ]
    keys = layout.entity_keys("item_id", values)
    assert keys == [layout.entity_key("item_id", v) for v in values]
