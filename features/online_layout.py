"""Feast's online-store byte layout, encoded by hand for the stream's hot path.

Feast's SDK writes about 9k rows/s; the stream needs several times that. These encoders
produce exactly the bytes Feast itself writes (entity key serialization v3, `Value`
protobufs, `Timestamp` protobufs, mmh3 field names for Redis), so `get_online_features`
reads them back unchanged. `tests/integration/test_online_writer.py` holds them to Feast's
own writer through Feast's own reader.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import mmh3

_STRING = 2  # feast ValueType.STRING
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_prefixed(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


def entity_key(join_key: str, value: str) -> bytes:
    """serialize_entity_key(v3) of a single string join key."""
    k, v = join_key.encode(), value.encode()
    return b"".join(
        (
            _U32.pack(1),
            _U32.pack(_STRING),
            _U32.pack(len(k)),
            k,
            _U32.pack(_STRING),
            _U32.pack(len(v)),
            v,
        )
    )


def entity_keys(join_key: str, values: Iterable[str], suffix: bytes = b"") -> list[bytes]:
    """`entity_key(join_key, v) + suffix` for many values (the reader's hot path)."""
    k = join_key.encode()
    prefix = b"".join((_U32.pack(1), _U32.pack(_STRING), _U32.pack(len(k)), k, _U32.pack(_STRING)))
    pack = _U32.pack
    out = []
    for value in values:
        v = value.encode()
        out.append(b"".join((prefix, pack(len(v)), v, suffix)))
    return out


@functools.lru_cache(maxsize=1 << 16)
def _encode_int(value: int) -> bytes:
    return b"\x20" + _varint(value)  # counts repeat endlessly: cached


@functools.lru_cache(maxsize=1 << 16)
def _list_entry(value: str) -> bytes:
    return _len_prefixed(0x0A, value.encode())  # item ids of recent-item lists repeat too


def encode_value(value: Any) -> bytes:
    """A feast `Value` protobuf for an int, float, str or list of str."""
    if type(value) is int:
        return _encode_int(value)
    if isinstance(value, bool):
        return b"\x38" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x20" + _varint(value)
    if isinstance(value, float):
        return b"\x29" + _F64.pack(value)
    if isinstance(value, str):
        return _len_prefixed(0x12, value.encode())
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        inner = b"".join(map(_list_entry, value))
        return _len_prefixed(0x62, inner)
    raise TypeError(f"no Feast encoding for {type(value).__name__}")


def encode_timestamp(ts_ms: int) -> bytes:
    """A google.protobuf.Timestamp for epoch milliseconds."""
    seconds, ms = divmod(ts_ms, 1000)
    out = b"\x08" + _varint(seconds) if seconds else b""
    if ms:
        out += b"\x10" + _varint(ms * 1_000_000)
    return out


def redis_field(view: str, feature: str) -> bytes:
    """Feast's Redis hash field for a feature: mmh3 of `view:feature`, 4 bytes little-endian."""
    return struct.pack("<Q", mmh3.hash(f"{view}:{feature}", signed=False))[:4]


def value_text(value: Any) -> str | None:
    """The SQLite online store's `value_text` column, as Feast fills it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return None


# --- decoders: the serving hot path reads the same bytes back without Feast ------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at `pos`: (value, position after it). ValueError if truncated."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _read_len(buf: bytes, pos: int) -> tuple[int, int]:
    """A length-delimited payload's (start, end) after the tag at `pos - 1`."""
    size, start = _read_varint(buf, pos)
    end = start + size
    if end > len(buf):
        raise ValueError("length-delimited field runs past the end")
    return start, end


def _string_list(buf: bytes, start: int, end: int) -> list[str]:
    out: list[str] = []
    pos = start
    while pos < end:
        if buf[pos] != 0x0A:  # StringList.val = field 1, length-delimited
            raise ValueError(f"unexpected tag {buf[pos]:#x} in a StringList")
        s, e = _read_len(buf, pos + 1)
        if e > end:
            raise ValueError("string runs past its StringList")
        out.append(buf[s:e].decode())
        pos = e
    return out


def decode_value(buf: bytes) -> Any:
    """The Python value of a feast `Value` protobuf, as Feast's SDK returns it.

    The inverse of `encode_value`: int, float, str, bool, list[str]; an unset `Value`
    (no bytes) is None, as Feast reads it. Another field of the `Value` oneof (Feast's
    int32, bytes, float lists, ...) raises ValueError: nothing in streamrec writes one.
    """
    n = len(buf)
    if n == 2 and buf[0] == 0x20 and buf[1] < 0x80:  # a small int64: most counters
        return buf[1]
    value: Any = None
    pos = 0
    while pos < n:  # proto3 parsing: fields in any order, the last of the oneof wins
        tag = buf[pos]
        if tag == 0x20:  # int64_val = 4, varint
            raw, pos = _read_varint(buf, pos + 1)
            value = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif tag == 0x29:  # double_val = 5, fixed64
            if pos + 9 > n:
                raise ValueError("truncated double")
            value = _F64.unpack_from(buf, pos + 1)[0]
            pos += 9
        elif tag == 0x12:  # string_val = 2, length-delimited
            start, pos = _read_len(buf, pos + 1)
            value = buf[start:pos].decode()
        elif tag == 0x62:  # string_list_val = 12, length-delimited StringList
            start, pos = _read_len(buf, pos + 1)
            value = _string_list(buf, start, pos)
        elif tag == 0x38:  # bool_val = 7, varint
            raw, pos = _read_varint(buf, pos + 1)
            value = raw != 0
        else:
            raise ValueError(f"no decoder for Value field tag {tag:#x}")
    return value


def decode_timestamp(buf: bytes) -> int:
    """Epoch milliseconds of a google.protobuf.Timestamp (the inverse of `encode_timestamp`).

    Sub-millisecond nanos are dropped toward minus infinity, as `Timestamp.ToMilliseconds`.
    """
    seconds = nanos = 0
    pos, n = 0, len(buf)
    while pos < n:
        tag = buf[pos]
        raw, pos = _read_varint(buf, pos + 1)
        if tag == 0x08:
            seconds = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif tag == 0x10:
            nanos = raw - (1 << 64) if raw >= 1 << 63 else raw
        else:
            raise ValueError(f"no decoder for Timestamp field tag {tag:#x}")
    return seconds * 1000 + nanos // 1_000_000
