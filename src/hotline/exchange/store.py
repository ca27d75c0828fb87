"""What the exchange keeps across restarts, in one SQLite file (the default store).

- charters: through :class:`hotline.charter.CharterStore` (the highest valid version per line,
  so a restarted exchange cannot be rolled back either);
- pending deliveries for store-and-forward, and the envelopes they carry;
- per sender, the highest sequence number accepted (so a replay is refused after a restart);
- the exchange's own event log (admissions, refusals, closes, charter updates).

The server writes in batches (:class:`WriteBatch`), one transaction each. A delivery that
is acknowledged before its batch is written is never written at all. A sender is told its
envelope was accepted only after the batch holding it is committed, so an envelope is never
lost by a crash: either it is in the store, or its sender still holds it and sends it again.

Tables are prefixed ``exchange_`` so that they share the file with the charter store.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from hotline.charter import CharterStore, SignedCharter
from hotline.errors import CharterError, StateError
from hotline.exchange.routing import Pending, Routed

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchange_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exchange_envelopes (
    id          INTEGER PRIMARY KEY,
    line        TEXT NOT NULL,
    sender      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    accepted_ms INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS exchange_deliveries (
    id        INTEGER PRIMARY KEY,
    envelope  INTEGER NOT NULL REFERENCES exchange_envelopes(id),
    line      TEXT NOT NULL,
    recipient TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS exchange_deliveries_envelope ON exchange_deliveries(envelope);
CREATE INDEX IF NOT EXISTS exchange_envelopes_accepted ON exchange_envelopes(accepted_ms);
CREATE TABLE IF NOT EXISTS exchange_senders (
    line     TEXT NOT NULL,
    terminal TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (line, terminal)
);
CREATE TABLE IF NOT EXISTS exchange_events (
    id       INTEGER PRIMARY KEY,
    at_ms    INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    line     TEXT,
    terminal TEXT,
    source   TEXT,
    reason   TEXT
);
"""


@dataclass(frozen=True)
class Event:
    """One row of the exchange's event log. Never holds envelope bodies or keys."""

    at_ms: int
    kind: str
    line: str | None = None
    terminal: str | None = None
    source: str | None = None
    reason: str | None = None


@dataclass
class WriteBatch:
    """Changes collected between two commits."""

    envelopes: dict[int, tuple[int, str, str, int, int, bytes]] = field(default_factory=dict)
    deliveries: dict[int, tuple[int, int, str, str]] = field(default_factory=dict)
    _refs: dict[int, int] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)
    touched_envelopes: set[int] = field(default_factory=set)
    sender_seqs: dict[tuple[str, str], int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.envelopes or self.deliveries or self.removed or self.sender_seqs or self.events
        )

    def add_routed(self, routed: Routed) -> None:
        env = routed.envelope
        first = routed.deliveries[0] if routed.deliveries else None
        key = (env.line_id, env.sender)
        self.sender_seqs[key] = max(self.sender_seqs.get(key, env.seq), env.seq)
        if first is None:
            return
        self.envelopes[routed.envelope_id] = (
            routed.envelope_id,
            env.line_id,
            env.sender,
            env.seq,
            int(first.accepted_at * 1000),
            env.raw,
        )
        for p in routed.deliveries:
            self.deliveries[p.delivery_id] = (p.delivery_id, p.envelope_id, p.line_id, p.recipient)
        self._refs[routed.envelope_id] = len(routed.deliveries)

    def add_removed(self, pending: list[Pending] | tuple[Pending, ...]) -> None:
        """Deliveries acknowledged, expired or dropped."""
        for p in pending:
            if self.deliveries.pop(p.delivery_id, None) is not None:
                left = self._refs[p.envelope_id] - 1
                if left:
                    self._refs[p.envelope_id] = left
                else:  # written and removed within one batch: never written at all
                    del self._refs[p.envelope_id]
                    del self.envelopes[p.envelope_id]
            else:
                self.removed.append(p.delivery_id)
                self.touched_envelopes.add(p.envelope_id)

    def add_event(self, event: Event) -> None:
        self.events.append(event)


@dataclass(frozen=True)
class Snapshot:
    """What a starting exchange loads."""

    pending: list[Pending]
    last_seqs: dict[tuple[str, str], int]
    next_delivery_id: int
    next_envelope_id: int


