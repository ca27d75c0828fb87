"""Hotline canonical encoding (HCE): the one byte encoding everything is signed over.

A value is one of: ``None``, ``bool``, ``int`` (signed 64-bit), ``bytes``, ``str`` (UTF-8),
``list`` of values, or ``dict`` with ``str`` keys. Each value is a one-byte tag followed by
its body; lengths and counts are unsigned 32-bit big-endian::

    N                      None
    T / F                  True / False
    i <8 bytes>            int, two's complement big-endian
    b <u32 len> <bytes>    bytes
    s <u32 len> <utf-8>    str
    l <u32 n> <value>*n    list
    d <u32 n> (<key> <value>)*n   dict; each key encoded as a str (tag s), keys sorted by
                                  their UTF-8 bytes, strictly increasing (no duplicates)

There is exactly one encoding for every value, and the decoder accepts only that one:
unsorted or duplicate keys, invalid UTF-8, unknown tags, trailing bytes, lengths past the
end, nesting deeper than :data:`MAX_DEPTH` and inputs over the caller's size limit are all
refused with :class:`~hotline.errors.EncodingError`. ``decode(encode(v)) == v`` for every
value (tuples encode as lists and decode as lists).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Union

from hotline.errors import EncodingError

Value = Union[None, bool, int, bytes, str, list["Value"], dict[str, "Value"]]  # noqa: UP007 (recursive alias needs string forward references)

MAX_DEPTH = 32
#: default size limit for :func:`decode`; callers with larger documents pass their own
DEFAULT_MAX_SIZE = 1 << 20
INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


def encode(value: object) -> bytes:
    """Encode ``value`` canonically. Raises :class:`EncodingError` for unsupported values."""
    out = bytearray()
    try:
        _encode(value, out, 0)
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        raise EncodingError("string is not encodable as UTF-8") from exc
    return bytes(out)


def _encode(value: object, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EncodingError("value nested too deeply")
    if value is None:
        out += b"N"
    elif value is True:
        out += b"T"
    elif value is False:
        out += b"F"
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise EncodingError(f"integer out of 64-bit range: {value}")
        out += b"i" + _I64.pack(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out += b"b" + _U32.pack(len(data)) + data
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out += b"s" + _U32.pack(len(data)) + data
    elif isinstance(value, Mapping):
        items: list[tuple[bytes, object]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"dict key is not a str: {type(key).__name__}")
            items.append((key.encode("utf-8"), item))
        items.sort(key=lambda kv: kv[0])
        out += b"d" + _U32.pack(len(items))
        for kbytes, item in items:
            out += b"s" + _U32.pack(len(kbytes)) + kbytes
            _encode(item, out, depth + 1)
    elif isinstance(value, Sequence):
        out += b"l" + _U32.pack(len(value))
        for item in value:
            _encode(item, out, depth + 1)
    else:
        raise EncodingError(f"cannot encode a {type(value).__name__}")


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Value:
    """Decode exactly one canonically encoded value occupying all of ``data``."""
    if len(data) > max_size:
        raise EncodingError(f"input of {len(data)} bytes exceeds the limit of {max_size}")
    view = memoryview(data)
    value, pos = _decode(view, 0, 0)
    if pos != len(view):
        raise EncodingError(f"{len(view) - pos} trailing bytes after the value")
    return value


def _take(view: memoryview, pos: int, n: int) -> tuple[bytes, int]:
    end = pos + n
    if end > len(view):
        raise EncodingError(f"truncated: need {n} bytes at offset {pos}")
    return bytes(view[pos:end]), end


def _length(view: memoryview, pos: int) -> tuple[int, int]:
    raw, pos = _take(view, pos, 4)
    (n,) = _U32.unpack(raw)
    return int(n), pos


def _decode(view: memoryview, pos: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise EncodingError("value nested too deeply")
    tag, pos = _take(view, pos, 1)
    if tag == b"N":
        return None, pos
    if tag == b"T":
        return True, pos
    if tag == b"F":
        return False, pos
    if tag == b"i":
        raw, pos = _take(view, pos, 8)
        return int(_I64.unpack(raw)[0]), pos
    if tag == b"b":
        n, pos = _length(view, pos)
        return _take(view, pos, n)
    if tag == b"s":
        n, pos = _length(view, pos)
        raw, pos = _take(view, pos, n)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError as exc:
            raise EncodingError(f"invalid UTF-8 in string at offset {pos - n}") from exc
    if tag == b"l":
        n, pos = _length(view, pos)
        if n > len(view) - pos:  # every item takes at least one byte
            raise EncodingError(f"list count {n} exceeds the remaining input")
        items: list[Value] = []
        for _ in range(n):
            item, pos = _decode(view, pos, depth + 1)
            items.append(item)
        return items, pos
    if tag == b"d":
        n, pos = _length(view, pos)
        if n > (len(view) - pos) // 2:
            raise EncodingError(f"dict count {n} exceeds the remaining input")
        result: dict[str, Value] = {}
        previous: bytes | None = None
        for _ in range(n):
            ktag, pos = _take(view, pos, 1)
            if ktag != b"s":
                raise EncodingError(f"dict key at offset {pos - 1} is not a string")
            klen, pos = _length(view, pos)
            kraw, pos = _take(view, pos, klen)
            if previous is not None and kraw <= previous:
                raise EncodingError(f"dict keys not strictly sorted at offset {pos - klen}")
            previous = kraw
            try:
                key = kraw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EncodingError(f"invalid UTF-8 in dict key at offset {pos - klen}") from exc
            result[key], pos = _decode(view, pos, depth + 1)
        return result, pos
    raise EncodingError(f"unknown tag {tag!r} at offset {pos - 1}")


# --- typed field access for decoders of protocol structures -------------------------------


def expect_dict(value: Value, what: str) -> dict[str, Value]:
    if not isinstance(value, dict):
        raise EncodingError(f"{what}: expected a dict")
    return value


def field_str(obj: Mapping[str, Value], key: str, what: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise EncodingError(f"{what}: field {key!r} missing or not a string")
    return v


def field_int(obj: Mapping[str, Value], key: str, what: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise EncodingError(f"{what}: field {key!r} missing or not an integer")
    return v


def field_bytes(obj: Mapping[str, Value], key: str, what: str) -> bytes:
    v = obj.get(key)
    if not isinstance(v, bytes):
        raise EncodingError(f"{what}: field {key!r} missing or not bytes")
    return v


def field_bool(obj: Mapping[str, Value], key: str, what: str) -> bool:
    v = obj.get(key)
    if not isinstance(v, bool):
        raise EncodingError(f"{what}: field {key!r} missing or not a boolean")
    return v


def field_list(obj: Mapping[str, Value], key: str, what: str) -> list[Value]:
    v = obj.get(key)
    if not isinstance(v, list):
        raise EncodingError(f"{what}: field {key!r} missing or not a list")
    return v


def field_dict(obj: Mapping[str, Value], key: str, what: str) -> dict[str, Value]:
    v = obj.get(key)
    if not isinstance(v, dict):
        raise EncodingError(f"{what}: field {key!r} missing or not a dict")
    return v
