"""Signed envelopes: every message between two terminals of a line.

An envelope names its line, its sender, its recipient (or ``None`` for every terminal of the
line), a per-sender sequence number, the sender's clock in milliseconds, a message type and
an opaque body. The sender signs it with its charter identity key (Ed25519); the exchange
checks it and forwards the exact bytes it received, and every recipient checks it again,
because the exchange is not trusted.

Wire format: the canonical encoding (HCE, :mod:`hotline.encoding`) of the dict::

    {"v": 1, "line": str, "from": str, "to": str | None, "seq": int, "ts": int,
     "type": str, "body": bytes, "sig": bytes}

``sig`` is the Ed25519 signature by the sender's identity key over
``ENVELOPE_LABEL + encode(<the same dict without "sig">)``.

Sequence numbers (see ``docs/exchange.md``): each sender numbers its envelopes with a
:class:`SequenceCounter`, which starts at ``now_ms << SEQ_SHIFT`` (or one past a persisted
floor, whichever is higher) and counts up by one. A restarted terminal therefore continues
above every number it used before without having to store anything, unless it sent more than
2**20 envelopes per millisecond of its previous run, or its clock went back; a terminal that
persists :attr:`SequenceCounter.last` and passes it as ``floor`` is safe against both. Every
receiver keeps a :class:`SequenceTracker` and refuses a number that is not strictly higher
than the last one it accepted from that sender (:class:`~hotline.errors.ReplayError`).

This module does no I/O and imports no asyncio.
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast

from hotline import ids
from hotline.encoding import (
    INT_MAX,
    Value,
    encode,
)
from hotline.errors import (
    CounterExhausted,
    EncodingError,
    MisroutedEnvelope,
    ReplayError,
    StaleEnvelope,
    TooLarge,
    UnknownMember,
    UnknownRecipient,
)
from hotline.keys import SIGNATURE_SIZE, PublicKey, SigningKey

#: domain-separation label in front of every envelope's signed bytes
ENVELOPE_LABEL = b"hotline envelope v1\x00"
ENVELOPE_VERSION = 1
#: default largest envelope, in bytes of its wire form (see docs/limits.md)
DEFAULT_MAX_ENVELOPE_SIZE = 64 * 1024
#: sequence numbers start at ``now_ms << SEQ_SHIFT``: room for 2**20 envelopes per millisecond
SEQ_SHIFT = 20
MAX_TYPE_LENGTH = 64

_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


class Member(Protocol):
    """What an envelope needs of a charter's terminal entry."""

    @property
    def identity_key(self) -> PublicKey: ...


class Membership(Protocol):
    """What an envelope needs of a charter: its line, version, and terminal look-up
    (:class:`hotline.charter.Charter` has exactly these)."""

    @property
    def line_id(self) -> str: ...

    @property
    def version(self) -> int: ...

    def terminal(self, terminal_id: str) -> Member:
        """The terminal's entry; raises :class:`~hotline.errors.UnknownMember`."""
        ...


class SignedMembership(Protocol):
    """A signed charter (:class:`hotline.charter.SignedCharter`) wrapping a :class:`Membership`."""

    @property
    def charter(self) -> Membership: ...


def membership_of(charter: Membership | SignedMembership) -> Membership:
    """The charter body, whether given a signed charter or the body itself."""
    inner = getattr(charter, "charter", None)  # cheaper than a runtime protocol check
    if inner is not None:
        return cast(Membership, inner)
    return cast(Membership, charter)


def check_type(value: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_TYPE_LENGTH
        or _TYPE_RE.fullmatch(value) is None
    ):
        raise EncodingError(
            f"envelope type must match [a-z0-9][a-z0-9._-]* and be at most {MAX_TYPE_LENGTH} long"
        )
    return value


