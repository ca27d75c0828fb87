"""The exchange's routing core: admission, per-line routing, limits, store-and-forward.

Sans-I/O: the server adapter (:mod:`hotline.exchange.server`) feeds it what terminals send,
with the time (``now``, seconds, monotonic or wall: only differences matter) passed in, and
writes out what it returns. Nothing here touches a socket, a file or the event loop.

Per line the router holds the line's charter, the sessions of its online terminals, one
mailbox per terminal (the envelopes accepted for it and not yet acknowledged, in acceptance
order) and the highest sequence number accepted from each sender. A mailbox entry stays
until its recipient acknowledges it or it is older than the store-and-forward window; a
terminal that (re)connects is sent its mailbox from the start, after dropping what it says
it has already processed (``resume``). Terminals drop duplicates by sequence number, so a
delivery is processed exactly once even if it is sent twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hotline.envelope import DEFAULT_MAX_ENVELOPE_SIZE, Envelope, Membership, SequenceTracker
from hotline.errors import (
    AuthenticationError,
    CharterRollback,
    DuplicateTerminal,
    HotlineError,
    MisroutedEnvelope,
    QueueFull,
    RateLimited,
    ReplayError,
    SignatureError,
    StateError,
    TooManyConnections,
    UnknownMember,
    UnknownRecipient,
)
from hotline.exchange.frames import FRAME_OVERHEAD, AdvertisedLimits, auth_message
from hotline.ids import LineId, TerminalId
from hotline.keys import PublicKey


@dataclass(frozen=True)
class Limits:
    """Every limit of the exchange, with its safe default (``docs/limits.md``)."""

    #: largest envelope, in bytes of its wire form; larger: the connection is closed
    max_envelope_size: int = DEFAULT_MAX_ENVELOPE_SIZE
    #: largest signed charter a terminal may push
    max_charter_size: int = 256 * 1024
    #: envelopes and charters per second per terminal (token bucket rate)
    rate_per_s: float = 50.0
    #: token bucket depth: how many may come at once after a quiet spell
    burst: int = 200
    #: open WebSocket connections per source address (authenticated or not)
    max_connections_per_source: int = 32
    #: open WebSocket connections in total
    max_connections: int = 20_000
    #: pending (stored, unacknowledged) envelopes per terminal
    max_queue: int = 1000
    #: store-and-forward window: how long an unacknowledged envelope is kept
    window_s: float = 60.0
    #: time a new connection has to authenticate
    auth_timeout_s: float = 10.0
    #: failed authentications per source within ``auth_block_s`` before it is refused
    auth_failures_per_source: int = 10
    #: how long failed authentications count against their source
    auth_block_s: float = 60.0
    #: time to authenticate for a connection from a blocked source
    blocked_auth_timeout_s: float = 2.0
    #: a superseded session younger than this is a sign of a supersede loop (two copies of
    #: one terminal pushing each other off); an older one is a terminal that reconnected
    supersede_young_s: float = 5.0
    #: that many young supersedes within ``supersede_window_s``: refuse the newcomer
    supersede_loop_count: int = 4
    supersede_window_s: float = 30.0
    #: once a loop is seen, newcomers are refused while the incumbent stays online, for
    #: this long after the last refused attempt
    duplicate_hold_s: float = 60.0
    #: WebSocket ping interval; a peer that misses two pongs is dropped
    heartbeat_s: float = 20.0
    #: rows kept in the exchange's event log (oldest dropped first)
    max_event_log_rows: int = 100_000

    def __post_init__(self) -> None:
        numbers: dict[str, float] = {
            "max_envelope_size": self.max_envelope_size,
            "max_charter_size": self.max_charter_size,
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "max_connections_per_source": self.max_connections_per_source,
            "max_connections": self.max_connections,
            "max_queue": self.max_queue,
            "window_s": self.window_s,
            "auth_timeout_s": self.auth_timeout_s,
            "auth_failures_per_source": self.auth_failures_per_source,
            "auth_block_s": self.auth_block_s,
            "blocked_auth_timeout_s": self.blocked_auth_timeout_s,
            "supersede_young_s": self.supersede_young_s,
            "supersede_loop_count": self.supersede_loop_count,
            "supersede_window_s": self.supersede_window_s,
            "duplicate_hold_s": self.duplicate_hold_s,
            "heartbeat_s": self.heartbeat_s,
            "max_event_log_rows": self.max_event_log_rows,
        }
        for name, value in numbers.items():
            if not value > 0:
                raise StateError(f"limit {name} must be positive, not {value}")

    @property
    def max_frame_size(self) -> int:
        """Largest WebSocket message accepted from a terminal."""
        return max(self.max_envelope_size, self.max_charter_size) + FRAME_OVERHEAD

    def advertised(self) -> AdvertisedLimits:
        return AdvertisedLimits(
            max_envelope_size=self.max_envelope_size,
            rate_per_s=self.rate_per_s,
            burst=self.burst,
            window_s=self.window_s,
        )


class RoutedMember(Protocol):
    @property
    def terminal_id(self) -> str: ...

    @property
    def identity_key(self) -> PublicKey: ...


class LineCharter(Membership, Protocol):
    """What the router needs of a charter body (:class:`hotline.charter.Charter`)."""

    @property
    def terminals(self) -> Sequence[RoutedMember]: ...


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def delay(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate


class SourceGuard:
    """Connections per source address, and failed authentications per source."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._open: dict[str, int] = {}
        self._failures: dict[str, deque[float]] = {}
        self.total = 0

    def open(self, source: str, now: float) -> None:
        """Count a new connection from ``source``, or refuse it (too many connections).

        A source :meth:`blocked` for failed authentications is NOT refused here: a terminal
        behind the same address (a site's NAT) whose hello verifies must still get in. The
        server gives a blocked source's connections a short time to authenticate and
        refuses any of their hellos that fails (``auth_rate_limited``)."""
        del now
        if self.total >= self._limits.max_connections:
            raise TooManyConnections("the exchange is at its connection limit")
        if self._open.get(source, 0) >= self._limits.max_connections_per_source:
            raise TooManyConnections(f"{source}: too many connections from this source")
        self._open[source] = self._open.get(source, 0) + 1
        self.total += 1

    def close(self, source: str) -> None:
        n = self._open.get(source, 0)
        if n <= 0:
            raise StateError(f"{source}: closing a connection that was never opened")
        self.total -= 1
        if n == 1:
            del self._open[source]
        else:
            self._open[source] = n - 1

    def connections(self, source: str) -> int:
        return self._open.get(source, 0)

    def _trim(self, source: str, now: float) -> deque[float] | None:
        failures = self._failures.get(source)
        if failures is None:
            return None
        cutoff = now - self._limits.auth_block_s
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[source]
            return None
        return failures

    def auth_failed(self, source: str, now: float) -> bool:
        """Record a failed authentication; True if the source is now blocked."""
        self._trim(source, now)
        failures = self._failures.setdefault(source, deque())
        failures.append(now)
        if len(failures) > self._limits.auth_failures_per_source:
            failures.popleft()
        return len(failures) >= self._limits.auth_failures_per_source

    def blocked(self, source: str, now: float) -> bool:
        failures = self._trim(source, now)
        return failures is not None and len(failures) >= self._limits.auth_failures_per_source


