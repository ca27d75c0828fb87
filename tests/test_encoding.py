"""The canonical encoding: round trip, uniqueness, and strict refusal of everything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotline.encoding import INT_MAX, INT_MIN, decode, encode
from hotline.errors import EncodingError

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=40,
)


@given(values)
def test_round_trip(value: object) -> None:
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


@given(st.dictionaries(st.text(max_size=8), st.integers(0, 9), max_size=8))
def test_dict_order_does_not_matter(d: dict[str, int]) -> None:
    reordered = dict(reversed(list(d.items())))
    assert encode(d) == encode(reordered)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_only_encoding_errors(data: bytes) -> None:
    try:
        value = decode(data)
    except EncodingError:
        return
    assert encode(value) == data  # anything accepted is the one canonical form


def test_known_bytes() -> None:
    assert encode({"b": 1, "a": [True, None, b"\x01", "x"]}) == (
        b"d\x00\x00\x00\x02"
        b"s\x00\x00\x00\x01a"
        b"l\x00\x00\x00\x04"
        b"T"
        b"N"
        b"b\x00\x00\x00\x01\x01"
        b"s\x00\x00\x00\x01x"
        b"s\x00\x00\x00\x01b"
        b"i\x00\x00\x00\x00\x00\x00\x00\x01"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"Nx", "trailing"),
        (b"q", "unknown tag"),
        (b"s\x00\x00\x00\x02\xff\xfe", "UTF-8"),
        (b"b\x00\x00\x00\x09abc", "truncated"),
        (b"d\x00\x00\x00\x02s\x00\x00\x00\x01bNs\x00\x00\x00\x01aN", "sorted"),
        (b"d\x00\x00\x00\x02s\x00\x00\x00\x01aNs\x00\x00\x00\x01aN", "sorted"),
        (b"d\x00\x00\x00\x01i\x00\x00\x00\x00\x00\x00\x00\x01N", "not a string"),
        (b"l\xff\xff\xff\xff", "exceeds"),
        (b"l\x00\x00\x00\x01" * 40 + b"N", "deeply"),
    ],
)
def test_refusals(data: bytes, message: str) -> None:
    with pytest.raises(EncodingError, match=message):
        decode(data)


def test_size_limit_and_unencodable() -> None:
    with pytest.raises(EncodingError, match="exceeds the limit"):
        decode(encode(b"x" * 100), max_size=50)
    with pytest.raises(EncodingError):
        encode(1 << 64)
    with pytest.raises(EncodingError):
        encode({1: 2})
    with pytest.raises(EncodingError):
        encode(1.5)
    with pytest.raises(EncodingError, match="UTF-8"):
        encode({"k": "\ud800"})