@dataclass(frozen=True)
class Envelope:
    """A signed message from one terminal to one (or every) terminal of its line."""

    line_id: ids.LineId
    sender: ids.TerminalId
    recipient: ids.TerminalId | None
    seq: int
    timestamp_ms: int
    msg_type: str
    body: bytes
    signature: bytes
    #: the exact wire bytes this envelope was parsed from (or encoded to)
    raw: bytes = field(default=b"", repr=False, compare=False)
    #: the canonical encoding of the fields without the signature (derived from ``raw``)
    signed: bytes = field(default=b"", repr=False, compare=False)

    # --- construction ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        key: SigningKey,
        *,
        line_id: str,
        sender: str,
        recipient: str | None,
        seq: int,
        timestamp_ms: int,
        msg_type: str,
        body: bytes,
    ) -> Envelope:
        """Build and sign an envelope with the sender's identity key."""
        fields = _signed_fields(
            line_id=line_id,
            sender=sender,
            recipient=recipient,
            seq=seq,
            timestamp_ms=timestamp_ms,
            msg_type=msg_type,
            body=body,
        )
        unsigned = encode(fields)
        signature = key.sign(ENVELOPE_LABEL + unsigned)
        fields["sig"] = signature
        return cls(
            ids.line_id(line_id, "envelope line"),
            ids.terminal_id(sender, "envelope sender"),
            None if recipient is None else ids.terminal_id(recipient, "envelope recipient"),
            seq,
            timestamp_ms,
            msg_type,
            body,
            signature,
            raw=encode(fields),
            signed=unsigned,
        )

    def _fields(self) -> dict[str, Value]:
        return _signed_fields(
            line_id=self.line_id,
            sender=self.sender,
            recipient=self.recipient,
            seq=self.seq,
            timestamp_ms=self.timestamp_ms,
            msg_type=self.msg_type,
            body=self.body,
        )

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return ENVELOPE_LABEL + (self.signed or encode(self._fields()))

    def to_bytes(self) -> bytes:
        if self.raw:
            return self.raw
        fields = self._fields()
        fields["sig"] = self.signature
        return encode(fields)

    @classmethod
    def from_bytes(cls, data: bytes, max_size: int = DEFAULT_MAX_ENVELOPE_SIZE) -> Envelope:
        """Parse (but do not verify) an envelope. Raises :class:`TooLarge` or
        :class:`EncodingError`.

        The parser reads the one canonical layout an envelope has (nine keys in sorted
        order, each with its one type) and accepts exactly what :func:`hotline.encoding.decode`
        followed by the field checks accepts; ``tests/test_envelope.py`` holds it to that."""
        if len(data) > max_size:
            raise TooLarge(f"envelope of {len(data)} bytes exceeds the limit of {max_size}")
        data = bytes(data)
        values, sig_start, sig_end = _parse(data)
        line_id, sender, recipient, msg_type = values[2], values[1], values[5], values[7]
        body, signature, seq, ts, version = values[0], values[4], values[3], values[6], values[8]
        assert isinstance(line_id, str) and isinstance(sender, str) and isinstance(msg_type, str)
        assert isinstance(body, bytes) and isinstance(signature, bytes)
        assert isinstance(seq, int) and isinstance(ts, int) and isinstance(version, int)
        assert recipient is None or isinstance(recipient, str)
        if version != ENVELOPE_VERSION:
            raise EncodingError("envelope: unsupported version")
        if len(signature) != SIGNATURE_SIZE:
            raise EncodingError("envelope: a signature is 64 bytes")
        if seq < 0:
            raise EncodingError("envelope: negative sequence number")
        return cls(
            line_id=ids.line_id(line_id, "envelope line"),
            sender=ids.terminal_id(sender, "envelope sender"),
            recipient=None
            if recipient is None
            else ids.terminal_id(recipient, "envelope recipient"),
            seq=seq,
            timestamp_ms=ts,
            msg_type=check_type(msg_type),
            body=body,
            signature=signature,
            raw=data,
            signed=_UNSIGNED_HEAD + data[len(_HEAD) : sig_start] + data[sig_end:],
        )

    # --- checks ------------------------------------------------------------------------

    def verify(self, charter: Membership | SignedMembership) -> None:
        """Raise unless the envelope belongs to ``charter``'s line, its sender (and its
        recipient, if any) are terminals of that charter, and its signature is the sender's.

        Raises :class:`MisroutedEnvelope` (reason ``wrong_line``), :class:`UnknownMember`
        (the sender), :class:`UnknownRecipient` or :class:`~hotline.errors.SignatureError`.
        """
        body = membership_of(charter)
        if self.line_id != body.line_id:
            raise MisroutedEnvelope("envelope is for another line", reason="wrong_line")
        try:
            member = body.terminal(self.sender)
        except UnknownMember as exc:
            raise UnknownMember("envelope sender is not a terminal of the charter") from exc
        if self.recipient is not None:
            try:
                body.terminal(self.recipient)
            except UnknownMember as exc:
                raise UnknownRecipient(
                    "envelope recipient is not a terminal of the charter"
                ) from exc
        member.identity_key.verify(self.signature, self.signed_bytes(), what="envelope signature")

    def check_fresh(self, now_ms: int, *, max_age_ms: int, max_future_ms: int) -> None:
        """Raise :class:`StaleEnvelope` if the sender's timestamp is older than ``max_age_ms``
        or more than ``max_future_ms`` ahead of ``now_ms``."""
        if self.timestamp_ms < now_ms - max_age_ms:
            raise StaleEnvelope(f"envelope is {now_ms - self.timestamp_ms} ms old")
        if self.timestamp_ms > now_ms + max_future_ms:
            raise StaleEnvelope(f"envelope is {self.timestamp_ms - now_ms} ms in the future")

    def describe(self) -> str:
        """A short description for logs: no body, no signature."""
        to = self.recipient if self.recipient is not None else "*"
        return f"{self.msg_type} {self.sender}->{to} seq={self.seq} line={self.line_id}"