class SupersedeGuard:
    """Detects two connections with one terminal's identity replacing each other.

    A terminal that reconnects supersedes its stale session once; two running copies of
    one terminal folder supersede each other every reconnection delay, each session living
    a fraction of a second. After ``supersede_loop_count`` supersedes of sessions younger
    than ``supersede_young_s`` within ``supersede_window_s``, the newcomer is refused
    (:class:`DuplicateTerminal`) and so is every further one while the incumbent stays
    online, until ``duplicate_hold_s`` after the last attempt. Keys are authenticated
    terminals only, so the maps are bounded by the charters."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._young: dict[tuple[str, str], deque[float]] = {}
        self._held: dict[tuple[str, str], float] = {}

    def check(self, line_id: str, terminal_id: str, incumbent: Session | None, now: float) -> None:
        """Raise :class:`DuplicateTerminal` if a new session of the terminal must not
        supersede ``incumbent`` (its current session)."""
        if incumbent is None or incumbent.closed:
            return
        limits = self._limits
        key = (line_id, terminal_id)
        held = self._held.get(key)
        if held is not None:
            if now < held:
                self._held[key] = now + limits.duplicate_hold_s
                raise DuplicateTerminal(
                    f"{terminal_id} of {line_id} is already connected from "
                    f"{incumbent.source}, and copies of it keep replacing each other"
                )
            del self._held[key]
        if now - incumbent.connected_at >= limits.supersede_young_s:
            return
        times = self._young.setdefault(key, deque())
        while times and times[0] <= now - limits.supersede_window_s:
            times.popleft()
        times.append(now)
        if len(times) >= limits.supersede_loop_count:
            del self._young[key]
            self._held[key] = now + limits.duplicate_hold_s
            raise DuplicateTerminal(
                f"{terminal_id} of {line_id}: {len(times)} connections replaced each other "
                f"within {limits.supersede_window_s:g} s (the last from {incumbent.source})"
            )

    def held(self, line_id: str, terminal_id: str, now: float) -> bool:
        until = self._held.get((line_id, terminal_id))
        return until is not None and now < until


@dataclass(frozen=True, slots=True)
class Pending:
    """One envelope waiting for one recipient."""

    delivery_id: int
    envelope_id: int
    line_id: str
    recipient: str
    sender: str
    seq: int
    #: when the exchange accepted the envelope (the router's clock)
    accepted_at: float
    data: bytes


@dataclass(eq=False)
class Session:
    """One authenticated connection of one terminal."""

    session_id: int
    line_id: LineId
    terminal_id: TerminalId
    source: str
    connected_at: float
    bucket: TokenBucket
    ack_bucket: TokenBucket
    #: the terminal's identity key when it authenticated (a charter update may change it)
    identity_key: PublicKey
    closed: bool = False


@dataclass
class _Mailbox:
    entries: deque[Pending] = field(default_factory=deque)
    #: how many of the first entries have been handed to the current session
    sent: int = 0


@dataclass(frozen=True)
class Connected:
    """The outcome of an admitted terminal."""

    session: Session
    #: the terminal's previous connection, to be closed
    superseded: Session | None
    #: mailbox entries the terminal says it has processed (``resume``), now dropped
    dropped: tuple[Pending, ...]


@dataclass(frozen=True)
class Routed:
    """The outcome of an accepted envelope."""

    envelope: Envelope
    envelope_id: int
    deliveries: tuple[Pending, ...]
    #: recipients of a broadcast that did not get it, with the reason (``queue_full``)
    dropped: tuple[tuple[TerminalId, str], ...]
    #: online sessions that have something new to send
    wake: tuple[Session, ...]


@dataclass(frozen=True)
class CharterChange:
    """The outcome of a newer charter for a line."""

    line_id: str
    version: int
    #: sessions whose terminal the new charter removed or re-keyed: close them
    evicted: tuple[Session, ...]
    #: online sessions that should receive the new charter
    notify: tuple[Session, ...]
    #: mailbox entries dropped because their recipient is gone
    dropped: tuple[Pending, ...]


@dataclass(frozen=True)
class Refused:
    """An envelope refused without closing the connection: a replay, an unknown or
    self-addressed recipient, a full queue. The sender is told with a ``reject`` frame."""

    envelope: Envelope
    error: HotlineError


@dataclass(frozen=True, slots=True)
class _Member:
    identity_key: PublicKey


class _Index:
    """A charter's terminals by id (the charter's own look-up may be a linear search)."""

    __slots__ = ("line_id", "members", "version")

    def __init__(self, charter: LineCharter) -> None:
        self.line_id = charter.line_id
        self.version = charter.version
        self.members = {t.terminal_id: _Member(t.identity_key) for t in charter.terminals}

    def terminal(self, terminal_id: str) -> _Member:
        member = self.members.get(terminal_id)
        if member is None:
            raise UnknownMember(f"line {self.line_id} has no terminal {terminal_id}")
        return member

    def key(self, terminal_id: str) -> PublicKey | None:
        member = self.members.get(terminal_id)
        return member.identity_key if member is not None else None


class _Line:
    __slots__ = ("charter", "index", "mailboxes", "sessions", "tracker")

    def __init__(self, charter: LineCharter) -> None:
        self.charter = charter
        self.index = _Index(charter)
        self.sessions: dict[str, Session] = {}
        self.mailboxes: dict[str, _Mailbox] = {}
        self.tracker = SequenceTracker()


class Router:
    """All lines of one exchange. See the module docstring."""

    def __init__(
        self, limits: Limits | None = None, *, next_delivery_id: int = 1, next_envelope_id: int = 1
    ) -> None:
        self.limits = limits or Limits()
        self.sources = SourceGuard(self.limits)
        self.supersedes = SupersedeGuard(self.limits)
        self._lines: dict[str, _Line] = {}
        self._next_delivery = next_delivery_id
        self._next_envelope = next_envelope_id
        self._next_session = 1
        self._dirty_presence: set[str] = set()
        self._nonempty: set[tuple[str, str]] = set()

    # --- charters ----------------------------------------------------------------------

    def set_charter(self, charter: LineCharter) -> CharterChange:
        """Serve ``charter`` for its line. The caller has verified it (and persisted it
        through :class:`hotline.charter.CharterStore`); the router refuses a lower version
        all the same and ignores the same version again."""
        line = self._lines.get(charter.line_id)
        if line is None:
            self._lines[charter.line_id] = _Line(charter)
            return CharterChange(charter.line_id, charter.version, (), (), ())
        if charter.version < line.charter.version:
            raise CharterRollback(
                f"line {charter.line_id}: version {charter.version} is older than "
                f"{line.charter.version}"
            )
        if charter.version == line.charter.version:
            return CharterChange(charter.line_id, charter.version, (), (), ())
        index = _Index(charter)
        evicted: list[Session] = []
        for terminal_id, session in list(line.sessions.items()):
            if index.key(terminal_id) != session.identity_key:
                evicted.append(session)
                del line.sessions[terminal_id]
                session.closed = True
        dropped: list[Pending] = []
        for terminal_id in list(line.mailboxes):
            if terminal_id not in index.members:
                dropped.extend(line.mailboxes.pop(terminal_id).entries)
                self._nonempty.discard((charter.line_id, terminal_id))
        for sender in list(line.tracker.snapshot()):
            if sender not in index.members:
                line.tracker.forget(sender)
        line.charter = charter
        line.index = index
        if evicted:
            self._dirty_presence.add(charter.line_id)
        return CharterChange(
            charter.line_id,
            charter.version,
            tuple(evicted),
            tuple(line.sessions.values()),
            tuple(dropped),
        )

    def charter(self, line_id: str) -> LineCharter:
        line = self._lines.get(line_id)
        if line is None:
            raise AuthenticationError(
                f"this exchange serves no line {line_id}", reason="unknown_line"
            )
        return line.charter

    def lines(self) -> list[str]:
        return sorted(self._lines)

    # --- admission ---------------------------------------------------------------------

    def authenticate(
        self,
        *,
        challenge: bytes,
        exchange_id: str,
        line_id: str,
        terminal_id: str,
        signature: bytes,
    ) -> PublicKey:
        """Check a hello: the line is served, the terminal is in its charter, and the
        signature over (challenge, exchange id, line id, terminal id) is the terminal's.
        Raises :class:`AuthenticationError` with reason ``unknown_line``, ``unknown_member``
        or ``bad_signature``."""
        line = self._lines.get(line_id)
        if line is None:
            raise AuthenticationError(
                f"this exchange serves no line {line_id}", reason="unknown_line"
            )
        key = line.index.key(terminal_id)
        if key is None:
            raise AuthenticationError(
                f"line {line_id} has no terminal {terminal_id}", reason="unknown_member"
            )
        try:
            key.verify(
                signature,
                auth_message(challenge, exchange_id, line_id, terminal_id),
                what="authentication signature",
            )
        except SignatureError as exc:
            raise AuthenticationError(
                f"authentication signature of {terminal_id} does not verify",
                reason="bad_signature",
            ) from exc
        return key

    def connect(
        self, *, line_id: LineId, terminal_id: TerminalId, source: str, now: float, resume: int
    ) -> Connected:
        """Register an authenticated terminal. Returns its session, the session it
        supersedes (to be closed) if the terminal was already connected, and the mailbox
        entries up to ``resume``, now dropped: the terminal says it processed them.
        Raises :class:`DuplicateTerminal` when two copies of the terminal keep replacing
        each other (:class:`SupersedeGuard`); the incumbent stays."""
        line = self._lines.get(line_id)
        key = line.index.key(terminal_id) if line is not None else None
        if line is None or key is None:
            raise AuthenticationError(f"{terminal_id} is not a terminal of {line_id}")
        self.supersedes.check(line_id, terminal_id, line.sessions.get(terminal_id), now)
        limits = self.limits
        session = Session(
            session_id=self._next_session,
            line_id=line_id,
            terminal_id=terminal_id,
            source=source,
            connected_at=now,
            bucket=TokenBucket(limits.rate_per_s, limits.burst, now),
            ack_bucket=TokenBucket(max(limits.rate_per_s, 20.0), limits.burst, now),
            identity_key=key,
        )
        self._next_session += 1
        old = line.sessions.get(terminal_id)
        if old is not None:
            old.closed = True
        line.sessions[terminal_id] = session
        mailbox = line.mailboxes.get(terminal_id)
        dropped: list[Pending] = []
        if mailbox is not None:
            mailbox.sent = 0
            dropped = self._drop_upto(line_id, terminal_id, mailbox, resume)
        self._dirty_presence.add(line_id)
        return Connected(session, old, tuple(dropped))

    def disconnect(self, session: Session) -> bool:
        """Forget a closed connection. True if it was the terminal's current session."""
        session.closed = True
        line = self._lines.get(session.line_id)
        if line is None or line.sessions.get(session.terminal_id) is not session:
            return False
        del line.sessions[session.terminal_id]
        mailbox = line.mailboxes.get(session.terminal_id)
        if mailbox is not None:
            mailbox.sent = 0
        self._dirty_presence.add(session.line_id)
        return True

    def session_of(self, line_id: str, terminal_id: str) -> Session | None:
        """The terminal's current session, if it is online."""
        line = self._lines.get(line_id)
        return line.sessions.get(terminal_id) if line is not None else None

    def online(self, line_id: str) -> frozenset[TerminalId]:
        line = self._lines.get(line_id)
        return frozenset(s.terminal_id for s in line.sessions.values()) if line else frozenset()

    def sessions(self, line_id: str) -> list[Session]:
        line = self._lines.get(line_id)
        return list(line.sessions.values()) if line is not None else []

    def session_count(self) -> int:
        return sum(len(line.sessions) for line in self._lines.values())

    def take_presence(self) -> list[tuple[str, frozenset[TerminalId], list[Session]]]:
        """Lines whose presence changed since the last call: (line, online, sessions)."""
        out = []
        for line_id in sorted(self._dirty_presence):
            line = self._lines.get(line_id)
            if line is not None:
                out.append((line_id, self.online(line_id), list(line.sessions.values())))
        self._dirty_presence.clear()
        return out

    # --- envelopes ---------------------------------------------------------------------

    def submit(self, session: Session, data: bytes, now: float) -> Routed | Refused:
        """Check an envelope a session sent and route it to its line's recipient(s).

        Checks, cheapest first: the session's rate, the size, the encoding, the line, that
        the sender is the session's terminal, the signature and the sender's and recipient's
        membership, the sequence number, the recipient's queue. A flood, a malformed,
        oversized, misrouted or forged envelope raises its specific error (the connection
        is to be closed); a replay, an unknown recipient or a full queue returns
        :class:`Refused` (the connection stays open)."""
        if session.closed:
            raise StateError("session is closed")
        if not session.bucket.take(now):
            raise RateLimited(f"{session.terminal_id} exceeds {self.limits.rate_per_s}/s")
        envelope = Envelope.from_bytes(data, self.limits.max_envelope_size)
        line = self._lines[session.line_id]
        if envelope.line_id != session.line_id:
            raise MisroutedEnvelope("envelope is for another line", reason="wrong_line")
        if envelope.sender != session.terminal_id:
            raise MisroutedEnvelope(
                f"{session.terminal_id} sent an envelope in the name of {envelope.sender}",
                reason="sender_mismatch",
            )
        try:
            envelope.verify(line.index)
        except UnknownMember as exc:  # the sender: cannot happen for a current session
            raise MisroutedEnvelope(str(exc), reason="sender_mismatch") from exc
        except UnknownRecipient as exc:
            return Refused(envelope, exc)
        try:
            line.tracker.check(envelope.sender, envelope.seq)
        except ReplayError as exc:
            return Refused(envelope, exc)
        if envelope.recipient is not None:
            recipients: list[TerminalId] = [envelope.recipient]
            if envelope.recipient == envelope.sender:
                return Refused(
                    envelope, UnknownRecipient("an envelope to its own sender", reason="misrouted")
                )
            mailbox = line.mailboxes.get(envelope.recipient)
            if mailbox is not None and len(mailbox.entries) >= self.limits.max_queue:
                return Refused(envelope, QueueFull(f"the queue of {envelope.recipient} is full"))
        else:
            # charter ids, checked by the charter
            recipients = [TerminalId(t) for t in line.index.members if t != envelope.sender]
        line.tracker.record(envelope.sender, envelope.seq)
        envelope_id = self._next_envelope
        self._next_envelope += 1
        deliveries: list[Pending] = []
        dropped: list[tuple[TerminalId, str]] = []
        wake: list[Session] = []
        for recipient in recipients:
            mailbox = line.mailboxes.get(recipient)
            if mailbox is None:
                mailbox = line.mailboxes[recipient] = _Mailbox()
            if len(mailbox.entries) >= self.limits.max_queue:
                dropped.append((recipient, QueueFull.reason))
                continue
            pending = Pending(
                delivery_id=self._next_delivery,
                envelope_id=envelope_id,
                line_id=session.line_id,
                recipient=recipient,
                sender=envelope.sender,
                seq=envelope.seq,
                accepted_at=now,
                data=envelope.raw,
            )
            self._next_delivery += 1
            mailbox.entries.append(pending)
            self._nonempty.add((session.line_id, recipient))
            deliveries.append(pending)
            target = line.sessions.get(recipient)
            if target is not None:
                wake.append(target)
        return Routed(envelope, envelope_id, tuple(deliveries), tuple(dropped), tuple(wake))

    def take(self, session: Session, max_n: int = 64) -> list[Pending]:
        """The next mailbox entries to send on ``session``, in order; marks them sent."""
        if session.closed:
            return []
        line = self._lines.get(session.line_id)
        if line is None or line.sessions.get(session.terminal_id) is not session:
            return []
        mailbox = line.mailboxes.get(session.terminal_id)
        if mailbox is None or mailbox.sent >= len(mailbox.entries):
            return []
        out: list[Pending] = []
        entries = mailbox.entries
        i = mailbox.sent
        while i < len(entries) and len(out) < max_n:
            out.append(entries[i])
            i += 1
        mailbox.sent = i
        return out

    def ack(self, session: Session, upto: int, now: float) -> list[Pending]:
        """The terminal has processed every delivery up to ``upto``: drop them. Only
        entries already sent on this session can be acknowledged."""
        if not session.ack_bucket.take(now):
            raise RateLimited(f"{session.terminal_id} sends acknowledgements too fast")
        line = self._lines.get(session.line_id)
        if line is None or line.sessions.get(session.terminal_id) is not session:
            return []
        mailbox = line.mailboxes.get(session.terminal_id)
        if mailbox is None:
            return []
        removed: list[Pending] = []
        entries = mailbox.entries
        while mailbox.sent > 0 and entries and entries[0].delivery_id <= upto:
            removed.append(entries.popleft())
            mailbox.sent -= 1
        self._maybe_empty(session.line_id, session.terminal_id, mailbox)
        return removed

    def _drop_upto(
        self, line_id: str, terminal_id: str, mailbox: _Mailbox, upto: int
    ) -> list[Pending]:
        entries = mailbox.entries
        dropped: list[Pending] = []
        while entries and entries[0].delivery_id <= upto:
            dropped.append(entries.popleft())
        mailbox.sent = min(mailbox.sent, len(entries))
        self._maybe_empty(line_id, terminal_id, mailbox)
        return dropped

    def _maybe_empty(self, line_id: str, terminal_id: str, mailbox: _Mailbox) -> None:
        if not mailbox.entries:
            self._nonempty.discard((line_id, terminal_id))
            line = self._lines[line_id]
            if terminal_id not in line.sessions:
                line.mailboxes.pop(terminal_id, None)

    def expire(self, now: float) -> list[Pending]:
        """Drop mailbox entries older than the window; returns them."""
        cutoff = now - self.limits.window_s
        expired: list[Pending] = []
        for line_id, terminal_id in list(self._nonempty):
            mailbox = self._lines[line_id].mailboxes.get(terminal_id)
            if mailbox is None:
                self._nonempty.discard((line_id, terminal_id))
                continue
            entries = mailbox.entries
            while entries and entries[0].accepted_at <= cutoff:
                expired.append(entries.popleft())
                if mailbox.sent > 0:
                    mailbox.sent -= 1
            self._maybe_empty(line_id, terminal_id, mailbox)
        return expired

    def pending(self, line_id: str, terminal_id: str) -> list[Pending]:
        line = self._lines.get(line_id)
        mailbox = line.mailboxes.get(terminal_id) if line is not None else None
        return list(mailbox.entries) if mailbox is not None else []

    def pending_count(self) -> int:
        return sum(
            len(mb.entries) for line in self._lines.values() for mb in line.mailboxes.values()
        )

    def last_seq(self, line_id: str, terminal_id: str) -> int | None:
        line = self._lines.get(line_id)
        return line.tracker.highest(terminal_id) if line is not None else None

    # --- restore -----------------------------------------------------------------------

    def next_ids(self) -> tuple[int, int]:
        """The next (delivery id, envelope id): persisted so that ids never repeat."""
        return self._next_delivery, self._next_envelope

    def advance_ids(self, next_delivery: int, next_envelope: int) -> None:
        self._next_delivery = max(self._next_delivery, next_delivery)
        self._next_envelope = max(self._next_envelope, next_envelope)

    def restore(
        self,
        pending: Iterable[Pending],
        last_seqs: Mapping[tuple[str, str], int],
    ) -> list[Pending]:
        """Load what the store kept (after a restart). Entries for lines or terminals no
        longer served are returned (to be deleted). Call after :meth:`set_charter`."""
        stale: list[Pending] = []
        for (line_id, sender), seq in last_seqs.items():
            line = self._lines.get(line_id)
            if line is not None and sender in line.index.members:
                line.tracker.record(sender, seq)
        for p in sorted(pending, key=lambda p: p.delivery_id):
            line = self._lines.get(p.line_id)
            if line is None or p.recipient not in line.index.members:
                stale.append(p)
                continue
            mailbox = line.mailboxes.get(p.recipient)
            if mailbox is None:
                mailbox = line.mailboxes[p.recipient] = _Mailbox()
            mailbox.entries.append(p)
            self._nonempty.add((p.line_id, p.recipient))
            self._next_delivery = max(self._next_delivery, p.delivery_id + 1)
            self._next_envelope = max(self._next_envelope, p.envelope_id + 1)
        return stale
