"""The call log: append-only, hash-chained, signed, one SQLite file per terminal.

Every call event a terminal sees is appended as one entry. An entry's hash is SHA-256 over
the canonical encoding (HCE, :mod:`hotline.encoding`) of all its fields, including the hash
of the entry before it, so the entries form a chain; the terminal signs each entry hash with
its identity key. A separate *head* row holds the number of entries and the hash of the last
one, re-signed at every append, so that cutting entries off the end is detected too.

At hang-up the two terminals of a call sign the same *call summary* bytes
(:meth:`CallLog.call_summary`): only facts both sides agree on (call id, line id, charter
version, the pair, the members and every shared epoch with its security code). Each side
stores its own signature and the peer's (``cosign`` entries), so an auditor holding only the
charter's public keys can check, from either log alone, that both terminals signed the same
account of the call. The format and its limits are specified in ``docs/call-log.md``.

This module is pure apart from ``sqlite3``: time is passed in (``now``, seconds), nothing
reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

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
    HotlineError,
    SignatureError,
    StateError,
    SummaryMismatch,
    UsageError,
)
from hotline.keys import PublicKey, SigningKey

_logger = logging.getLogger(__name__)

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
MAX_ID_LENGTH: Final = 128
_EVENT_RE: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_ID_RE: Final = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces

# --- event types --------------------------------------------------------------------------

EVENT_RING: Final = "ring"
EVENT_ANSWER: Final = "answer"
EVENT_DECLINE: Final = "decline"
EVENT_ROSTER: Final = "roster"
EVENT_EPOCH: Final = "epoch"
EVENT_SECURITY_CODE: Final = "security_code"
EVENT_REKEY: Final = "rekey"
EVENT_TRANSPORT_FAILURE: Final = "transport_failure"
EVENT_E2EE_FAILURE: Final = "e2ee_failure"
EVENT_HANGUP: Final = "hangup"
EVENT_STATS_SUMMARY: Final = "stats_summary"
EVENT_COSIGN: Final = "cosign"

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
        EVENT_E2EE_FAILURE,
        EVENT_HANGUP,
        EVENT_STATS_SUMMARY,
        EVENT_COSIGN,
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

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "terminal_id": self.terminal_id,
            "entries": self.entries,
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
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise UsageError(f"{what} must be 1-{MAX_ID_LENGTH} printable ASCII characters")


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


# --- the log --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    count: int
    head_hash: bytes
    signature: bytes


class CallLog:
    """One terminal's call log in one SQLite file.

    Open it with :meth:`open`. With a signing key it can be appended to (the terminal
    daemon); without one it is opened read-only (``mode=ro``) for ``show`` and ``verify``.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, terminal_id: str, key: SigningKey | None
    ) -> None:
        self._conn = conn
        self.path = path
        self.terminal_id = terminal_id
        self._key = key
        #: refused co-signatures and failed verifications, by reason (a metrics source)
        self.rejected: Counter[str] = Counter()

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, terminal_id: str | None = None, key: SigningKey | None = None
    ) -> CallLog:
        """Open (with ``key``: create if missing) the log at ``path``.

        ``terminal_id`` is required to create a log; when given for an existing log it must
        match the one the log was created for. With ``key`` the tail is checked (head
        signature, last entry) before anything is appended: a log whose end was changed is
        refused with :class:`BadLogEntry` rather than extended.
        """
        if key is None:
            if not path.is_file():
                raise UsageError(f"{path}: no such call log file")
            conn = _connect_read_only(path)
        else:
            if terminal_id is None:
                raise UsageError("a terminal id is needed to open a call log for writing")
            _check_id(terminal_id, "terminal id")
            try:
                conn = sqlite3.connect(path, isolation_level=None)
                conn.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                raise BadLogEntry(
                    f"{path}: not a call log (SQLite says: {exc})", index=None, reason="corrupt"
                ) from exc
            except sqlite3.Error as exc:
                raise UsageError(f"{path}: cannot open call log: {exc}") from exc
        try:
            stored_id = cls._meta_terminal_id(conn, path)
            if stored_id is None:
                if key is None or terminal_id is None:
                    raise BadLogEntry(
                        f"{path}: not a call log (no terminal id recorded)",
                        index=None,
                        reason="corrupt",
                    )
                cls._initialise(conn, terminal_id, key)
                stored_id = terminal_id
            if terminal_id is not None and terminal_id != stored_id:
                raise UsageError(
                    f"{path}: this is the call log of terminal {stored_id!r}, not {terminal_id!r}"
                )
            self = cls(conn, path, stored_id, key)
            if key is not None:
                self._check_tail(key.public)
        except BaseException:
            conn.close()
            raise
        return self

    @staticmethod
    def _meta_terminal_id(conn: sqlite3.Connection, path: Path) -> str | None:
        try:
            rows = conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as exc:
            raise BadLogEntry(
                f"{path}: not a call log (SQLite says: {exc})", index=None, reason="corrupt"
            ) from exc
        meta = {str(k): v for k, v in rows}
        if not meta:
            return None
        tid = meta.get("terminal_id")
        if not isinstance(tid, str) or meta.get("format") != str(FORMAT_VERSION):
            raise BadLogEntry(
                f"{path}: unsupported or damaged call log metadata", index=None, reason="corrupt"
            )
        return tid

    @staticmethod
    def _initialise(conn: sqlite3.Connection, terminal_id: str, key: SigningKey) -> None:
        sig = key.sign(head_signing_bytes(terminal_id, 0, GENESIS_HASH))
        with _transaction(conn):
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('format', ?), ('terminal_id', ?)",
                (str(FORMAT_VERSION), terminal_id),
            )
            conn.execute(
                "INSERT INTO head (id, count, head_hash, signature) VALUES (1, 0, ?, ?)",
                (GENESIS_HASH, sig),
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CallLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self._key is not None

    # --- reading ------------------------------------------------------------------------

    def _read_head(self) -> _Head:
        try:
            rows = self._conn.execute("SELECT count, head_hash, signature FROM head").fetchall()
        except sqlite3.DatabaseError as exc:
            raise BadLogEntry(
                f"{self.path}: head unreadable: {exc}", index=None, reason="corrupt"
            ) from exc
        if len(rows) != 1:
            raise BadLogEntry(
                "the signed head row is missing; the log cannot be checked for truncation",
                index=None,
                reason="head_missing",
            )
        count, hh, sig = rows[0]
        if not isinstance(count, int) or not isinstance(hh, bytes) or not isinstance(sig, bytes):
            raise BadLogEntry("the head row is malformed", index=None, reason="head")
        return _Head(count, hh, sig)

    def _rows(self, where: str = "", args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries {where} ORDER BY idx",  # noqa: S608 (fixed SQL)
                args,
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise BadLogEntry(
                f"{self.path}: entries unreadable: {exc}", index=None, reason="corrupt"
            ) from exc

    @staticmethod
    def _entry(row: tuple[object, ...]) -> LogEntry:
        idx, t, call_id, event, payload, prev, h, sig = row
        if not (
            isinstance(idx, int)
            and isinstance(t, int)
            and isinstance(call_id, str)
            and isinstance(event, str)
            and isinstance(payload, bytes)
            and isinstance(prev, bytes)
            and isinstance(h, bytes)
            and isinstance(sig, bytes)
        ):
            raise BadLogEntry(
                f"entry {idx}: a column has the wrong type",
                index=idx if isinstance(idx, int) else None,
                reason="malformed",
            )
        return LogEntry(idx, t, call_id, event, payload, prev, h, sig)

    def entries(self, call_id: str | None = None) -> list[LogEntry]:
        """The entries in index order, all or those of one call. Does not verify."""
        rows = self._rows("WHERE call_id = ?", (call_id,)) if call_id is not None else self._rows()
        return [self._entry(r) for r in rows]

    def calls(self) -> list[str]:
        """Call ids in the order their first entry was written."""
        rows = self._conn.execute(
            "SELECT call_id FROM entries GROUP BY call_id ORDER BY MIN(idx)"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def __len__(self) -> int:
        return self._read_head().count

    def cosignatures(self, call_id: str) -> list[Cosignature]:
        return [_cosign_payload(e) for e in self.entries(call_id) if e.event == EVENT_COSIGN]

    # --- writing ------------------------------------------------------------------------

    def _require_key(self) -> SigningKey:
        if self._key is None:
            raise StateError(f"{self.path}: the call log is open read-only (no signing key)")
        return self._key

    def append(self, call_id: str, event: str, payload: Value, now: float) -> LogEntry:
        """Append one event; returns the signed entry. ``cosign`` is reserved."""
        if event == EVENT_COSIGN:
            raise UsageError("cosign entries are written by sign_summary/add_cosignature")
        return self._append(call_id, event, payload, now)

    def _append(self, call_id: str, event: str, payload: Value, now: float) -> LogEntry:
        key = self._require_key()
        _check_id(call_id, "call id")
        if not _EVENT_RE.match(event):
            raise UsageError(f"event type {event!r} must match [a-z][a-z0-9_.-]{{0,63}}")
        _validate_payload(event, payload)
        payload_bytes = encode(payload)
        if len(payload_bytes) > MAX_PAYLOAD_SIZE:
            raise UsageError(
                f"payload of {len(payload_bytes)} bytes exceeds the limit of {MAX_PAYLOAD_SIZE}"
            )
        time_us = _time_us(now)
        with _transaction(self._conn):
            head = self._read_head()
            index = head.count
            h = entry_hash(
                terminal_id=self.terminal_id,
                index=index,
                time_us=time_us,
                call_id=call_id,
                event=event,
                payload=payload_bytes,
                prev_hash=head.head_hash,
            )
            sig = key.sign(entry_signing_bytes(h))
            head_sig = key.sign(head_signing_bytes(self.terminal_id, index + 1, h))
            try:
                self._conn.execute(
                    f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    (index, time_us, call_id, event, payload_bytes, head.head_hash, h, sig),
                )
            except sqlite3.IntegrityError as exc:
                raise BadLogEntry(
                    f"entry {index}: an entry beyond the signed head already exists",
                    index=index,
                    reason="beyond_head",
                ) from exc
            self._conn.execute(
                "UPDATE head SET count = ?, head_hash = ?, signature = ? WHERE id = 1",
                (index + 1, h, head_sig),
            )
        return LogEntry(index, time_us, call_id, event, payload_bytes, head.head_hash, h, sig)

    def _check_tail(self, public_key: PublicKey) -> None:
        """Cheap check before writing: the head is signed and matches the last entry."""
        head = self._verify_head(public_key)
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries ORDER BY idx DESC LIMIT 1"  # noqa: S608
        ).fetchall()
        if head.count == 0 and not rows:
            return
        if not rows:
            raise BadLogEntry(
                f"entry 0: all {head.count} entries the signed head records are missing",
                index=0,
                reason="truncated",
            )
        last = self._entry(rows[0])
        # rows beyond what the head signs; else entries gone, or the last one changed
        beyond = last.index >= head.count
        first_bad = head.count if beyond else min(last.index + 1, head.count - 1)
        if last.index != head.count - 1 or not hmac.compare_digest(last.entry_hash, head.head_hash):
            raise BadLogEntry(
                f"the log's tail does not match its signed head (head: {head.count} entries, "
                f"last stored index {last.index}); run `hotline log verify`",
                index=first_bad,
                reason="tail_mismatch",
            )

    def call_summary(self, call_id: str, peer_id: str) -> bytes:
        """The canonical bytes this terminal and ``peer_id`` both sign for ``call_id``.

        Only facts both ends agree on: the call id, line id and charter version (from
        ``ring``/``answer`` entries), the pair, and every epoch whose roster holds both of
        them, with that roster and its security code; ``members`` is the union of those
        rosters. Times, statistics and transport events differ per side and are left out.
        Raises :class:`StateError` when the log cannot say (no ring/answer, conflicting facts).
        """
        _check_id(peer_id, "peer id")
        if peer_id == self.terminal_id:
            raise UsageError("a call summary is between this terminal and another one")
        return _summary_from(self.entries(call_id), call_id, self.terminal_id, peer_id)

    def sign_summary(self, call_id: str, peer_id: str, now: float) -> tuple[bytes, bytes]:
        """Sign this call's summary with our key, store our cosign entry, and return
        ``(summary, signature)`` to send to ``peer_id``."""
        key = self._require_key()
        summary = self.call_summary(call_id, peer_id)
        self._refuse_duplicate(call_id, self.terminal_id, summary)
        signature = sign_summary(key, summary)
        self._append_cosign(
            call_id=call_id,
            signer_id=self.terminal_id,
            signer_key=key.public,
            summary=summary,
            signature=signature,
            now=now,
        )
        return summary, signature

    def add_cosignature(  # noqa: PLR0917 (the agreed API, in hang-up order)
        self,
        call_id: str,
        signer_id: str,
        signer_key: PublicKey,
        summary: bytes,
        signature: bytes,
        now: float,
    ) -> LogEntry:
        """Store the peer's signature over the call summary after checking it.

        ``signer_key`` must come from the charter. Raises :class:`SignatureError` if the
        signature does not verify, :class:`SummaryMismatch` if the peer signed other facts
        than this log records (the entry is not written in either case).
        """
        self._require_key()
        _check_id(signer_id, "signer id")
        if signer_id == self.terminal_id:
            raise UsageError("our own signature is stored by sign_summary, not add_cosignature")
        try:
            verify_summary_signature(signer_key, summary, signature, signer_id=signer_id)
        except (SignatureError, EncodingError) as exc:
            self._reject(exc, call_id)
            raise
        ours = self.call_summary(call_id, signer_id)
        if not hmac.compare_digest(ours, summary):
            mismatch = SummaryMismatch(
                f"call {call_id}: {signer_id} signed a different summary than this log "
                f"records ({_describe_difference(ours, summary)})"
            )
            self._reject(mismatch, call_id)
            raise mismatch
        self._refuse_duplicate(call_id, signer_id, summary)
        return self._append_cosign(
            call_id=call_id,
            signer_id=signer_id,
            signer_key=signer_key,
            summary=summary,
            signature=signature,
            now=now,
        )

    def _reject(self, exc: HotlineError, call_id: str) -> None:
        self.rejected[exc.reason] += 1
        _logger.warning(
            "call log %s: refused co-signature for call %s: %s", self.path, call_id, exc
        )

    def _refuse_duplicate(self, call_id: str, signer_id: str, summary: bytes) -> None:
        for c in self.cosignatures(call_id):
            if c.signer_id == signer_id and c.summary == summary:
                raise StateError(
                    f"call {call_id}: {signer_id}'s signature over this summary is already "
                    f"stored (entry {c.index})"
                )

    def _append_cosign(
        self,
        *,
        call_id: str,
        signer_id: str,
        signer_key: PublicKey,
        summary: bytes,
        signature: bytes,
        now: float,
    ) -> LogEntry:
        payload: Value = {
            "signer_id": signer_id,
            "signer_key": signer_key.raw,
            "summary": summary,
            "signature": signature,
        }
        return self._append(call_id, EVENT_COSIGN, payload, now)

    # --- verifying ----------------------------------------------------------------------

    def _verify_head(self, public_key: PublicKey) -> _Head:
        head = self._read_head()
        try:
            public_key.verify(
                head.signature,
                head_signing_bytes(self.terminal_id, head.count, head.head_hash),
                what="head signature",
            )
        except SignatureError as exc:
            raise BadLogEntry(
                f"the signed head (count {head.count}) does not verify with the key given "
                f"for terminal {self.terminal_id}: the head was changed, or the key is wrong",
                index=None,
                reason="head_signature",
            ) from exc
        return head

    def verify(
        self,
        public_key: PublicKey,
        peer_keys: Mapping[str, PublicKey] | None = None,
    ) -> VerifyReport:
        """Check the whole log; raise :class:`BadLogEntry` naming the first bad entry.

        ``public_key`` is this terminal's identity key (from the charter). ``peer_keys``
        maps terminal ids to identity keys (the charter's): with it every cosignature is
        checked against the signer's charter key and must be present there; without it
        peer cosignatures are checked against the key stored beside them and reported
        with ``identity_checked=False``. Each cosigned summary is also recomputed from the
        entries before it and must match.
        """
        try:
            return self._verify(public_key, peer_keys)
        except BadLogEntry as exc:
            self.rejected[exc.reason] += 1
            _logger.info("call log %s failed verification: %s", self.path, exc)
            raise

    def _verify(
        self,
        public_key: PublicKey,
        peer_keys: Mapping[str, PublicKey] | None,
    ) -> VerifyReport:
        head = self._verify_head(public_key)
        rows = self._rows()
        by_index: dict[int, tuple[object, ...]] = {}
        for row in rows:
            idx = row[0]
            if not isinstance(idx, int):
                raise BadLogEntry(
                    "an entry has a non-integer index", index=None, reason="malformed"
                )
            by_index[idx] = row
        entries: list[LogEntry] = []
        by_call: dict[str, list[LogEntry]] = {}
        checked: list[CheckedCosignature] = []
        prev = GENESIS_HASH
        last = max([head.count, *[i + 1 for i in by_index]])
        for i in range(last):
            found = by_index.get(i)
            if found is None:
                if max(by_index, default=-1) < i:
                    raise BadLogEntry(
                        f"entry {i}: missing; the log was truncated (the signed head records "
                        f"{head.count} entries, entries {i}..{head.count - 1} are gone)",
                        index=i,
                        reason="truncated",
                    )
                raise BadLogEntry(
                    f"entry {i}: missing (a gap before entry {min(j for j in by_index if j > i)})",
                    index=i,
                    reason="gap",
                )
            e = self._entry(found)
            self._check_entry(e, prev, public_key, last)
            if i >= head.count:
                raise BadLogEntry(
                    f"entry {i}: beyond the signed head, which records {head.count} entries",
                    index=i,
                    reason="beyond_head",
                )
            if e.event == EVENT_COSIGN:
                before = by_call.get(e.call_id, [])
                checked.append(self._check_cosign(e, before, public_key, peer_keys))
            entries.append(e)
            by_call.setdefault(e.call_id, []).append(e)
            prev = e.entry_hash
        stray = sorted(i for i in by_index if i < 0)
        if stray:
            raise BadLogEntry(
                f"entry {stray[0]}: an index outside the log", index=stray[0], reason="gap"
            )
        if not hmac.compare_digest(prev, head.head_hash):
            raise BadLogEntry(
                f"the signed head's hash does not match entry {head.count - 1}",
                index=head.count - 1 if head.count else None,
                reason="head_mismatch",
            )
        return VerifyReport(
            terminal_id=self.terminal_id,
            entries=head.count,
            head_hash=head.head_hash,
            calls=len({e.call_id for e in entries}),
            cosignatures=tuple(checked),
        )

    def _check_entry(
        self,
        e: LogEntry,
        prev: bytes,
        public_key: PublicKey,
        span: int,
    ) -> None:
        i = e.index
        if not hmac.compare_digest(e.hash_as(self.terminal_id, i), e.entry_hash):
            # Was it moved? Find the index it was written as (rare path: we are failing).
            for k in range(span + 1):
                if k != i and hmac.compare_digest(e.hash_as(self.terminal_id, k), e.entry_hash):
                    raise BadLogEntry(
                        f"entry {i}: reordered: this row was written as entry {k}",
                        index=i,
                        reason="reordered",
                    )
            raise BadLogEntry(
                f"entry {i}: hash mismatch: its content (time, call, event, payload or "
                "links) was changed after it was written",
                index=i,
                reason="hash_mismatch",
            )
        try:
            public_key.verify(e.signature, entry_signing_bytes(e.entry_hash))
        except SignatureError as exc:
            raise BadLogEntry(
                f"entry {i}: bad signature: not signed by terminal {self.terminal_id}'s key",
                index=i,
                reason="bad_signature",
            ) from exc
        if not hmac.compare_digest(e.prev_hash, prev):
            raise BadLogEntry(
                f"entry {i}: broken chain: its prev_hash is not the hash of entry {i - 1}",
                index=i,
                reason="broken_chain",
            )

    def _check_cosign(
        self,
        e: LogEntry,
        before: Sequence[LogEntry],
        public_key: PublicKey,
        peer_keys: Mapping[str, PublicKey] | None,
    ) -> CheckedCosignature:
        def bad(msg: str, reason: str) -> BadLogEntry:
            return BadLogEntry(f"entry {e.index}: {msg}", index=e.index, reason=reason)

        try:
            c = _cosign_payload(e)
            summary = _check_summary_bytes(c.summary)
            between = field_list(summary, "between", "call summary")
        except EncodingError as exc:
            raise bad(f"malformed cosignature: {exc}", "bad_cosignature") from exc
        if c.signer_id == self.terminal_id:
            key, identity_checked = public_key, True
            peers = [p for p in between if p != self.terminal_id]
        elif peer_keys is not None:
            if c.signer_id not in peer_keys:
                raise bad(f"cosigner {c.signer_id} is not among the given keys", "unknown_signer")
            key, identity_checked = peer_keys[c.signer_id], True
            peers = [c.signer_id]
        else:
            key, identity_checked = c.signer_key, False
            peers = [c.signer_id]
        try:
            verify_summary_signature(key, c.summary, c.signature, signer_id=c.signer_id)
        except (SignatureError, EncodingError) as exc:
            raise bad(f"cosignature by {c.signer_id} does not verify", "bad_cosignature") from exc
        if len(peers) != 1 or not isinstance(peers[0], str) or self.terminal_id not in between:
            raise bad(
                "the cosigned summary is not between this terminal and one peer", "bad_cosignature"
            )
        try:
            expected = _summary_from(before, e.call_id, self.terminal_id, peers[0])
        except HotlineError as exc:
            raise bad(f"cannot recompute the cosigned summary: {exc}", "summary_mismatch") from exc
        if not hmac.compare_digest(expected, c.summary):
            raise bad(
                "the cosigned summary does not match the log's own entries "
                f"({_describe_difference(expected, c.summary)})",
                "summary_mismatch",
            )
        return CheckedCosignature(e.index, e.call_id, c.signer_id, identity_checked)


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