_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
#: the wire layout: each key, in sorted order, with the tags its value may have
_LAYOUT: tuple[tuple[bytes, bytes], ...] = tuple(
    (b"s" + _U32.pack(len(key)) + key.encode(), tags)
    for key, tags in (
        ("body", b"b"),
        ("from", b"s"),
        ("line", b"s"),
        ("seq", b"i"),
        ("sig", b"b"),
        ("to", b"sN"),
        ("ts", b"i"),
        ("type", b"s"),
        ("v", b"i"),
    )
)
_HEAD = b"d" + _U32.pack(len(_LAYOUT))
#: the head of the same dict without ``sig``: what the signature covers
_UNSIGNED_HEAD = b"d" + _U32.pack(len(_LAYOUT) - 1)
_SIG_INDEX = 4


def _parse(data: bytes) -> tuple[list[bytes | str | int | None], int, int]:
    """Read an envelope's canonical encoding; the values in layout order, and where the
    ``sig`` entry starts and ends."""
    if not data.startswith(_HEAD):
        raise EncodingError("envelope: not a dict of nine fields")
    pos = len(_HEAD)
    end = len(data)
    values: list[bytes | str | int | None] = []
    sig_start = sig_end = 0
    for index, (key, tags) in enumerate(_LAYOUT):
        if index == _SIG_INDEX:
            sig_start = pos
        if not data.startswith(key, pos):
            raise EncodingError(f"envelope: expected field {key[5:].decode()!r} at offset {pos}")
        pos += len(key)
        if pos >= end:
            raise EncodingError("envelope: truncated")
        tag = data[pos : pos + 1]
        pos += 1
        if tag not in tags or len(tag) != 1:
            raise EncodingError(f"envelope: field {key[5:].decode()!r} has the wrong type")
        if tag == b"N":
            values.append(None)
        elif tag == b"i":
            if pos + 8 > end:
                raise EncodingError("envelope: truncated")
            values.append(_I64.unpack_from(data, pos)[0])
            pos += 8
        else:
            if pos + 4 > end:
                raise EncodingError("envelope: truncated")
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
            if pos + n > end:
                raise EncodingError("envelope: truncated")
            raw = data[pos : pos + n]
            pos += n
            if tag == b"b":
                values.append(raw)
            else:
                try:
                    values.append(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise EncodingError("envelope: invalid UTF-8") from exc
        if index == _SIG_INDEX:
            sig_end = pos
    if pos != end:
        raise EncodingError(f"envelope: {end - pos} trailing bytes")
    return values, sig_start, sig_end


def _signed_fields(
    *,
    line_id: str,
    sender: str,
    recipient: str | None,
    seq: int,
    timestamp_ms: int,
    msg_type: str,
    body: bytes,
) -> dict[str, Value]:
    ids.line_id(line_id, "envelope line")
    ids.terminal_id(sender, "envelope sender")
    if recipient is not None:
        ids.terminal_id(recipient, "envelope recipient")
    check_type(msg_type)
    if not 0 <= seq <= INT_MAX:
        raise EncodingError("envelope sequence number out of range")
    if not isinstance(body, bytes):
        raise EncodingError("envelope body must be bytes")
    return {
        "v": ENVELOPE_VERSION,
        "line": line_id,
        "from": sender,
        "to": recipient,
        "seq": seq,
        "ts": timestamp_ms,
        "type": msg_type,
        "body": body,
    }


class SequenceCounter:
    """Numbers one sender's envelopes: strictly increasing, across restarts too.

    Starts at ``max(now_ms << SEQ_SHIFT, floor + 1)``; ``floor`` is the last number a previous
    run used, if the caller persisted it (:attr:`last`)."""

    __slots__ = ("_next",)

    def __init__(self, now_ms: int, floor: int = 0) -> None:
        if now_ms < 0 or floor < 0:
            raise ValueError("now_ms and floor must not be negative")
        self._next = max(now_ms << SEQ_SHIFT, floor + 1)

    def next(self) -> int:
        if self._next > INT_MAX:
            raise CounterExhausted("envelope sequence numbers are exhausted")
        value = self._next
        self._next += 1
        return value

    @property
    def last(self) -> int:
        """The last number handed out (or the one before the first)."""
        return self._next - 1


class SequenceTracker:
    """Per-sender sequence numbers: refuses duplicates, and anything at or below the
    highest number accepted — except, with ``window`` > 0, a number not seen yet among the
    ``window`` most recent ones (an exchange, or a network, that reorders a few envelopes
    must not break a call). Memory per sender is bounded by ``window``. After a restart
    (constructed from :meth:`snapshot`) nothing at or below the persisted highest number is
    accepted again."""

    __slots__ = ("_floor", "_highest", "_recent", "_window")

    def __init__(self, highest: Mapping[str, int] | None = None, *, window: int = 0) -> None:
        self._highest: dict[str, int] = dict(highest or {})
        self._floor: dict[str, int] = dict(self._highest)
        self._recent: dict[str, list[int]] = {}
        self._window = window

    def check(self, sender: str, seq: int) -> None:
        """Raise :class:`ReplayError` unless ``seq`` may be accepted from ``sender`` (reason
        ``replay``; the message says duplicate or behind)."""
        last = self._highest.get(sender)
        if last is None or seq > last:
            return
        if seq == last:
            raise ReplayError(f"duplicate sequence number from {sender}")
        recent = self._recent.get(sender, [])
        if seq in recent:
            raise ReplayError(f"duplicate sequence number from {sender}")
        floor = self._floor.get(sender)
        if self._window and (floor is None or seq > floor):
            return  # out of order, within the window, never seen: accepted
        raise ReplayError(f"sequence number from {sender} is behind {last}")

    def record(self, sender: str, seq: int) -> None:
        self.check(sender, seq)
        if seq > self._highest.get(sender, seq - 1):
            self._highest[sender] = seq
        if self._window:
            recent = self._recent.setdefault(sender, [])
            bisect.insort(recent, seq)
            if len(recent) > self._window:
                evicted = recent.pop(0)  # from now on, nothing at or below it
                self._floor[sender] = max(self._floor.get(sender, evicted), evicted)

    def accept(self, envelope: Envelope) -> None:
        """Check and record ``envelope``'s sequence number."""
        self.record(envelope.sender, envelope.seq)

    def highest(self, sender: str) -> int | None:
        return self._highest.get(sender)

    def snapshot(self) -> dict[str, int]:
        """The state to persist; pass it back to the constructor after a restart."""
        return dict(self._highest)

    def forget(self, sender: str) -> None:
        self._highest.pop(sender, None)
        self._floor.pop(sender, None)
        self._recent.pop(sender, None)