class ExchangeStore:
    """The exchange's SQLite store. Single-threaded: call from the event loop only."""

    def __init__(self, path: Path, *, max_event_rows: int = 100_000) -> None:
        self.path = path
        self.max_event_rows = max_event_rows
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            row = self._db.execute(
                "SELECT value FROM exchange_meta WHERE key = 'store_id'"
            ).fetchone()
            if row is None:
                self.store_id = secrets.token_hex(16)
                self._db.execute(
                    "INSERT INTO exchange_meta (key, value) VALUES ('store_id', ?)",
                    (self.store_id,),
                )
            else:
                self.store_id = str(row[0])
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the exchange store: {exc}") from exc
        self.charters = CharterStore(path)

    def close(self) -> None:
        self.charters.close()
        self._db.close()

    def check(self) -> None:
        """Raise :class:`StateError` unless the store answers a query (readiness)."""
        try:
            self._db.execute("SELECT COUNT(*) FROM exchange_meta").fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: the exchange store does not answer: {exc}") from exc

    # --- charters ----------------------------------------------------------------------

    def accept_charter(self, signed: SignedCharter, *, reanchor: bool = False) -> SignedCharter:
        """Verify and keep ``signed`` if newer (:meth:`CharterStore.accept`); returns the
        line's current charter. Raises the charter store's errors."""
        return self.charters.accept(signed, reanchor=reanchor)

    def charters_held(self) -> list[SignedCharter]:
        """Every line's current charter (each re-verified by the charter store)."""
        held: list[SignedCharter] = []
        for line_id in self.charters.lines():
            try:
                current = self.charters.current(line_id)
            except CharterError as exc:
                logger.error("not serving line %s: %s", line_id, exc)
                continue
            if current is not None:
                held.append(current)
        return held

    # --- envelopes ---------------------------------------------------------------------

    def load(self, now_ms: int, window_ms: int) -> Snapshot:
        """Pending deliveries still inside the window, sender sequence numbers, next ids."""
        cutoff = now_ms - window_ms
        try:
            rows = self._db.execute(
                "SELECT d.id, d.envelope, e.line, d.recipient, e.sender, e.seq, e.accepted_ms,"
                " e.data FROM exchange_deliveries d JOIN exchange_envelopes e"
                " ON e.id = d.envelope WHERE e.accepted_ms > ? ORDER BY d.id",
                (cutoff,),
            ).fetchall()
            seqs = self._db.execute(
                "SELECT line, terminal, last_seq FROM exchange_senders"
            ).fetchall()
            max_delivery = self._db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM exchange_deliveries"
            ).fetchone()[0]
            max_envelope = self._db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM exchange_envelopes"
            ).fetchone()[0]
            meta = dict(self._db.execute("SELECT key, value FROM exchange_meta").fetchall())
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the exchange store: {exc}") from exc
        pending = [
            Pending(
                delivery_id=int(r[0]),
                envelope_id=int(r[1]),
                line_id=str(r[2]),
                recipient=str(r[3]),
                sender=str(r[4]),
                seq=int(r[5]),
                accepted_at=int(r[6]) / 1000,
                data=bytes(r[7]),
            )
            for r in rows
        ]
        # ids never go back, even when every row has been deleted
        next_delivery = max(int(max_delivery), int(meta.get("max_delivery_id", 0))) + 1
        next_envelope = max(int(max_envelope), int(meta.get("max_envelope_id", 0))) + 1
        return Snapshot(
            pending=pending,
            last_seqs={(str(r[0]), str(r[1])): int(r[2]) for r in seqs},
            next_delivery_id=next_delivery,
            next_envelope_id=next_envelope,
        )

    def write(self, batch: WriteBatch, *, next_ids: tuple[int, int] | None = None) -> None:
        """Commit ``batch`` in one transaction. ``next_ids`` (delivery, envelope) records
        the router's counters so that ids never repeat after a restart."""
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                if batch.envelopes:
                    db.executemany(
                        "INSERT INTO exchange_envelopes (id, line, sender, seq, accepted_ms, data)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        batch.envelopes.values(),
                    )
                if batch.deliveries:
                    db.executemany(
                        "INSERT INTO exchange_deliveries (id, envelope, line, recipient)"
                        " VALUES (?, ?, ?, ?)",
                        batch.deliveries.values(),
                    )
                if batch.removed:
                    db.executemany(
                        "DELETE FROM exchange_deliveries WHERE id = ?",
                        ((i,) for i in batch.removed),
                    )
                if batch.touched_envelopes:
                    db.executemany(
                        "DELETE FROM exchange_envelopes WHERE id = ? AND NOT EXISTS"
                        " (SELECT 1 FROM exchange_deliveries WHERE envelope = ?)",
                        ((i, i) for i in batch.touched_envelopes),
                    )
                if batch.sender_seqs:
                    db.executemany(
                        "INSERT INTO exchange_senders (line, terminal, last_seq) VALUES (?, ?, ?)"
                        " ON CONFLICT (line, terminal) DO UPDATE"
                        " SET last_seq = MAX(last_seq, excluded.last_seq)",
                        ((k[0], k[1], v) for k, v in batch.sender_seqs.items()),
                    )
                if batch.events:
                    db.executemany(
                        "INSERT INTO exchange_events"
                        " (at_ms, kind, line, terminal, source, reason) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            (e.at_ms, e.kind, e.line, e.terminal, e.source, e.reason)
                            for e in batch.events
                        ),
                    )
                if next_ids is not None:
                    db.executemany(
                        "INSERT OR REPLACE INTO exchange_meta (key, value) VALUES (?, ?)",
                        [
                            ("max_delivery_id", str(next_ids[0] - 1)),
                            ("max_envelope_id", str(next_ids[1] - 1)),
                        ],
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot write the exchange store: {exc}") from exc

    def sweep(self, now_ms: int, window_ms: int) -> int:
        """Delete what is older than the window, and the oldest events beyond the cap.
        Returns the number of deliveries deleted."""
        cutoff = now_ms - window_ms
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                cur = db.execute(
                    "DELETE FROM exchange_deliveries WHERE envelope IN"
                    " (SELECT id FROM exchange_envelopes WHERE accepted_ms <= ?)",
                    (cutoff,),
                )
                deleted = cur.rowcount
                db.execute("DELETE FROM exchange_envelopes WHERE accepted_ms <= ?", (cutoff,))
                db.execute(
                    "DELETE FROM exchange_events WHERE id <= "
                    "(SELECT COALESCE(MAX(id), 0) FROM exchange_events) - ?",
                    (self.max_event_rows,),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot clean the exchange store: {exc}") from exc
        return int(deleted)

    def delete_deliveries(self, pending: list[Pending]) -> None:
        batch = WriteBatch()
        batch.removed = [p.delivery_id for p in pending]
        batch.touched_envelopes = {p.envelope_id for p in pending}
        self.write(batch)

    # --- event log ---------------------------------------------------------------------

    def events(self, limit: int = 100, kind: str | None = None) -> list[Event]:
        """The most recent events, oldest first."""
        query = "SELECT at_ms, kind, line, terminal, source, reason FROM exchange_events"
        args: tuple[object, ...] = ()
        if kind is not None:
            query += " WHERE kind = ?"
            args = (kind,)
        query += " ORDER BY id DESC LIMIT ?"
        rows = self._db.execute(query, (*args, limit)).fetchall()
        return [Event(int(r[0]), str(r[1]), r[2], r[3], r[4], r[5]) for r in reversed(rows)]

    def counts(self) -> dict[str, int]:
        """Row counts, for tests and operators."""
        out: dict[str, int] = {}
        for table in ("envelopes", "deliveries", "senders", "events"):
            row = self._db.execute(f"SELECT COUNT(*) FROM exchange_{table}").fetchone()  # noqa: S608 (fixed names)
            out[table] = int(row[0])
        return out


def read_events(
    path: Path, *, since_ms: int | None = None, kind: str | None = None, limit: int = 1000
) -> list[Event]:
    """The most recent ``limit`` events of the store at ``path`` (oldest first), opened
    read-only: safe while the exchange runs. Raises :class:`StateError`."""
    if not path.is_file():
        raise StateError(f"{path}: no exchange store here")
    query = "SELECT at_ms, kind, line, terminal, source, reason FROM exchange_events WHERE 1"
    args: list[object] = []
    if since_ms is not None:
        query += " AND at_ms >= ?"
        args.append(since_ms)
    if kind is not None:
        query += " AND kind = ?"
        args.append(kind)
    query += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            rows = db.execute(query, args).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot read the exchange's events: {exc}") from exc
    return [Event(int(r[0]), str(r[1]), r[2], r[3], r[4], r[5]) for r in reversed(rows)]
