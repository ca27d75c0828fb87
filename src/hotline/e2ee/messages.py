"""Wire formats of the ``e2ee.*`` messages: build (and sign), parse (strictly).

Every body is one canonical HCE value (:mod:`hotline.encoding`)::

    {"signed": {...}, "sig": <64-byte Ed25519 signature over encode(signed)>}

Every ``signed`` dict starts with the same fields, which bind it to one line, call, charter
version, epoch and signer::

    t      str   the message's label, "hotline.e2ee.v2.<kind>" (domain separation, and the
                 protocol version: a label of another version raises ProtocolVersionMismatch)
    line   str   line id           call  str  call id        cv  int  charter version
    epoch  int   1 .. 2^56-1       from  str  the signing terminal's id

and then its own fields (docs/protocol.md has the full table). Parsers check the exact set
of keys, every type and size, sortedness of lists, and raise only
:class:`~hotline.errors.MalformedMessage` (or its subclass
:class:`~hotline.errors.ProtocolVersionMismatch`); signatures are checked by :meth:`Message.verify`
(raising :class:`~hotline.errors.BadKeySignature`). Context (line, call, epoch, members)
is checked by the session, which knows what to expect.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final, TypedDict

from hotline import ids
from hotline.e2ee.sframe import MAX_EPOCH, MAX_SENDERS, kid_epoch
from hotline.encoding import Value, decode, encode
from hotline.errors import (
    BadKeySignature,
    EncodingError,
    MalformedMessage,
    ProtocolVersionMismatch,
    SignatureError,
)
from hotline.keys import PublicKey, SigningKey

MSG_START: Final = "e2ee.start"
MSG_EPHEMERAL: Final = "e2ee.ephemeral"
MSG_ROSTER: Final = "e2ee.roster"
MSG_SECRET: Final = "e2ee.secret"  # noqa: S105 (a message type)
MSG_CONFIRM: Final = "e2ee.confirm"
MSG_ACK: Final = "e2ee.ack"
#: a member asks the leader for a new epoch now (its media engine may not use its send key
#: again: a browser page that took over mid-call, docs/protocol.md §13)
MSG_REKEY: Final = "e2ee.rekey"
#: the steps of one epoch's key agreement
MSG_TYPES: Final = (MSG_START, MSG_EPHEMERAL, MSG_ROSTER, MSG_SECRET, MSG_CONFIRM, MSG_ACK)
#: the kinds that only earlier protocol versions had (refused as a version mismatch)
OLD_MSG_TYPES: Final = {"e2ee.sender_key": 1}
#: a sender's signed hashes of the frames it sent under one KID (not a key agreement step:
#: the call layer handles it, docs/protocol.md §11)
MSG_FRAME_DIGEST: Final = "e2ee.frame_digest"

#: the version of the key agreement protocol, written into every label
PROTOCOL_VERSION: Final = 2
LABEL_PREFIX: Final = f"hotline.e2ee.v{PROTOCOL_VERSION}."
LABELS: Final = {t: LABEL_PREFIX + t.removeprefix("e2ee.") for t in MSG_TYPES}
LABELS[MSG_FRAME_DIGEST] = LABEL_PREFIX + "frame-digest"
LABELS[MSG_REKEY] = LABEL_PREFIX + "rekey"
ROSTER_HASH_LABEL: Final = LABEL_PREFIX.encode() + b"roster-hash"
EK_HASH_LABEL: Final = LABEL_PREFIX.encode() + b"ek-hash"
COMMIT_LABEL: Final = LABEL_PREFIX + "commit"
_VERSION_LABEL: Final = re.compile(r"hotline\.e2ee\.v([0-9]{1,6})\.")

#: a roster has at most this many members (the KID's sender index has 8 bits)
MAX_MEMBERS: Final = MAX_SENDERS
MAX_ID_LENGTH: Final = 128
MAX_REASON_LENGTH: Final = 64
MAX_NAME_LENGTH: Final = 64
#: largest message body accepted (a 256-member roster is ~46 KB)
MAX_MESSAGE_SIZE: Final = 1 << 20
HASH_SIZE: Final = 32
NONCE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
IDENTITY_KEY_SIZE: Final = 32
MAX_PUBLIC_KEY_SIZE: Final = 4096
MAX_SEALED_SIZE: Final = 4096
#: a frame digest names each frame by the first bytes of its SHA-256 (``frame_digest``)
FRAME_HASH_SIZE: Final = 16
#: a frame digest covers at most this many counters (a sender splits longer runs)
MAX_DIGEST_FRAMES: Final = 1024

_COMMON: Final = frozenset({"t", "line", "call", "cv", "epoch", "from"})
_FIELDS: Final = {
    MSG_START: _COMMON | {"members", "kem", "suite", "reason"},
    MSG_EPHEMERAL: _COMMON | {"kem", "ek", "commit"},
    MSG_ROSTER: _COMMON | {"kem", "suite", "members", "secret_commit"},
    MSG_SECRET: _COMMON | {"to", "roster", "sealed"},
    MSG_CONFIRM: _COMMON | {"roster", "reveal"},
    MSG_ACK: _COMMON | {"roster", "transcript"},
    MSG_REKEY: _COMMON | {"reason"},
    MSG_FRAME_DIGEST: _COMMON | {"kid", "first_ctr", "last_ctr", "hashes"},
}
_ENTRY_FIELDS: Final = frozenset({"id", "ik", "ek_hash", "commit"})


@dataclass(frozen=True)
class Context:
    """What every message is bound to: the line, the call and the charter version."""

    line_id: str
    call_id: str
    charter_version: int


# --- parsed messages ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Message:
    msg_type: str
    context: Context
    epoch: int
    signer: str
    #: the exact bytes the signature covers: ``encode(signed)``
    signed: bytes
    signature: bytes
    #: the whole message body as received (duplicate detection)
    body: bytes

    def verify(self, key: PublicKey) -> None:
        """Raise :class:`BadKeySignature` unless ``key`` signed this message."""
        _verify(key, self.signature, self.signed, self.msg_type)

    @cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(self.body).digest()


@dataclass(frozen=True, kw_only=True)
class EpochStart(Message):
    """The leader opens epoch ``epoch`` for ``members`` (sorted ids, the leader first)."""

    members: tuple[str, ...]
    kem: str
    suite: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Ephemeral(Message):
    """A member's ephemeral public key for one epoch, and its commitment to a nonce."""

    kem: str
    ek: bytes
    commit: bytes


