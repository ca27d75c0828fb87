"""The exchange's WebSocket frames: what terminals and the exchange say to each other.

Every frame is one binary WebSocket message holding the canonical encoding (HCE) of a dict
whose ``"t"`` field names the frame. Envelopes travel inside frames as opaque bytes, exactly
as their sender signed them. See ``docs/exchange.md`` for the whole protocol.

Exchange → terminal: ``challenge``, ``welcome``, ``deliver``, ``accepted``, ``reject``,
``presence``, ``charter``. Terminal → exchange: ``hello``, ``env``, ``ack``, ``charter``.

This module does no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

from hotline import ids
from hotline.charter.model import is_loopback_host
from hotline.encoding import (
    Value,
    decode,
    encode,
    expect_dict,
    field_bytes,
    field_dict,
    field_int,
    field_list,
    field_str,
)
from hotline.errors import EncodingError, FrameError, TooLarge
from hotline.ids import LineId, TerminalId

PROTOCOL_VERSION = 1
#: WebSocket path of the exchange protocol
WS_PATH = "/v1/exchange"
#: domain-separation label in front of the bytes a terminal signs to authenticate
AUTH_LABEL = b"hotline exchange auth v1\x00"
CHALLENGE_SIZE = 32
#: bytes a frame adds around the envelope or charter it carries (generous)
FRAME_OVERHEAD = 1024
#: largest frame before authentication (the hello)
MAX_HELLO_SIZE = 4096
#: a charter pushed by a terminal costs this many messages of its rate (at most the burst)
CHARTER_PUSH_COST = 10.0

# WebSocket close codes (RFC 6455 §7.4.1, plus the private range 4000-4999)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
#: another connection authenticated as the same terminal
CLOSE_SUPERSEDED = 4001
#: a newer charter no longer lists this terminal (or changed its key)
CLOSE_REMOVED = 4002
#: refused: another connection of this terminal is online and they keep replacing each
#: other (two copies of one terminal running)
CLOSE_DUPLICATE = 4003


#: every reason the exchange gives in a ``reject`` frame or a close (``docs/exchange.md``).
#: A terminal maps any other text to :data:`UNLISTED_REASON`: what a hostile exchange writes
#: there never becomes a counter name, a log line or an event of its choosing.
PROTOCOL_REASONS = frozenset(
    {
        # envelopes refused with the connection kept
        "replay",
        "unknown_recipient",
        "misrouted",
        "queue_full",
        # charters pushed and refused
        "too_large",
        "charter",
        "charter_format",
        "charter_incomplete",
        "charter_rollback",
        "wrong_line",
        "bad_signature",
        "signature",
        "unknown_member",
        "encoding",
        # closes
        "bad_frame",
        "sender_mismatch",
        "rate_limited",
        "stale",
        "timeout",
        "unknown_line",
        "auth",
        "auth_rate_limited",
        "too_many_connections",
        "superseded",
        "removed_from_charter",
        "duplicate_terminal",
        "going_away",
        "internal_error",
    }
)
UNLISTED_REASON = "unlisted"


def known_reason(text: str) -> str:
    """``text`` if it is one of :data:`PROTOCOL_REASONS`, else :data:`UNLISTED_REASON`."""
    return text if text in PROTOCOL_REASONS else UNLISTED_REASON


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (plain ws:// is allowed only there); the same
    rule the charter applies to its exchange entries."""
    return is_loopback_host(host)


def auth_message(
    challenge: bytes, exchange_id: str, line_id: LineId | str, terminal_id: TerminalId | str
) -> bytes:
    """What a terminal signs with its identity key to be admitted."""
    return AUTH_LABEL + encode(
        {"challenge": challenge, "exchange": exchange_id, "line": line_id, "terminal": terminal_id}
    )


@dataclass(frozen=True)
class AdvertisedLimits:
    """The limits the exchange tells terminals at connection time, so that they pace
    themselves instead of being cut off."""

    max_envelope_size: int
    rate_per_s: float
    burst: int
    window_s: float

    def to_value(self) -> dict[str, Value]:
        return {
            "max_envelope_size": self.max_envelope_size,
            "rate_milli": round(self.rate_per_s * 1000),
            "burst": self.burst,
            "window_ms": round(self.window_s * 1000),
        }

    @classmethod
    def from_value(cls, obj: Mapping[str, Value]) -> AdvertisedLimits:
        w = "limits"
        limits = cls(
            max_envelope_size=field_int(obj, "max_envelope_size", w),
            rate_per_s=field_int(obj, "rate_milli", w) / 1000,
            burst=field_int(obj, "burst", w),
            window_s=field_int(obj, "window_ms", w) / 1000,
        )
        if limits.max_envelope_size <= 0 or limits.rate_per_s <= 0 or limits.burst <= 0:
            raise FrameError("limits: values must be positive")
        return limits


# --- exchange -> terminal -----------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    challenge: bytes
    exchange_id: str
    #: identifies the exchange's store; delivery ids are only meaningful within one store
    store_id: str
    limits: AdvertisedLimits
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Welcome:
    terminal_id: TerminalId
    online: frozenset[TerminalId]
    #: the highest sequence number the exchange accepted from this terminal (None: none)
    last_seq: int | None
    charter_version: int


