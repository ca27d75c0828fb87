"""Identifiers: one type per kind, one rule for all of them, one validator.

A line, a site, a terminal and a call are each named by an id. Mixing them up is a bug the
type checker catches (they are distinct ``NewType`` s of ``str``); an id that breaks the
rule is refused wherever it comes from — a charter, an envelope, a frame from the
exchange, a key-agreement message, the call log, the command line — with the same
message, raised as the error class of whoever is at fault (``error``: a
:class:`~hotline.errors.CharterError` for a charter, an
:class:`~hotline.errors.EncodingError` for bytes from the network, a
:class:`~hotline.errors.UsageError` for the operator's input).

The rule (``docs/charter.md``, "Ids"): 1 to 63 characters of ``a-z 0-9 . _ -``, the first a
letter or a digit. It is the rule charters have always had, so every valid charter keeps
its ids; generated call ids (``call-`` and 16 hex digits) follow it too.
"""

from __future__ import annotations

import re
from typing import Final, NewType

from hotline.errors import EncodingError, HotlineError

TerminalId = NewType("TerminalId", str)
LineId = NewType("LineId", str)
SiteId = NewType("SiteId", str)
CallId = NewType("CallId", str)

#: the rule every id follows
ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_ID_LENGTH: Final = 63
ID_RULE: Final = "1-63 of a-z 0-9 . _ -, starting with a letter or digit"
#: how much of a refused value an error message quotes
_SHOWN: Final = 64


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(value: object, what: str, *, error: type[HotlineError] = EncodingError) -> str:
    """``value`` if it follows the rule, else raise ``error`` saying ``what`` it was."""
    if is_valid_id(value):
        assert isinstance(value, str)
        return value
    shown = value[:_SHOWN] + "…" if isinstance(value, str) and len(value) > _SHOWN else value
    if not isinstance(value, str | None):
        shown = type(value).__name__
    raise error(f"{what} {shown!r} is not a valid id ({ID_RULE})")


def terminal_id(
    value: object, what: str = "terminal id", *, error: type[HotlineError] = EncodingError
) -> TerminalId:
    return TerminalId(check_id(value, what, error=error))


def line_id(
    value: object, what: str = "line id", *, error: type[HotlineError] = EncodingError
) -> LineId:
    return LineId(check_id(value, what, error=error))


def site_id(
    value: object, what: str = "site id", *, error: type[HotlineError] = EncodingError
) -> SiteId:
    return SiteId(check_id(value, what, error=error))


def call_id(
    value: object, what: str = "call id", *, error: type[HotlineError] = EncodingError
) -> CallId:
    return CallId(check_id(value, what, error=error))