@dataclass(frozen=True)
class RosterEntry:
    member: str
    identity_key: bytes
    #: ``ephemeral_key_hash`` of the member's ephemeral public key (only the leader, who
    #: seals to it, needs the key itself; the member checks its own entry)
    ek_hash: bytes
    commit: bytes


@dataclass(frozen=True, kw_only=True)
class RosterProposal(Message):
    """The epoch's roster as the leader proposes it, with the leader's commitment to the
    epoch secret; members approve its hash (``e2ee.confirm``)."""

    kem: str
    suite: str
    entries: tuple[RosterEntry, ...]
    #: ``sender_keys.secret_commitment`` of the epoch secret sealed to every member
    secret_commit: bytes

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(e.member for e in self.entries)

    @cached_property
    def roster_hash(self) -> bytes:
        return hashlib.sha256(ROSTER_HASH_LABEL + self.signed).digest()


@dataclass(frozen=True, kw_only=True)
class Secret(Message):
    """The leader's epoch secret, sealed to one member's ephemeral key (leader -> that
    member only)."""

    recipient: str
    roster_hash: bytes
    sealed: bytes


@dataclass(frozen=True, kw_only=True)
class Confirm(Message):
    """A member approves the roster ``roster_hash`` (its signature of this message is its
    signature of the roster) and reveals the nonce it committed to."""

    roster_hash: bytes
    reveal: bytes


@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    """A member has every key of the epoch and the transcript ``transcript_hash``."""

    roster_hash: bytes
    transcript_hash: bytes


@dataclass(frozen=True, kw_only=True)
class RekeyRequest(Message):
    """A member of epoch ``epoch`` asks its leader for the next epoch now (``reason``)."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class FrameDigest(Message):
    """The sender's hashes of the frames it protected under ``kid`` with counters
    ``first_ctr`` .. ``last_ctr`` (one per counter; all zero: no frame had that counter)."""

    kid: int
    first_ctr: int
    last_ctr: int
    hashes: tuple[bytes, ...]


def _verify(key: PublicKey, signature: bytes, message: bytes, what: str) -> None:
    try:
        key.verify(signature, message, what=what)
    except SignatureError as exc:
        raise BadKeySignature(f"{what}: signature does not verify") from exc


# --- signed payloads shared between messages --------------------------------------------------


def _common(label: str, ctx: Context, epoch: int, signer: str) -> dict[str, Value]:
    return {
        "t": label,
        "line": ctx.line_id,
        "call": ctx.call_id,
        "cv": ctx.charter_version,
        "epoch": epoch,
        "from": signer,
    }


def _ephemeral_dict(
    ctx: Context, *, epoch: int, member: str, kem: str, ek: bytes, commit: bytes
) -> dict[str, Value]:
    d = _common(LABELS[MSG_EPHEMERAL], ctx, epoch, member)
    d.update({"kem": kem, "ek": ek, "commit": commit})
    return d


def ephemeral_key_hash(ek: bytes) -> bytes:
    """What the roster lists for a member's ephemeral public key."""
    return hashlib.sha256(EK_HASH_LABEL + ek).digest()