@dataclass(frozen=True)
class Deliver:
    delivery_id: int
    envelope: bytes


@dataclass(frozen=True)
class Accepted:
    """Every envelope of this terminal up to ``seq`` is stored or refused."""

    seq: int


@dataclass(frozen=True)
class Reject:
    """An envelope (``seq``), or with ``seq`` None the last charter pushed, was refused."""

    seq: int | None
    reason: str
    #: set when only the delivery to this recipient was refused (a broadcast)
    recipient: TerminalId | None = None


@dataclass(frozen=True)
class Presence:
    online: frozenset[TerminalId]


@dataclass(frozen=True)
class CharterFrame:
    """A signed charter in its file form; sent either way."""

    data: bytes


# --- terminal -> exchange -----------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    line_id: LineId
    terminal_id: TerminalId
    signature: bytes
    #: highest delivery id this terminal has processed (0: none)
    resume: int
    charter_version: int


@dataclass(frozen=True)
class Send:
    envelope: bytes


@dataclass(frozen=True)
class Ack:
    """Every delivery up to ``upto`` has been processed."""

    upto: int


ServerFrame = Union[Challenge, Welcome, Deliver, Accepted, Reject, Presence, CharterFrame]  # noqa: UP007
ClientFrame = Union[Hello, Send, Ack, CharterFrame]  # noqa: UP007
Frame = Union[ServerFrame, ClientFrame]  # noqa: UP007


def encode_frame(frame: Frame) -> bytes:
    obj: dict[str, Value]
    if isinstance(frame, Challenge):
        obj = {
            "t": "challenge",
            "v": frame.version,
            "challenge": frame.challenge,
            "exchange": frame.exchange_id,
            "store": frame.store_id,
            "limits": frame.limits.to_value(),
        }
    elif isinstance(frame, Welcome):
        obj = {
            "t": "welcome",
            "terminal": frame.terminal_id,
            "online": list(sorted(frame.online)),
            "last_seq": frame.last_seq,
            "charter_version": frame.charter_version,
        }
    elif isinstance(frame, Deliver):
        obj = {"t": "deliver", "id": frame.delivery_id, "env": frame.envelope}
    elif isinstance(frame, Accepted):
        obj = {"t": "accepted", "seq": frame.seq}
    elif isinstance(frame, Reject):
        obj = {"t": "reject", "seq": frame.seq, "reason": frame.reason, "to": frame.recipient}
    elif isinstance(frame, Presence):
        obj = {"t": "presence", "online": list(sorted(frame.online))}
    elif isinstance(frame, CharterFrame):
        obj = {"t": "charter", "data": frame.data}
    elif isinstance(frame, Hello):
        obj = {
            "t": "hello",
            "line": frame.line_id,
            "terminal": frame.terminal_id,
            "sig": frame.signature,
            "resume": frame.resume,
            "charter_version": frame.charter_version,
        }
    elif isinstance(frame, Send):
        obj = {"t": "env", "env": frame.envelope}
    else:
        obj = {"t": "ack", "upto": frame.upto}
    return encode(obj)


def encode_deliver(delivery_id: int, envelope: bytes) -> bytes:
    """``encode_frame(Deliver(...))``, written directly (the hot path)."""
    return b"".join(
        (
            _DELIVER_HEAD,
            _U32.pack(len(envelope)),
            envelope,
            _DELIVER_TAIL,
            _I64.pack(delivery_id),
            _DELIVER_END,
        )
    )


