"""Call log records, pure: the entry and head formats, their hashes and signatures, the
event payload rules and the call summary both terminals sign. (The log itself, on SQLite,
is :mod:`hotline.calllog.log`; the format is specified in ``docs/call-log.md``.)
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hotline import ids
from hotline.encoding import (
    Value,
    decode,
    encode,
    expect_dict,
    field_bytes,
    field_int,
    field_list,
    field_str,
)
from hotline.errors import (
    BadLogEntry,
    EncodingError,
    StateError,
    UsageError,
)
from hotline.keys import PublicKey, SigningKey

#: the file a terminal directory keeps its call log in
LOG_FILENAME: Final = "calllog.sqlite"
FORMAT_VERSION: Final = 1

# Domain-separation labels: every hashed or signed structure names what it is.
ENTRY_HASH_CTX: Final = "hotline/calllog/entry/v1"
ENTRY_SIG_CTX: Final = "hotline/calllog/entry-signature/v1"
HEAD_SIG_CTX: Final = "hotline/calllog/head/v1"
SUMMARY_CTX: Final = "hotline/calllog/call-summary/v1"

#: prev_hash of the first entry
GENESIS_HASH: Final = bytes(32)
HASH_SIZE: Final = 32

MAX_PAYLOAD_SIZE: Final = 64 * 1024
MAX_ID_LENGTH: Final = ids.MAX_ID_LENGTH
_EVENT_RE: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")

# --- event types --------------------------------------------------------------------------

EVENT_RING: Final = "ring"
EVENT_ANSWER: Final = "answer"
EVENT_DECLINE: Final = "decline"
EVENT_ROSTER: Final = "roster"
EVENT_EPOCH: Final = "epoch"
EVENT_SECURITY_CODE: Final = "security_code"
EVENT_REKEY: Final = "rekey"
EVENT_TRANSPORT_FAILURE: Final = "transport_failure"
EVENT_TRANSPORT_RECOVERED: Final = "transport_recovered"
EVENT_PEER_UNREACHABLE: Final = "peer_unreachable"
EVENT_E2EE_FAILURE: Final = "e2ee_failure"
EVENT_HANGUP: Final = "hangup"
EVENT_STATS_SUMMARY: Final = "stats_summary"
EVENT_COSIGN: Final = "cosign"
#: a daily or monthly summary of readiness checks that replaces their entries
EVENT_CHECK_ROLLUP: Final = "check_rollup"

#: the documented event types (``docs/call-log.md``). Other names matching
#: ``[a-z][a-z0-9_.-]{0,63}`` are accepted so that new events need no format change;
#: ``cosign`` entries are written only by :meth:`CallLog.sign_summary` and
#: :meth:`CallLog.add_cosignature`.
KNOWN_EVENTS: Final = frozenset(
    {
        EVENT_RING,
        EVENT_ANSWER,
        EVENT_DECLINE,
        EVENT_ROSTER,
        EVENT_EPOCH,
        EVENT_SECURITY_CODE,
        EVENT_REKEY,
        EVENT_TRANSPORT_FAILURE,
        EVENT_TRANSPORT_RECOVERED,
        EVENT_PEER_UNREACHABLE,
        EVENT_E2EE_FAILURE,
        EVENT_HANGUP,
        EVENT_STATS_SUMMARY,
        EVENT_COSIGN,
        EVENT_CHECK_ROLLUP,
    }
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    idx        INTEGER PRIMARY KEY,
    time_us    INTEGER NOT NULL,
    call_id    TEXT NOT NULL,
    event      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    prev_hash  BLOB NOT NULL,
    entry_hash BLOB NOT NULL,
    signature  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_call ON entries (call_id, idx);
-- runs of entries removed by a rollup (``calllog.rollup``): what the chain needs to go on
CREATE TABLE IF NOT EXISTS pruned (
    first      INTEGER PRIMARY KEY,
    last       INTEGER NOT NULL,
    prev_hash  BLOB NOT NULL,
    last_hash  BLOB NOT NULL,
    last_sig   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    count     INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    signature BLOB NOT NULL
);
"""
_ENTRY_COLUMNS = "idx, time_us, call_id, event, payload, prev_hash, entry_hash, signature"