def commitment(epoch: int, member: str, reveal: bytes) -> bytes:
    """The commitment a member publishes (ephemeral message) to the nonce it reveals later
    (confirm message); the security code depends on every revealed nonce."""
    return hashlib.sha256(
        encode({"t": COMMIT_LABEL, "epoch": epoch, "from": member, "reveal": reveal})
    ).digest()


def _signed_body(key: SigningKey, signed: dict[str, Value]) -> bytes:
    data = encode(signed)
    return encode({"signed": signed, "sig": key.sign(data)})


# --- builders (each returns a body; parse it back to get the Message) -------------------------


def build_start(
    key: SigningKey,
    ctx: Context,
    *,
    epoch: int,
    signer: str,
    members: Sequence[str],
    kem: str,
    suite: str,
    reason: str,
) -> bytes:
    d = _common(LABELS[MSG_START], ctx, epoch, signer)
    d.update({"members": list(members), "kem": kem, "suite": suite, "reason": reason})
    return _signed_body(key, d)


def build_ephemeral(
    key: SigningKey, ctx: Context, *, epoch: int, signer: str, kem: str, ek: bytes, commit: bytes
) -> bytes:
    d = _ephemeral_dict(ctx, epoch=epoch, member=signer, kem=kem, ek=ek, commit=commit)
    return _signed_body(key, d)


def build_roster(
    key: SigningKey,
    ctx: Context,
    *,
    epoch: int,
    signer: str,
    kem: str,
    suite: str,
    entries: Sequence[RosterEntry],
    secret_commit: bytes,
) -> bytes:
    d = _common(LABELS[MSG_ROSTER], ctx, epoch, signer)
    members: list[Value] = [
        {"id": e.member, "ik": e.identity_key, "ek_hash": e.ek_hash, "commit": e.commit}
        for e in entries
    ]
    d.update({"kem": kem, "suite": suite, "members": members, "secret_commit": secret_commit})
    return _signed_body(key, d)


def build_secret(
    key: SigningKey,
    ctx: Context,
    *,
    epoch: int,
    signer: str,
    recipient: str,
    roster_hash: bytes,
    sealed: bytes,
) -> bytes:
    d = _common(LABELS[MSG_SECRET], ctx, epoch, signer)
    d.update({"to": recipient, "roster": roster_hash, "sealed": sealed})
    return _signed_body(key, d)


def build_confirm(
    key: SigningKey, ctx: Context, *, epoch: int, signer: str, roster_hash: bytes, reveal: bytes
) -> bytes:
    d = _common(LABELS[MSG_CONFIRM], ctx, epoch, signer)
    d.update({"roster": roster_hash, "reveal": reveal})
    return _signed_body(key, d)


def build_ack(
    key: SigningKey,
    ctx: Context,
    *,
    epoch: int,
    signer: str,
    roster_hash: bytes,
    transcript_hash: bytes,
) -> bytes:
    d = _common(LABELS[MSG_ACK], ctx, epoch, signer)
    d.update({"roster": roster_hash, "transcript": transcript_hash})
    return _signed_body(key, d)


def build_rekey(key: SigningKey, ctx: Context, *, epoch: int, signer: str, reason: str) -> bytes:
    """Ask the leader of ``epoch`` (the active one) for a new epoch now."""
    d = _common(LABELS[MSG_REKEY], ctx, epoch, signer)
    d["reason"] = reason[:MAX_REASON_LENGTH]
    return _signed_body(key, d)


def build_frame_digest(
    key: SigningKey,
    ctx: Context,
    *,
    epoch: int,
    signer: str,
    kid: int,
    first_ctr: int,
    hashes: Sequence[bytes],
) -> bytes:
    """Sign the hashes of the frames sent under ``kid`` from counter ``first_ctr`` on."""
    d = _common(LABELS[MSG_FRAME_DIGEST], ctx, epoch, signer)
    d.update(
        {
            "kid": kid,
            "first_ctr": first_ctr,
            "last_ctr": first_ctr + len(hashes) - 1,
            "hashes": b"".join(hashes),
        }
    )
    return _signed_body(key, d)


# --- parsing --------------------------------------------------------------------------------


def _bad(msg_type: str, what: str) -> MalformedMessage:
    return MalformedMessage(f"{msg_type}: {what}")