def _parse(data: bytes, max_size: int) -> tuple[str, dict[str, Value]]:
    if len(data) > max_size:
        raise TooLarge(f"frame of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        obj = expect_dict(decode(data, max_size=max_size), "frame")
        kind = field_str(obj, "t", "frame")
    except FrameError:
        raise
    except EncodingError as exc:
        raise FrameError(f"malformed frame: {exc}") from exc
    return kind, obj


def _ids(values: list[Value], what: str) -> frozenset[TerminalId]:
    out: set[TerminalId] = set()
    for v in values:
        if not isinstance(v, str):
            raise FrameError(f"{what}: ids must be strings")
        out.add(ids.terminal_id(v, what))
    return frozenset(out)


def _optional_int(obj: Mapping[str, Value], key: str, what: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise FrameError(f"{what}: field {key!r} must be an integer or None")
    return v


# The two frames on the hot path, read without the generic decoder: their canonical
# encodings are {"env": <bytes>, "t": "env"} and {"env": <bytes>, "id": <int>, "t": "deliver"}.
_ENV_HEAD = b"d\x00\x00\x00\x02s\x00\x00\x00\x03envb"
_ENV_TAIL = b"s\x00\x00\x00\x01ts\x00\x00\x00\x03env"
_DELIVER_HEAD = b"d\x00\x00\x00\x03s\x00\x00\x00\x03envb"
_DELIVER_TAIL = b"s\x00\x00\x00\x02idi"
_DELIVER_END = b"s\x00\x00\x00\x01ts\x00\x00\x00\x07deliver"
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


def _fast_send(data: bytes) -> Send | None:
    if not data.startswith(_ENV_HEAD) or not data.endswith(_ENV_TAIL):
        return None
    start = len(_ENV_HEAD) + 4
    (n,) = _U32.unpack_from(data, len(_ENV_HEAD))
    if start + n + len(_ENV_TAIL) != len(data):
        return None
    return Send(data[start : start + n])


def _fast_deliver(data: bytes) -> Deliver | None:
    if not data.startswith(_DELIVER_HEAD) or not data.endswith(_DELIVER_END):
        return None
    start = len(_DELIVER_HEAD) + 4
    (n,) = _U32.unpack_from(data, len(_DELIVER_HEAD))
    tail = start + n
    if tail + len(_DELIVER_TAIL) + 8 + len(_DELIVER_END) != len(data):
        return None
    if not data.startswith(_DELIVER_TAIL, tail):
        return None
    (delivery_id,) = _I64.unpack_from(data, tail + len(_DELIVER_TAIL))
    if delivery_id <= 0:
        raise FrameError("deliver: ids are positive")
    return Deliver(delivery_id, data[start:tail])


def decode_server_frame(data: bytes, max_size: int) -> ServerFrame:
    """Parse a frame the exchange sent. Raises :class:`FrameError` or :class:`TooLarge`."""
    if len(data) > max_size:
        raise TooLarge(f"frame of {len(data)} bytes exceeds the limit of {max_size}")
    fast = _fast_deliver(data)
    if fast is not None:
        return fast
    kind, obj = _parse(data, max_size)
    try:
        if kind == "deliver":
            delivery_id = field_int(obj, "id", "deliver")
            if delivery_id <= 0:
                raise FrameError("deliver: ids are positive")
            return Deliver(delivery_id, field_bytes(obj, "env", "deliver"))
        if kind == "accepted":
            return Accepted(field_int(obj, "seq", "accepted"))
        if kind == "reject":
            to = obj.get("to")
            if to is not None and not isinstance(to, str):
                raise FrameError("reject: 'to' must be a string or None")
            # a recipient that is no valid id is no terminal of the line: reported as None,
            # like any other stranger (the reject itself is still counted)
            recipient = TerminalId(to) if isinstance(to, str) and ids.is_valid_id(to) else None
            reason = known_reason(field_str(obj, "reason", "reject"))
            return Reject(_optional_int(obj, "seq", "reject"), reason, recipient)
        if kind == "presence":
            return Presence(_ids(field_list(obj, "online", "presence"), "presence"))
        if kind == "charter":
            return CharterFrame(field_bytes(obj, "data", "charter"))
        if kind == "challenge":
            challenge = field_bytes(obj, "challenge", "challenge")
            if len(challenge) != CHALLENGE_SIZE:
                raise FrameError("challenge: wrong size")
            version = field_int(obj, "v", "challenge")
            if version != PROTOCOL_VERSION:
                raise FrameError(f"challenge: unsupported protocol version {version}")
            return Challenge(
                challenge=challenge,
                exchange_id=field_str(obj, "exchange", "challenge"),
                store_id=field_str(obj, "store", "challenge"),
                limits=AdvertisedLimits.from_value(field_dict(obj, "limits", "challenge")),
                version=version,
            )
        if kind == "welcome":
            return Welcome(
                terminal_id=ids.terminal_id(field_str(obj, "terminal", "welcome"), "welcome"),
                online=_ids(field_list(obj, "online", "welcome"), "welcome"),
                last_seq=_optional_int(obj, "last_seq", "welcome"),
                charter_version=field_int(obj, "charter_version", "welcome"),
            )
    except FrameError:
        raise
    except EncodingError as exc:
        raise FrameError(str(exc)) from exc
    raise FrameError(f"unexpected frame type {kind[:32]!r} from the exchange")


def decode_client_frame(data: bytes, max_size: int) -> ClientFrame:
    """Parse a frame a terminal sent. Raises :class:`FrameError` or :class:`TooLarge`."""
    if len(data) > max_size:
        raise TooLarge(f"frame of {len(data)} bytes exceeds the limit of {max_size}")
    fast = _fast_send(data)
    if fast is not None:
        return fast
    kind, obj = _parse(data, max_size)
    try:
        if kind == "env":
            return Send(field_bytes(obj, "env", "env"))
        if kind == "ack":
            return Ack(field_int(obj, "upto", "ack"))
        if kind == "charter":
            return CharterFrame(field_bytes(obj, "data", "charter"))
        if kind == "hello":
            resume = field_int(obj, "resume", "hello")
            if resume < 0:
                raise FrameError("hello: negative resume point")
            return Hello(
                line_id=ids.line_id(field_str(obj, "line", "hello"), "hello line"),
                terminal_id=ids.terminal_id(field_str(obj, "terminal", "hello"), "hello terminal"),
                signature=field_bytes(obj, "sig", "hello"),
                resume=resume,
                charter_version=field_int(obj, "charter_version", "hello"),
            )
    except FrameError:
        raise
    except EncodingError as exc:
        raise FrameError(str(exc)) from exc
    raise FrameError(f"unexpected frame type {kind[:32]!r} from a terminal")