def log_path(terminal_dir: Path) -> Path:
    """Where the terminal stored in ``terminal_dir`` keeps its call log."""
    return terminal_dir / LOG_FILENAME


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open a log for reading only. A log in WAL mode needs its folder writable even to be
    read; an auditor's copy on read-only media is opened as immutable instead."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        pass  # a read-only folder (or file): read it as it is on disk
    except sqlite3.DatabaseError as exc:
        raise BadLogEntry(
            f"{path}: not a call log (SQLite says: {exc})", index=None, reason="corrupt"
        ) from exc
    except sqlite3.Error as exc:
        raise UsageError(f"{path}: cannot open call log: {exc}") from exc
    try:
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise UsageError(f"{path}: cannot open call log: {exc}") from exc


# --- hashing and signing (pure) -------------------------------------------------------------


def entry_hash(
    *,
    terminal_id: str,
    index: int,
    time_us: int,
    call_id: str,
    event: str,
    payload: bytes,
    prev_hash: bytes,
) -> bytes:
    """SHA-256 over the canonical encoding of every field of an entry (not its signature).

    ``payload`` is the payload's canonical encoding, hashed as bytes, so a stored payload
    that no longer decodes still yields a (mismatching) hash instead of a crash.
    """
    body = encode(
        {
            "ctx": ENTRY_HASH_CTX,
            "terminal_id": terminal_id,
            "index": index,
            "time_us": time_us,
            "call_id": call_id,
            "event": event,
            "payload": payload,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(body).digest()


def entry_signing_bytes(hash_: bytes) -> bytes:
    """What the terminal signs for one entry: its hash, under a label of its own."""
    return encode({"ctx": ENTRY_SIG_CTX, "entry_hash": hash_})


def head_signing_bytes(terminal_id: str, count: int, head_hash: bytes) -> bytes:
    """What the terminal signs for the head: how many entries, and the last one's hash."""
    return encode(
        {"ctx": HEAD_SIG_CTX, "terminal_id": terminal_id, "count": count, "head_hash": head_hash}
    )


def sign_summary(key: SigningKey, summary: bytes) -> bytes:
    """A terminal's signature over call summary bytes (they carry their own label)."""
    _check_summary_bytes(summary)
    return key.sign(summary)


def verify_summary_signature(
    public_key: PublicKey, summary: bytes, signature: bytes, *, signer_id: str = "peer"
) -> None:
    """Raise :class:`SignatureError` unless ``signature`` by ``public_key`` covers ``summary``."""
    _check_summary_bytes(summary)
    public_key.verify(signature, summary, what=f"call summary signature by {signer_id}")


def _check_summary_bytes(summary: bytes) -> dict[str, Value]:
    obj = expect_dict(decode(summary), "call summary")
    if obj.get("ctx") != SUMMARY_CTX:
        raise EncodingError("call summary: not a Hotline call summary (wrong ctx)")
    return obj


def _time_us(now: float) -> int:
    return round(now * 1_000_000)


# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    """One verified-at-write (or as read) entry of the log."""

    index: int
    time_us: int
    call_id: str
    event: str
    payload_bytes: bytes
    prev_hash: bytes
    entry_hash: bytes
    signature: bytes

    @property
    def time(self) -> float:
        """Seconds since the epoch, as passed to :meth:`CallLog.append`."""
        return self.time_us / 1_000_000

    def hash_as(self, terminal_id: str, index: int) -> bytes:
        """The hash these fields would have as entry ``index`` of ``terminal_id``'s log."""
        return entry_hash(
            terminal_id=terminal_id,
            index=index,
            time_us=self.time_us,
            call_id=self.call_id,
            event=self.event,
            payload=self.payload_bytes,
            prev_hash=self.prev_hash,
        )

    @property
    def payload(self) -> Value:
        return decode(self.payload_bytes, max_size=MAX_PAYLOAD_SIZE)


@dataclass(frozen=True)
class Cosignature:
    """A signature over a call summary, as stored in a ``cosign`` entry."""

    index: int
    call_id: str
    signer_id: str
    signer_key: PublicKey
    summary: bytes
    signature: bytes


@dataclass(frozen=True)
class CheckedCosignature:
    """A cosignature as :meth:`CallLog.verify` checked it."""

    index: int
    call_id: str
    signer_id: str
    #: True when the signer's key came from the caller (the charter), not from the log itself
    identity_checked: bool


@dataclass(frozen=True)
class VerifyReport:
    terminal_id: str
    entries: int
    head_hash: bytes
    calls: int
    cosignatures: tuple[CheckedCosignature, ...] = field(default=())
    #: entries removed by rollups (their chain links and signatures checked, and each one
    #: claimed by a signed rollup entry that is still in the log)
    pruned: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "terminal_id": self.terminal_id,
            "entries": self.entries,
            "pruned": self.pruned,
            "head_hash": self.head_hash.hex(),
            "calls": self.calls,
            "cosignatures": [
                {
                    "index": c.index,
                    "call_id": c.call_id,
                    "signer_id": c.signer_id,
                    "identity_checked": c.identity_checked,
                }
                for c in self.cosignatures
            ],
        }


# --- payload rules for the events the summary reads ------------------------------------------


def _check_id(value: str, what: str) -> None:
    ids.check_id(value, what, error=UsageError)


def _validate_payload(event: str, payload: Value) -> None:
    """Refuse, at append time, payloads the call summary could not read later."""
    what = f"{event} payload"
    try:
        if event in (EVENT_RING, EVENT_ANSWER):
            obj = expect_dict(payload, what)
            field_str(obj, "line_id", what)
            if field_int(obj, "charter_version", what) < 1:
                raise EncodingError(f"{what}: charter_version must be positive")
        elif event == EVENT_EPOCH:
            obj = expect_dict(payload, what)
            if field_int(obj, "epoch", what) < 0:
                raise EncodingError(f"{what}: epoch must not be negative")
            _roster(obj, what)
            code = obj.get("security_code")
            if code is not None and not isinstance(code, str):
                raise EncodingError(f"{what}: security_code must be a string")
        elif event == EVENT_SECURITY_CODE:
            obj = expect_dict(payload, what)
            field_int(obj, "epoch", what)
            field_str(obj, "security_code", what)
    except EncodingError as exc:
        raise UsageError(str(exc)) from exc


def _roster(obj: Mapping[str, Value], what: str) -> list[str]:
    items = field_list(obj, "roster", what)
    if not items or not all(isinstance(m, str) for m in items):
        raise EncodingError(f"{what}: roster must be a non-empty list of terminal ids")
    members = [m for m in items if isinstance(m, str)]
    if len(set(members)) != len(members):
        raise EncodingError(f"{what}: roster lists a terminal twice")
    return sorted(members)


def _summary_from(entries: Sequence[LogEntry], call_id: str, self_id: str, peer_id: str) -> bytes:
    """The call summary of ``call_id`` between ``self_id`` and ``peer_id`` (see docs)."""
    line_id: str | None = None
    charter_version: int | None = None
    rosters: dict[int, list[str]] = {}
    codes: dict[int, str] = {}

    def set_code(epoch: int, code: str, index: int) -> None:
        if codes.setdefault(epoch, code) != code:
            raise StateError(
                f"call {call_id}: entry {index} records a second, different security code "
                f"for epoch {epoch}"
            )

    for e in entries:
        if e.call_id != call_id:
            continue
        if e.event in (EVENT_RING, EVENT_ANSWER, EVENT_EPOCH, EVENT_SECURITY_CODE):
            obj = expect_dict(e.payload, f"entry {e.index}")
        else:
            continue
        what = f"entry {e.index} ({e.event})"
        if e.event in (EVENT_RING, EVENT_ANSWER):
            lid = field_str(obj, "line_id", what)
            ver = field_int(obj, "charter_version", what)
            if line_id is None:
                line_id, charter_version = lid, ver
            elif (lid, ver) != (line_id, charter_version):
                raise StateError(
                    f"call {call_id}: entry {e.index} names line {lid} v{ver}, earlier entries "
                    f"line {line_id} v{charter_version}"
                )
        elif e.event == EVENT_EPOCH:
            n = field_int(obj, "epoch", what)
            roster = _roster(obj, what)
            if rosters.setdefault(n, roster) != roster:
                raise StateError(
                    f"call {call_id}: entry {e.index} records a second, different roster "
                    f"for epoch {n}"
                )
            code = obj.get("security_code")
            if isinstance(code, str):
                set_code(n, code, e.index)
        else:
            set_code(field_int(obj, "epoch", what), field_str(obj, "security_code", what), e.index)
    if line_id is None or charter_version is None:
        raise StateError(
            f"call {call_id}: no ring or answer entry names the line and charter version"
        )
    shared = sorted(n for n, r in rosters.items() if self_id in r and peer_id in r)
    members = sorted({m for n in shared for m in rosters[n]} | {self_id, peer_id})
    epochs: list[Value] = [
        {"epoch": n, "roster": list(rosters[n]), "security_code": codes.get(n)} for n in shared
    ]
    return encode(
        {
            "ctx": SUMMARY_CTX,
            "call_id": call_id,
            "line_id": line_id,
            "charter_version": charter_version,
            "between": sorted([self_id, peer_id]),
            "members": list(members),
            "epochs": epochs,
        }
    )


def _describe_difference(ours: bytes, theirs: bytes) -> str:
    try:
        a = expect_dict(decode(ours), "ours")
        b = expect_dict(decode(theirs), "theirs")
    except EncodingError:
        return "it is not a call summary"
    fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "fields differ: " + ", ".join(fields) if fields else "encodings differ"


def _cosign_payload(e: LogEntry) -> Cosignature:
    what = f"entry {e.index} (cosign)"
    obj = expect_dict(e.payload, what)
    return Cosignature(
        index=e.index,
        call_id=e.call_id,
        signer_id=field_str(obj, "signer_id", what),
        signer_key=PublicKey(field_bytes(obj, "signer_key", what)),
        summary=field_bytes(obj, "summary", what),
        signature=field_bytes(obj, "signature", what),
    )


# --- rollups: entries replaced by a signed summary -----------------------------------------


@dataclass(frozen=True)
class PrunedRun:
    """Consecutive entries ``first..last`` removed by rollups: what the chain needs to go
    on without them (the link before the run, the last hash and its signature)."""

    first: int
    last: int
    prev_hash: bytes
    last_hash: bytes
    last_sig: bytes


def rollup_claims(e: LogEntry) -> list[tuple[int, int]]:
    """The index ranges (inclusive) a ``check_rollup`` entry says it replaced."""
    try:
        obj = expect_dict(decode(e.payload_bytes), "check_rollup payload")
        out: list[tuple[int, int]] = []
        for item in field_list(obj, "replaces", "check_rollup payload"):
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(v, int) for v in item)
            ):
                raise EncodingError("check_rollup payload: replaces holds [first, last] pairs")
            first, last = int(str(item[0])), int(str(item[1]))
            if not 0 <= first <= last < e.index:
                raise EncodingError("check_rollup payload: a range outside the entries before it")
            out.append((first, last))
    except EncodingError as exc:
        raise BadLogEntry(
            f"entry {e.index}: malformed rollup: {exc}", index=e.index, reason="bad_rollup"
        ) from exc
    return out


def first_unclaimed(
    pruned: Sequence[tuple[int, int]], claims: Sequence[tuple[int, int]]
) -> int | None:
    """The first removed index that no claim covers (None: every one is claimed)."""
    merged: list[list[int]] = []
    for a, b in sorted(claims):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    k = 0
    for a, b in sorted(pruned):
        at = a
        while at <= b:
            while k < len(merged) and merged[k][1] < at:
                k += 1
            if k == len(merged) or merged[k][0] > at:
                return at
            at = merged[k][1] + 1
    return None
