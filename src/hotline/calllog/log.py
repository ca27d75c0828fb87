"""The call log on disk: append-only, hash-chained, signed, one SQLite file per terminal
(see the package docstring and ``docs/call-log.md``). Pure apart from ``sqlite3``: time
is passed in.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hotline.calllog.records import (
    _ENTRY_COLUMNS,
    _EVENT_RE,
    _SCHEMA,
    EVENT_CHECK_ROLLUP,
    EVENT_COSIGN,
    FORMAT_VERSION,
    GENESIS_HASH,
    MAX_PAYLOAD_SIZE,
    CheckedCosignature,
    Cosignature,
    LogEntry,
    PrunedRun,
    VerifyReport,
    _check_id,
    _check_summary_bytes,
    _connect_read_only,
    _cosign_payload,
    _describe_difference,
    _summary_from,
    _time_us,
    _validate_payload,
    entry_hash,
    entry_signing_bytes,
    first_unclaimed,
    head_signing_bytes,
    rollup_claims,
    sign_summary,
    verify_summary_signature,
)
from hotline.encoding import (
    Value,
    encode,
    field_list,
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

    def _rows(
        self, where: str = "", args: tuple[object, ...] = (), limit: int | None = None
    ) -> list[tuple[object, ...]]:
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        try:
            return self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries {where} ORDER BY idx{tail}",  # noqa: S608 (fixed SQL)
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

    def entries_of_event(
        self, event: str, *, call_below: str | None = None, limit: int | None = None
    ) -> list[LogEntry]:
        """The entries of one event type in index order (with ``call_below``: only those
        whose call id sorts before it; at most ``limit``). Does not verify."""
        where, args = "WHERE event = ?", [event]
        if call_below is not None:
            where, args = where + " AND call_id < ?", [*args, call_below]
        rows = self._rows(where, tuple(args), limit)
        return [self._entry(r) for r in rows]

    def indices_of_event(self, event: str) -> list[int]:
        """The indices of one event type's entries, in order."""
        rows = self._conn.execute("SELECT idx FROM entries WHERE event = ? ORDER BY idx", (event,))
        return [int(r[0]) for r in rows.fetchall()]

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
        self._require_key()
        _check_id(call_id, "call id")
        if not _EVENT_RE.match(event):
            raise UsageError(f"event type {event!r} must match [a-z][a-z0-9_.-]{{0,63}}")
        _validate_payload(event, payload)
        payload_bytes = encode(payload)
        if len(payload_bytes) > MAX_PAYLOAD_SIZE:
            raise UsageError(
                f"payload of {len(payload_bytes)} bytes exceeds the limit of {MAX_PAYLOAD_SIZE}"
            )
        with _transaction(self._conn):
            return self._append_locked(call_id, event, payload_bytes, now)

    def _append_locked(
        self, call_id: str, event: str, payload_bytes: bytes, now: float
    ) -> LogEntry:
        """The append itself, inside a transaction the caller holds."""
        key = self._require_key()
        time_us = _time_us(now)
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
        spans = self._spans()
        pruned: list[tuple[int, int]] = []
        claims: list[tuple[int, int]] = []
        prev = GENESIS_HASH
        last = max([head.count, *[i + 1 for i in by_index]])
        i = 0
        while i < last:
            found = by_index.get(i)
            if found is None:
                span = spans.get(i)
                if span is not None:
                    self._check_span(span, prev, public_key, head.count)
                    pruned.append((span.first, span.last))
                    prev, i = span.last_hash, span.last + 1
                    continue
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
            elif e.event == EVENT_CHECK_ROLLUP:
                claims.extend(rollup_claims(e))
            entries.append(e)
            by_call.setdefault(e.call_id, []).append(e)
            prev = e.entry_hash
            i += 1
        stray = sorted(i for i in by_index if i < 0)
        if stray:
            raise BadLogEntry(
                f"entry {stray[0]}: an index outside the log", index=stray[0], reason="gap"
            )
        if len(entries) != len(by_index):
            inside = min(set(by_index) - {e.index for e in entries})
            raise BadLogEntry(
                f"entry {inside}: stored inside a run of entries a rollup removed",
                index=inside,
                reason="inside_pruned",
            )
        unclaimed = first_unclaimed(pruned, claims)
        if unclaimed is not None:
            raise BadLogEntry(
                f"entry {unclaimed}: removed, but no signed rollup in the log claims it",
                index=unclaimed,
                reason="unclaimed_pruning",
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
            pruned=sum(b - a + 1 for a, b in pruned),
        )

    def _spans(self) -> dict[int, PrunedRun]:
        """The runs of removed entries, by first index (none in a log made before rollups)."""
        try:
            rows = self._conn.execute(
                "SELECT first, last, prev_hash, last_hash, last_sig FROM pruned ORDER BY first"
            ).fetchall()
        except sqlite3.OperationalError:  # an older log, opened read-only: no such table
            return {}
        except sqlite3.DatabaseError as exc:
            raise BadLogEntry(
                f"{self.path}: pruned runs unreadable: {exc}", index=None, reason="corrupt"
            ) from exc
        out: dict[int, PrunedRun] = {}
        for first, last, prev_hash, last_hash, last_sig in rows:
            if not (
                isinstance(first, int)
                and isinstance(last, int)
                and isinstance(prev_hash, bytes)
                and isinstance(last_hash, bytes)
                and isinstance(last_sig, bytes)
                and 0 <= first <= last
            ):
                raise BadLogEntry("a pruned run is malformed", index=None, reason="malformed")
            out[first] = PrunedRun(first, last, prev_hash, last_hash, last_sig)
        return out

    def _check_span(self, span: PrunedRun, prev: bytes, public_key: PublicKey, count: int) -> None:
        """A removed run links to the entry before it, and its last entry's hash (which the
        next entry links to) carries this terminal's signature."""
        if span.last >= count:
            raise BadLogEntry(
                f"entry {span.first}: a removed run goes beyond the signed head",
                index=span.first,
                reason="beyond_head",
            )
        if not hmac.compare_digest(span.prev_hash, prev):
            raise BadLogEntry(
                f"entry {span.first}: broken chain: the removed run {span.first}..{span.last} "
                f"does not follow entry {span.first - 1}",
                index=span.first,
                reason="broken_chain",
            )
        try:
            public_key.verify(span.last_sig, entry_signing_bytes(span.last_hash))
        except SignatureError as exc:
            raise BadLogEntry(
                f"entry {span.last}: bad signature on the last entry of a removed run",
                index=span.last,
                reason="bad_signature",
            ) from exc

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
