"""One rule for every id (``hotline.ids``): the charter's rule, applied the same way to
ids from a charter, an envelope, an exchange frame, a key-agreement message, the call log
and the operator, with one message and the error class of whoever is at fault."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotline import ids
from hotline.charter import ID_PATTERN, is_valid_id
from hotline.cli import main
from hotline.cli.common import EXIT_ERROR
from hotline.envelope import Envelope
from hotline.errors import CharterError, EncodingError, FrameError, UsageError
from hotline.exchange.frames import Presence, Reject, decode_server_frame, encode_frame
from hotline.keys import SigningKey

GOOD = ["a", "t0", "sochi-principal", "wh.aide_2", "call-0123456789abcdef", "9" * 63]
BAD = ["", "A", "-lead", ".x", "a b", "é", "x" * 64, "sochi/../x", "t0\n"]


@pytest.mark.parametrize("value", GOOD)
def test_valid_ids(value: str) -> None:
    assert ids.terminal_id(value) == ids.line_id(value) == ids.call_id(value) == value
    assert ids.site_id(value) == value and is_valid_id(value)


@pytest.mark.parametrize("value", BAD)
def test_invalid_ids_give_one_message(value: str) -> None:
    for parse, kind in [
        (ids.terminal_id, "terminal id"),
        (ids.line_id, "line id"),
        (ids.site_id, "site id"),
        (ids.call_id, "call id"),
    ]:
        with pytest.raises(EncodingError) as info:
            parse(value)
        assert str(info.value).startswith(f"{kind} ")
        assert str(info.value).endswith(f"is not a valid id ({ids.ID_RULE})")
    with pytest.raises(UsageError, match="not a valid id"):
        ids.terminal_id(value, error=UsageError)


def test_a_refused_value_is_quoted_short() -> None:
    with pytest.raises(EncodingError) as info:
        ids.call_id("X" * 100_000)
    assert len(str(info.value)) < 200
    with pytest.raises(EncodingError, match="'int'"):
        ids.call_id(5)


@given(st.text(max_size=80))
def test_the_rule_is_the_charters(value: str) -> None:
    assert is_valid_id(value) == (ID_PATTERN.fullmatch(value) is not None)
    assert ids.ID_PATTERN is ID_PATTERN


def test_every_source_of_ids_applies_the_rule() -> None:
    key = SigningKey.generate()
    with pytest.raises(EncodingError, match="envelope sender 'T0' is not a valid id"):
        Envelope.create(
            key, line_id="line-1", sender="T0", recipient=None, seq=1, timestamp_ms=1,
            msg_type="test", body=b"",
        )  # fmt: skip
    with pytest.raises(FrameError, match="not a valid id"):
        decode_server_frame(encode_frame(Presence(frozenset({"t0", "Ghost"}))), 4096)
    # a reject naming no valid id is still a reject, for no terminal of the line
    assert decode_server_frame(encode_frame(Reject(1, "replay", "x" * 100)), 4096) == Reject(
        1, "replay", None
    )


def test_a_charter_with_a_bad_id_is_refused_as_a_charter_error() -> None:
    from hotline.charter.model import _check_id

    with pytest.raises(CharterError, match="terminal id 'T1' is not a valid id"):
        _check_id("T1", "terminal id")


@pytest.mark.parametrize("verb", ["dial", "invite"])
def test_the_command_line_refuses_a_bad_id_in_one_line(
    verb: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["hotline", "call", verb, "Washington!", "-t", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: TARGET 'Washington!' is not a valid id ({ids.ID_RULE})"]