def _str(d: Mapping[str, Value], key: str, t: str, max_len: int) -> str:
    v = d.get(key)
    if not isinstance(v, str) or len(v) > max_len:
        raise _bad(t, f"field {key!r} must be a string of at most {max_len} characters")
    return v


def _id_value(v: Value, t: str, what: str) -> str:
    try:
        return ids.terminal_id(v, what)
    except EncodingError as exc:
        raise _bad(t, str(exc)) from None


def _id(d: Mapping[str, Value], key: str, t: str) -> str:
    return _id_value(d.get(key), t, f"field {key!r}")


def _int(d: Mapping[str, Value], key: str, t: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(t, f"field {key!r} must be an integer in [{lo}, {hi}]")
    return v


def _bytes(d: Mapping[str, Value], key: str, t: str, *, size: int = -1, max_size: int = 0) -> bytes:
    v = d.get(key)
    if not isinstance(v, bytes):
        raise _bad(t, f"field {key!r} must be bytes")
    if size >= 0 and len(v) != size:
        raise _bad(t, f"field {key!r} must be {size} bytes")
    if size < 0 and not 0 < len(v) <= max_size:
        raise _bad(t, f"field {key!r} must be 1 to {max_size} bytes")
    return v


def _dict(v: Value, t: str, what: str, keys: frozenset[str]) -> dict[str, Value]:
    if not isinstance(v, dict):
        raise _bad(t, f"{what} must be a dict")
    if set(v) != keys:
        raise _bad(t, f"{what} must have exactly the fields {sorted(keys)}")
    return v


def _sorted_ids(items: Sequence[str], t: str, what: str) -> tuple[str, ...]:
    if not 1 <= len(items) <= MAX_MEMBERS:
        raise _bad(t, f"{what}: 1 to {MAX_MEMBERS} members")
    for a, b in itertools.pairwise(items):
        if not a < b:
            raise _bad(t, f"{what}: members must be sorted and unique")
    return tuple(items)


#: where the signed part starts in a body: the outer dict's keys are sorted, so "signed"
#: comes last, after "sig", whose value has a fixed size
_SIGNED_KEY: Final = b"s\x00\x00\x00\x06signed"
_SIG_ENTRY: Final = 1 + 4 + 3 + 1 + 4 + SIGNATURE_SIZE


def _signed_bytes(body: bytes, t: str) -> bytes:
    """The bytes of the signed part, cut from a body that already decoded canonically
    (so they equal ``encode(signed)``, without encoding again)."""
    start = 5 + _SIG_ENTRY
    if body[start : start + len(_SIGNED_KEY)] != _SIGNED_KEY:  # pragma: no cover - canonical
        raise _bad(t, "signed part not where canonical encoding puts it")
    return body[start + len(_SIGNED_KEY) :]


class _Common(TypedDict):
    msg_type: str
    context: Context
    epoch: int
    signer: str
    signed: bytes
    signature: bytes
    body: bytes


def _check_version(msg_type: str, value: Value) -> None:
    """Raise :class:`ProtocolVersionMismatch` if ``value`` is a message of another
    version of this protocol (by its label, or by a kind only older versions had)."""
    version = OLD_MSG_TYPES.get(msg_type)
    signed = value.get("signed") if isinstance(value, dict) else None
    label = signed.get("t") if isinstance(signed, dict) else None
    if isinstance(label, str) and (match := _VERSION_LABEL.match(label)):
        version = int(match.group(1))
    if version is not None and version != PROTOCOL_VERSION:
        raise ProtocolVersionMismatch(
            f"{msg_type[:40]} is a message of key agreement protocol v{version}; this "
            f"terminal speaks v{PROTOCOL_VERSION} (the two terminals run different releases)"
        )


def parse(msg_type: str, body: bytes) -> Message:
    """Parse an ``e2ee.*`` body of type ``msg_type``; raises only
    :class:`MalformedMessage` (:class:`ProtocolVersionMismatch` for a message of another
    protocol version). Does not check signatures or context."""
    t = msg_type
    try:
        value = decode(body, max_size=MAX_MESSAGE_SIZE)
    except EncodingError as exc:
        _check_version(msg_type, None)
        if msg_type not in _FIELDS:
            raise MalformedMessage(f"unknown message type {msg_type[:40]!r}") from None
        raise _bad(t, f"not canonical HCE ({exc})") from None
    _check_version(msg_type, value)
    if msg_type not in _FIELDS:
        raise MalformedMessage(f"unknown message type {msg_type[:40]!r}")
    outer = _dict(value, t, "body", frozenset({"signed", "sig"}))
    signed = _dict(outer["signed"], t, "signed part", _FIELDS[t])
    if signed["t"] != LABELS[t]:
        raise _bad(t, "label does not match the message type")
    common: _Common = {
        "msg_type": t,
        "context": Context(
            _str(signed, "line", t, MAX_ID_LENGTH),
            _str(signed, "call", t, MAX_ID_LENGTH),
            _int(signed, "cv", t, 0, (1 << 63) - 1),
        ),
        "epoch": _int(signed, "epoch", t, 1, MAX_EPOCH),
        "signer": _id(signed, "from", t),
        "signed": _signed_bytes(body, t),
        "signature": _bytes(outer, "sig", t, size=SIGNATURE_SIZE),
        "body": body,
    }
    if t == MSG_START:
        raw_members = signed["members"]
        if not isinstance(raw_members, list):
            raise _bad(t, "members must be a list")
        ids = [_id_value(m, t, "member") for m in raw_members]
        return EpochStart(
            **common,
            members=_sorted_ids(ids, t, "members"),
            kem=_str(signed, "kem", t, MAX_NAME_LENGTH),
            suite=_str(signed, "suite", t, MAX_NAME_LENGTH),
            reason=_str(signed, "reason", t, MAX_REASON_LENGTH),
        )
    if t == MSG_EPHEMERAL:
        return Ephemeral(
            **common,
            kem=_str(signed, "kem", t, MAX_NAME_LENGTH),
            ek=_bytes(signed, "ek", t, max_size=MAX_PUBLIC_KEY_SIZE),
            commit=_bytes(signed, "commit", t, size=HASH_SIZE),
        )
    if t == MSG_ROSTER:
        raw_entries = signed["members"]
        if not isinstance(raw_entries, list):
            raise _bad(t, "members must be a list")
        entries = []
        for raw in raw_entries:
            e = _dict(raw, t, "roster entry", _ENTRY_FIELDS)
            entries.append(
                RosterEntry(
                    member=_id(e, "id", t),
                    identity_key=_bytes(e, "ik", t, size=IDENTITY_KEY_SIZE),
                    ek_hash=_bytes(e, "ek_hash", t, size=HASH_SIZE),
                    commit=_bytes(e, "commit", t, size=HASH_SIZE),
                )
            )
        _sorted_ids([e.member for e in entries], t, "members")
        return RosterProposal(
            **common,
            kem=_str(signed, "kem", t, MAX_NAME_LENGTH),
            suite=_str(signed, "suite", t, MAX_NAME_LENGTH),
            entries=tuple(entries),
            secret_commit=_bytes(signed, "secret_commit", t, size=HASH_SIZE),
        )
    if t == MSG_FRAME_DIGEST:
        return _frame_digest(common, signed)
    if t == MSG_REKEY:
        return RekeyRequest(**common, reason=_str(signed, "reason", t, MAX_REASON_LENGTH))
    if t == MSG_SECRET:
        return Secret(
            **common,
            recipient=_id(signed, "to", t),
            roster_hash=_bytes(signed, "roster", t, size=HASH_SIZE),
            sealed=_bytes(signed, "sealed", t, max_size=MAX_SEALED_SIZE),
        )
    if t == MSG_CONFIRM:
        return Confirm(
            **common,
            roster_hash=_bytes(signed, "roster", t, size=HASH_SIZE),
            reveal=_bytes(signed, "reveal", t, size=NONCE_SIZE),
        )
    return Ack(
        **common,
        roster_hash=_bytes(signed, "roster", t, size=HASH_SIZE),
        transcript_hash=_bytes(signed, "transcript", t, size=HASH_SIZE),
    )


def _frame_digest(common: _Common, signed: Mapping[str, Value]) -> FrameDigest:
    t = MSG_FRAME_DIGEST
    top = (1 << 63) - 1  # HCE integers are signed 64-bit
    kid = _int(signed, "kid", t, 0, top)
    if kid_epoch(kid) != common["epoch"]:
        raise _bad(t, "the KID is not of the message's epoch")
    first = _int(signed, "first_ctr", t, 0, top)
    last = _int(signed, "last_ctr", t, first, min(first + MAX_DIGEST_FRAMES - 1, top))
    raw = _bytes(signed, "hashes", t, size=FRAME_HASH_SIZE * (last - first + 1))
    hashes = tuple(raw[i : i + FRAME_HASH_SIZE] for i in range(0, len(raw), FRAME_HASH_SIZE))
    return FrameDigest(**common, kid=kid, first_ctr=first, last_ctr=last, hashes=hashes)
