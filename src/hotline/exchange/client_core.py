"""The exchange client's protocol core: every decision, no I/O, one clock.

::

    core = ClientCore(config, charter=signed, terminal_id=tid, key=key,
                      endpoints=make_endpoints(url, None, (), signed), now=now)
    core.start(now)
    action = core.next_action()          # Connect(endpoint, attempt): open a WebSocket
    core.connection_made(attempt, now)   # ... or connection_failed(attempt, error, now)
    core.receive_frame(data, now)        # every binary message the exchange sends
    for data in core.frames_to_send(now): ...   # write them, in order
    deadline = core.get_timer()          # call handle_timer(now) then
    event = core.next_event()            # EnvelopeReceived | Refusal | ConnectionChanged ...

The core holds what the terminal decides about the exchange: the handshake (challenge,
hello, welcome), what it accepts from a delivery (the envelope parses, is for this line
and this terminal, its sender is a terminal of the charter, the signature is the
sender's, it is fresh, and its sequence number is new within a reorder window of
:attr:`ClientConfig.reorder_window`), the outbox (envelopes wait until the exchange says
``accepted``, and are sent again on the next connection), acknowledgements (once the
application has taken a delivery from :meth:`ClientCore.next_event`), pacing to the
exchange's advertised rate, charter pushes, every refusal counted by a reason from a
fixed set, and the connection policy: which exchange to connect to next and when
(backoff, the charter's exchanges in order, probing the first while on a fallback).

It asks the adapter for I/O through :meth:`ClientCore.next_action` (:class:`Connect`,
:class:`Probe`, :class:`Disconnect`) and is told what happened (``connection_made``,
``connection_failed``, ``connection_closed``, ``probe_result``). It reads one clock, the
``now`` passed to every call (monotonic seconds); envelope timestamps are wall-clock
milliseconds, computed as ``now + wall_offset_s`` (given at construction and by
:meth:`ClientCore.set_wall_offset`). Randomness (backoff jitter) comes from the ``rng``
given. ``client.py`` is the aiohttp adapter; ``client_events.py`` holds the events, actions and
endpoints.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from hotline.charter import SignedCharter
from hotline.envelope import (
    DEFAULT_MAX_ENVELOPE_SIZE,
    Envelope,
    SequenceCounter,
    SequenceTracker,
)
from hotline.errors import (
    AuthenticationError,
    DuplicateTerminal,
    ExchangeUnavailable,
    FrameError,
    HotlineError,
    MisroutedEnvelope,
    QueueFull,
    StateError,
    TLSPinMismatch,
    TooLarge,
    UnknownMember,
    UsageError,
)
from hotline.exchange.client_events import (
    EXCHANGE_REFUSALS,
    Action,
    CharterUpdated,
    ClientEvent,
    ClientState,
    Connect,
    ConnectionChanged,
    Disconnect,
    Endpoint,
    EnvelopeReceived,
    EnvelopeRejected,
    PresenceChanged,
    Probe,
    Refusal,
    close_error,
    close_reason,
    make_endpoints,
)
from hotline.exchange.frames import (
    CHARTER_PUSH_COST,
    FRAME_OVERHEAD,
    Accepted,
    Ack,
    AdvertisedLimits,
    Challenge,
    CharterFrame,
    Deliver,
    Hello,
    Presence,
    Reject,
    Send,
    Welcome,
    auth_message,
    decode_server_frame,
    encode_frame,
)
from hotline.exchange.routing import TokenBucket
from hotline.ids import TerminalId
from hotline.keys import SigningKey
from hotline.logs import event
from hotline.ratelog import LogGate, clip

__all__ = [
    "EXCHANGE_REFUSALS",
    "MAX_FRAME",
    "PACE_MARGIN",
    "REASON_BACK_TO_PRIMARY",
    "REORDER_WINDOW",
    "Action",
    "CharterUpdated",
    "ClientConfig",
    "ClientCore",
    "ClientEvent",
    "ClientState",
    "Connect",
    "ConnectionChanged",
    "Disconnect",
    "Endpoint",
    "EnvelopeReceived",
    "EnvelopeRejected",
    "LinkState",
    "PresenceChanged",
    "Probe",
    "Refusal",
    "close_error",
    "close_reason",
    "make_endpoints",
]

logger = logging.getLogger("hotline.exchange.client")

#: pace at this share of the exchange's advertised rate, to stay clear of its limit
PACE_MARGIN = 0.9
#: envelopes from one sender that may arrive out of order (each still exactly once)
REORDER_WINDOW = 64
REASON_BACK_TO_PRIMARY = "back_to_primary"
#: the largest frame read from an exchange (an envelope of 1 MiB and the frame around it)
MAX_FRAME = (1 << 20) + FRAME_OVERHEAD
#: backoff doubles at most this many times
MAX_BACKOFF_STEPS = 30


@dataclass(frozen=True)
class ClientConfig:
    """How a terminal's exchange client behaves. Durations in seconds."""

    #: the first wait before reconnecting after a failure (then doubled, with jitter)
    reconnect_min_s: float = 0.2
    #: the longest wait between two connection attempts
    reconnect_max_s: float = 4.0
    #: how long the exchange has to answer a connection with a challenge and a welcome
    connect_timeout_s: float = 10.0
    #: WebSocket ping interval (used by the adapter)
    heartbeat_s: float = 20.0
    #: while on a fallback exchange, ask the first whether it answers this often (0: never)
    primary_probe_s: float = 3.0
    #: envelopes waiting to be stored by the exchange; :meth:`ClientCore.send` refuses more
    max_outbox: int = 1000
    #: events waiting for the application; the adapter stops reading the exchange above it
    max_events: int = 10_000
    #: a delivered envelope older than this is refused as stale
    max_age_s: float = 300.0
    #: a delivered envelope dated further ahead than this is refused
    max_future_s: float = 60.0
    #: deliveries taken are acknowledged together, this long after the first of them
    ack_delay_s: float = 0.05
    #: pace writes to the exchange's advertised rate (:data:`PACE_MARGIN` of it)
    pace: bool = True
    #: envelopes per sender that may arrive out of order (each still taken once)
    reorder_window: int = REORDER_WINDOW

    def __post_init__(self) -> None:
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise UsageError("reconnect_min_s must be positive and at most reconnect_max_s")
        if self.max_outbox < 1 or self.max_events < 1 or self.reorder_window < 0:
            raise UsageError("max_outbox and max_events must be positive")


class LinkState(Enum):
    IDLE = "idle"  #: not started
    WAITING = "waiting"  #: no connection; the next attempt is due at a time
    CONNECTING = "connecting"  #: the adapter is opening a connection
    HANDSHAKE = "handshake"  #: open; waiting for the challenge, then the welcome
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True)
class _Item:
    event: ClientEvent
    delivery_id: int | None = None


class ClientCore:
    """A terminal's side of the exchange protocol, without I/O. See the module docstring."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        charter: SignedCharter,
        terminal_id: TerminalId | str,
        key: SigningKey,
        endpoints: Sequence[Endpoint],
        now: float,
        wall_offset_s: float = 0.0,
        state: ClientState | None = None,
        accept_charter: Callable[[SignedCharter], SignedCharter] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        charter.verify()
        try:
            member = charter.charter.terminal(terminal_id)
        except UnknownMember as exc:
            raise UsageError(f"{terminal_id} is not a terminal of line {charter.line_id}") from exc
        if member.identity_key != key.public:
            raise UsageError(f"this key is not the identity key of {terminal_id} in the charter")
        if not endpoints:
            raise UsageError("no exchange to connect to")
        self.config = config
        self.terminal_id = TerminalId(terminal_id)
        self.charter = charter
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._key = key
        self._accept_charter = accept_charter
        self._rng = rng or random.Random()  # noqa: S311 (backoff jitter, not a secret)
        self._now = now
        self._wall_offset = wall_offset_s
        state = state or ClientState()
        self._counter = SequenceCounter(int(self._wall_ms(now)), floor=state.last_seq)
        self._tracker = SequenceTracker(state.seen, window=config.reorder_window)
        self._taken: dict[str, int] = dict(state.seen)
        self._store_id = state.store_id
        self._delivered = state.delivered
        self._acked = state.delivered
        self._events: deque[_Item] = deque()
        self._actions: deque[Action] = deque()
        self._control: list[bytes] = []  # the hello, written before anything else
        self._outbox: deque[Envelope] = deque()
        self._sent = 0
        self._limits = AdvertisedLimits(DEFAULT_MAX_ENVELOPE_SIZE, 50.0, 200, 60.0)
        self._bucket: TokenBucket | None = None
        self._online: frozenset[str] = frozenset()
        self._state = LinkState.IDLE
        self._current = 0
        self._attempt = 0
        self._connections = 0
        self._backoff = 0
        self._retry_at: float | None = None
        self._handshake_deadline: float | None = None
        self._challenged = False
        self._probe_at: float | None = None
        self._probing = False
        self._ack_due: float | None = None
        self._charter_push: bytes | None = None
        self._reported: tuple[bool, str] | None = None
        #: every failed connection attempt, in order; the adapter raises the first at start
        self.failures = 0
        self.last_failure: HotlineError | None = None
        self.stats: Counter[str] = Counter()
        # refusals are counted exactly; logged at most 1/s each, on this core's clock
        self._log_gate = LogGate(clock=lambda: self._now)

    # --- what the application reads -----------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def attempt(self) -> int:
        """The number of the current (or last) connection attempt."""
        return self._attempt

    @property
    def endpoint(self) -> Endpoint:
        """The exchange in use now (or tried next)."""
        return self.endpoints[self._current]

    @property
    def on_primary(self) -> bool:
        return self._current == 0

    @property
    def connected(self) -> bool:
        return self._state is LinkState.CONNECTED

    @property
    def closed(self) -> bool:
        return self._state is LinkState.CLOSED

    @property
    def online(self) -> frozenset[str]:
        return self._online

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    @property
    def receiving_paused(self) -> bool:
        """True while the application has ``max_events`` events to take: the adapter reads
        nothing more from the exchange until it has taken some (backpressure)."""
        return len(self._events) >= self.config.max_events

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def client_state(self) -> ClientState:
        """A snapshot to persist (see :class:`ClientState`)."""
        return ClientState(
            last_seq=self._counter.last,
            seen=dict(self._taken),
            store_id=self._store_id,
            delivered=self._delivered,
        )

    def set_wall_offset(self, wall_offset_s: float) -> None:
        """Wall-clock seconds minus ``now`` (the adapter takes it again on each connection)."""
        self._wall_offset = wall_offset_s

    def _wall_ms(self, now: float) -> float:
        return (now + self._wall_offset) * 1000

    # --- the application's requests -----------------------------------------------------

    def start(self, now: float) -> None:
        """Connect to the first exchange at once."""
        if self._state is not LinkState.IDLE:
            raise StateError("the client was already started")
        self._now = now
        self._connect(now)

    def send(self, recipient: str | None, msg_type: str, body: bytes, now: float) -> Envelope:
        """Sign an envelope for ``recipient`` (None: every terminal of the line) and queue
        it. Raises :class:`QueueFull` when the outbox is full, :class:`TooLarge` over the
        exchange's envelope size."""
        self._now = now
        if self._state is LinkState.CLOSED:
            raise StateError("the client is closed")
        if recipient is not None:
            try:
                self.charter.charter.terminal(recipient)
            except UnknownMember as exc:
                raise UsageError(f"{recipient} is not a terminal of the line") from exc
        if len(self._outbox) >= self.config.max_outbox:
            raise QueueFull(f"{len(self._outbox)} envelopes wait to be sent")
        env = Envelope.create(
            self._key,
            line_id=self.charter.line_id,
            sender=self.terminal_id,
            recipient=recipient,
            seq=self._counter.next(),
            timestamp_ms=int(self._wall_ms(now)),
            msg_type=msg_type,
            body=body,
        )
        if len(env.raw) > self._limits.max_envelope_size:
            raise TooLarge(
                f"an envelope of {len(env.raw)} bytes is over the exchange's limit of "
                f"{self._limits.max_envelope_size}"
            )
        self._outbox.append(env)
        self.stats["sent"] += 1
        return env

    def next_event(self, now: float | None = None) -> ClientEvent | None:
        """The next event for the application, or None. A delivery taken (refused ones
        too) is acknowledged to the exchange within ``ack_delay_s`` of ``now`` (default:
        the last time the core was given)."""
        if now is not None:
            self._now = now
        if not self._events:
            return None
        item = self._events.popleft()
        if item.delivery_id is not None and item.delivery_id > self._delivered:
            self._delivered = item.delivery_id
            if self._ack_due is None:
                self._ack_due = self._now + self.config.ack_delay_s
        if isinstance(item.event, EnvelopeReceived):
            env = item.event.envelope
            self._taken[env.sender] = max(env.seq, self._taken.get(env.sender, 0))
            self.stats["delivered"] += 1
        return item.event

    def update_charter(self, signed: SignedCharter) -> None:
        """Adopt a newer charter of the line (verified here) and push it to the exchange."""
        self._adopt(signed)
        self._charter_push = signed.to_file_bytes()

    def close(self, now: float) -> None:
        """Stop: close the connection, connect no more."""
        self._now = now
        if self._state is LinkState.CLOSED:
            return
        if self._state in (LinkState.CONNECTING, LinkState.HANDSHAKE, LinkState.CONNECTED):
            self._actions.append(Disconnect(self._attempt, "closed"))
        was_connected = self.connected
        self._state = LinkState.CLOSED
        if was_connected:
            logger.info("disconnected from %s: closed", self.endpoint.url)
            self._report(False, "closed")

    # --- what the adapter does for the core ----------------------------------------------

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def connection_made(self, attempt: int, now: float) -> None:
        """The WebSocket of ``attempt`` is open (its TLS certificate is the pinned one)."""
        self._now = now
        if attempt != self._attempt or self._state is not LinkState.CONNECTING:
            return
        self._state = LinkState.HANDSHAKE
        self._challenged = False
        self._handshake_deadline = now + self.config.connect_timeout_s

    def connection_failed(self, attempt: int, error: HotlineError, now: float) -> None:
        """The connection of ``attempt`` could not be opened (``error`` translated by the
        adapter: :class:`ExchangeUnavailable`, :class:`TLSPinMismatch`...)."""
        self._now = now
        if attempt != self._attempt or self._state is not LinkState.CONNECTING:
            return
        self._attempt_failed(error, now)

    def connection_closed(self, attempt: int, code: int | None, text: str, now: float) -> None:
        """The connection of ``attempt`` ended (the WebSocket close code and reason text, or
        None and "" when it was lost)."""
        self._now = now
        if attempt != self._attempt:
            return
        if self._state is LinkState.HANDSHAKE:
            self._attempt_failed(close_error(code, close_reason(code, text)), now)
        elif self._state is LinkState.CONNECTED:
            self._drop(close_reason(code, text), now)

    def probe_result(self, answered: bool, now: float) -> None:
        """Whether the first exchange answered the probe that :class:`Probe` asked for."""
        self._now = now
        self._probing = False
        if not self.connected or self.on_primary:
            return
        if not answered:
            self._probe_at = now + self.config.primary_probe_s
            return
        self.stats["back_to_primary"] += 1
        logger.warning(
            "the first exchange %s answers again: moving back from %s",
            self.endpoints[0].url,
            self.endpoint.url,
        )
        self._actions.append(Disconnect(self._attempt, REASON_BACK_TO_PRIMARY))
        self._drop(REASON_BACK_TO_PRIMARY, now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` (and :meth:`frames_to_send`) must be called next."""
        deadlines: list[float] = []
        if self._state is LinkState.WAITING and self._retry_at is not None:
            deadlines.append(self._retry_at)
        elif self._state is LinkState.HANDSHAKE and self._handshake_deadline is not None:
            deadlines.append(self._handshake_deadline)
        elif self._state is LinkState.CONNECTED:
            if self._probe_at is not None and not self._probing:
                deadlines.append(self._probe_at)
            if self._ack_due is not None:
                deadlines.append(self._ack_due)
            if self._bucket is not None and self.config.pace:
                if self._charter_push is not None:
                    deadlines.append(self._now + self._bucket.delay(self._now, self._push_cost))
                if self._sent < len(self._outbox):
                    deadlines.append(self._now + self._bucket.delay(self._now))
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._state is LinkState.WAITING:
            if self._retry_at is not None and now >= self._retry_at:
                self._connect(now)
        elif self._state is LinkState.HANDSHAKE:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._attempt_failed(
                    ExchangeUnavailable(
                        f"{self.endpoint.url} did not complete the handshake within "
                        f"{self.config.connect_timeout_s:g} s"
                    ),
                    now,
                )
        elif self._state is LinkState.CONNECTED and self._probe_due(now):
            self._probing = True
            self._probe_at = None
            self._actions.append(Probe(self.endpoints[0]))

    def _probe_due(self, now: float) -> bool:
        return self._probe_at is not None and not self._probing and now >= self._probe_at

    def receive_frame(self, data: bytes, now: float) -> None:
        """One binary WebSocket message from the exchange of the current connection."""
        self._now = now
        if self._state is LinkState.HANDSHAKE:
            try:
                self._handshake(data, now)
            except HotlineError as exc:
                self._attempt_failed(exc, now)
            return
        if self._state is not LinkState.CONNECTED:
            return
        try:
            frame = decode_server_frame(data, MAX_FRAME)
        except HotlineError as exc:
            self.stats[f"bad_frame_{exc.reason}"] += 1
            logger.warning("the exchange sent a malformed frame: %s", exc)
            self._actions.append(Disconnect(self._attempt, "bad_frame"))
            self._drop("bad_frame", now)
            return
        if isinstance(frame, Deliver):
            self._on_deliver(frame, now)
        elif isinstance(frame, Accepted):
            self.stats["accepted"] += 1
            self._prune_outbox(frame.seq)
        elif isinstance(frame, Reject):
            self._on_reject(frame)
        elif isinstance(frame, Presence):
            self._set_online(frame.online)
        elif isinstance(frame, CharterFrame):
            self._on_charter(frame.data)
        else:
            self.stats["bad_frame_unexpected"] += 1
            self._actions.append(Disconnect(self._attempt, "bad_frame"))
            self._drop("bad_frame", now)

    def frames_to_send(self, now: float) -> list[bytes]:
        """Frames to write now, in order (paced to the exchange's rate)."""
        self._now = now
        out, self._control = self._control, []
        if self._state is not LinkState.CONNECTED:
            return out
        if self._charter_push is not None and self._take(now, self._push_cost):
            data, self._charter_push = self._charter_push, None
            out.append(encode_frame(CharterFrame(data)))
        if self._ack_due is not None and now >= self._ack_due:
            self._ack_due = None
            if self._acked < self._delivered:
                self._acked = self._delivered
                out.append(encode_frame(Ack(self._delivered)))
                self.stats["acks_sent"] += 1
        while self._sent < len(self._outbox) and self._take(now, 1.0):
            out.append(encode_frame(Send(self._outbox[self._sent].raw)))
            self._sent += 1
        return out

    # --- connection policy ----------------------------------------------------------------

    def _connect(self, now: float) -> None:
        self._attempt += 1
        self._state = LinkState.CONNECTING
        self._retry_at = None
        self._actions.append(Connect(self.endpoint, self._attempt))

    def _wait(self, delay: float, now: float) -> None:
        self._state = LinkState.WAITING
        self._retry_at = now + delay
        self._handshake_deadline = None

    def _next_endpoint(self) -> bool:
        """Move to the next exchange; True while the round of exchanges is not over."""
        if len(self.endpoints) == 1:
            return False
        self._current = (self._current + 1) % len(self.endpoints)
        return self._current != 0

    def _attempt_failed(self, exc: HotlineError, now: float) -> None:
        """A connection attempt failed: say so, then the next exchange, or the same after a
        backoff that doubles once per round of exchanges (at most ``reconnect_max_s``)."""
        if self._state is LinkState.HANDSHAKE:
            self._actions.append(Disconnect(self._attempt, exc.reason))
        self._control = []
        self.failures += 1
        self.last_failure = exc
        self.stats[f"connect_failed_{exc.reason}"] += 1
        if isinstance(exc, TLSPinMismatch):
            self.stats["tls_pin_mismatch"] += 1
        self._log_connect_failure(exc)
        self._report(False, exc.reason)
        if exc.reason in EXCHANGE_REFUSALS:
            self._refused_exchange(exc)
        low, high = self.config.reconnect_min_s, self.config.reconnect_max_s
        delay = min(high, low * (2**self._backoff)) * self._rng.uniform(0.5, 1.0)
        if not self._next_endpoint():
            self._backoff = min(self._backoff + 1, MAX_BACKOFF_STEPS)
        self._wait(delay, now)

    def _drop(self, reason: str, now: float) -> None:
        """The connection ended after its welcome: reconnect soon (to the first exchange
        at once when moving back to it, else to the next exchange)."""
        logger.info("disconnected from %s: %s", self.endpoint.url, reason)
        self._bucket = None
        self._probe_at = None
        self._probing = False
        self._backoff = 0
        self._report(False, reason)
        if reason == REASON_BACK_TO_PRIMARY:
            self._current = 0
            self._wait(0.0, now)
        else:
            self._next_endpoint()
            self._wait(self.config.reconnect_min_s * self._rng.uniform(0.5, 1.0), now)

    def _report(self, connected: bool, reason: str) -> None:
        """A :class:`ConnectionChanged` when the state or its reason changed."""
        if self._reported == (connected, reason) and reason != DuplicateTerminal.reason:
            return
        self._reported = (connected, reason)
        self._events.append(_Item(ConnectionChanged(connected, reason)))

    def _log_connect_failure(self, exc: HotlineError) -> None:
        """A refusal that may be an attack or a misconfiguration (a certificate that is not
        the pinned one, an exchange that does not admit us, a second copy of this terminal)
        is a WARNING or above; an exchange that does not answer is INFO (it is retried)."""
        url = self.endpoint.url
        fields = {"url": url, "reason": exc.reason}
        if isinstance(exc, DuplicateTerminal):
            logger.error("%s: %s", url, exc, extra=event("duplicate_terminal", **fields))
        elif exc.reason in EXCHANGE_REFUSALS:
            return  # someone else answers there: _refused_exchange says so
        elif isinstance(exc, AuthenticationError):
            logger.warning(
                "the exchange at %s did not admit us: %s",
                url,
                exc,
                extra=event("exchange_refused", **fields),
            )
        else:
            logger.info(
                "connection to %s failed: %s",
                url,
                exc,
                extra=event("exchange_unreachable", **fields),
            )

    def _refused_exchange(self, exc: HotlineError) -> None:
        """A TLS pin mismatch or a foreign exchange id: someone else answers at the
        exchange's address. Logged at WARNING and reported."""
        url = self.endpoint.url
        name = "tls_pin_mismatch" if isinstance(exc, TLSPinMismatch) else "exchange_id_mismatch"
        logger.warning(
            "refusing the exchange at %s (%s): %s",
            url,
            exc.reason,
            exc,
            extra=event(name, url=url, reason=exc.reason),
        )
        self._events.append(_Item(Refusal(exc.reason, clip(f"the exchange at {url}: {exc}"))))

    # --- the handshake --------------------------------------------------------------------

    def _handshake(self, data: bytes, now: float) -> None:
        frame = decode_server_frame(data, MAX_FRAME)
        if not self._challenged:
            if not isinstance(frame, Challenge):
                raise FrameError("the exchange did not start with a challenge")
            pin = self.endpoint.tls_fingerprint
            if pin is not None and frame.exchange_id != pin:
                raise AuthenticationError(
                    "the exchange presents another exchange's id", reason="exchange_id"
                )
            if frame.store_id != self._store_id:
                self._store_id = frame.store_id  # another store: its delivery ids are new
                self._delivered = self._acked = 0
            line_id = self.charter.line_id
            signature = self._key.sign(
                auth_message(frame.challenge, frame.exchange_id, line_id, self.terminal_id)
            )
            self._control.append(
                encode_frame(
                    Hello(
                        line_id, self.terminal_id, signature, self._delivered, self.charter.version
                    )
                )
            )
            self._limits = frame.limits
            self._challenged = True
            return
        if not isinstance(frame, Welcome) or frame.terminal_id != self.terminal_id:
            raise FrameError("the exchange did not welcome this terminal")
        self._bucket = TokenBucket(
            self._limits.rate_per_s * PACE_MARGIN, max(1, self._limits.burst - 2), now
        )
        if frame.last_seq is not None:
            self._prune_outbox(frame.last_seq)
        self._sent = 0
        self._acked = self._delivered  # the hello told the exchange
        self._ack_due = None
        self._state = LinkState.CONNECTED
        self._handshake_deadline = None
        self._connections += 1
        if self._attempt > 1:
            self.stats["reconnects"] += 1
        if frame.charter_version < self.charter.version:
            self._charter_push = self.charter.to_file_bytes()
        if not self.on_primary and self.config.primary_probe_s > 0:
            self._probe_at = now + self.config.primary_probe_s
        logger.info("connected to %s as %s", self.endpoint.url, self.terminal_id)
        self._report(True, "connected")
        self._set_online(frame.online)

    # --- what the exchange delivers ---------------------------------------------------------

    def _on_deliver(self, frame: Deliver, now: float) -> None:
        self.stats["received"] += 1
        try:
            env = Envelope.from_bytes(frame.envelope, self._limits.max_envelope_size)
            if env.recipient is not None and env.recipient != self.terminal_id:
                raise MisroutedEnvelope("an envelope for another terminal")
            if env.sender == self.terminal_id:
                raise MisroutedEnvelope("an envelope from this terminal itself")
            env.verify(self.charter)
            env.check_fresh(
                int(self._wall_ms(now)),
                max_age_ms=int(self.config.max_age_s * 1000),
                max_future_ms=int(self.config.max_future_s * 1000),
            )
            self._tracker.accept(env)
        except HotlineError as exc:
            self.stats[f"rejected_{exc.reason}"] += 1
            if self._log_gate.allow(f"rejected_{exc.reason}")[0]:  # counted exactly in stats
                logger.warning(
                    "refused a delivery from the exchange (%s): %s",
                    exc.reason,
                    exc,
                    extra=event("delivery_refused", reason=exc.reason),
                )
            refusal = Refusal(f"delivery_{exc.reason}", clip(f"a delivery: {exc}"))
            self._events.append(_Item(refusal, frame.delivery_id))
            return
        self._events.append(_Item(EnvelopeReceived(env), frame.delivery_id))

    def _on_reject(self, frame: Reject) -> None:
        if frame.seq is None and frame.reason == DuplicateTerminal.reason:
            self.stats["duplicate_terminal"] += 1
            logger.error(
                "the exchange refused another connection with this terminal's identity, "
                "which kept replacing this one: two copies of this terminal folder are "
                "running (here and elsewhere); stop one",
                extra=event("duplicate_terminal", url=self.endpoint.url, reason=frame.reason),
            )
            self._report(True, frame.reason)
            return
        # frames.decode_server_frame has mapped the reason to the protocol's fixed set
        if frame.seq is None:
            self.stats[f"charter_refused_{frame.reason}"] += 1
            if self._log_gate.allow(f"charter_refused_{frame.reason}")[0]:
                logger.warning(
                    "the exchange refused our charter: %s",
                    frame.reason,
                    extra=event("charter_refused_by_exchange", reason=frame.reason),
                )
            self._events.append(_Item(EnvelopeRejected(None, frame.reason)))
            return
        self.stats[f"refused_{frame.reason}"] += 1
        recipient = frame.recipient
        if recipient is not None and recipient not in self._members():
            recipient = None  # not a terminal of the line: nothing to report it as
        if frame.recipient is None:
            for i, env in enumerate(self._outbox):
                if env.seq == frame.seq:
                    del self._outbox[i]
                    if i < self._sent:
                        self._sent -= 1
                    break
        self._events.append(_Item(EnvelopeRejected(frame.seq, frame.reason, recipient)))

    def _on_charter(self, data: bytes) -> None:
        try:
            signed = SignedCharter.from_file_bytes(data)
            if signed.version <= self.charter.version:
                if signed.version < self.charter.version:
                    self._charter_push = self.charter.to_file_bytes()
                return
            self._adopt(signed)
        except HotlineError as exc:
            self.stats[f"charter_rejected_{exc.reason}"] += 1
            if self._log_gate.allow(f"charter_rejected_{exc.reason}")[0]:
                logger.warning(
                    "refused a charter from the exchange: %s",
                    exc,
                    extra=event("charter_refused", reason=exc.reason),
                )
            self._events.append(_Item(Refusal(f"charter_{exc.reason}", clip(f"a charter: {exc}"))))
            return
        self._events.append(_Item(CharterUpdated(self.charter)))

    def _adopt(self, signed: SignedCharter) -> None:
        if signed.line_id != self.charter.line_id:
            raise UsageError("a charter of another line")
        if signed.version <= self.charter.version:
            raise UsageError(f"charter version {signed.version} is not newer")
        signed.verify()
        if self._accept_charter is not None:
            signed = self._accept_charter(signed)
        self.charter = signed

    def _members(self) -> set[str]:
        return {t.terminal_id for t in self.charter.charter.terminals}

    def _set_online(self, online: frozenset[str]) -> None:
        members = self._members()
        online = frozenset(t for t in online if t in members)
        if online != self._online:
            self._online = online
            self._events.append(_Item(PresenceChanged(online)))

    # --- writing ----------------------------------------------------------------------------

    @property
    def _push_cost(self) -> float:
        return min(CHARTER_PUSH_COST, self._bucket.burst if self._bucket else 1.0)

    def _prune_outbox(self, upto: int) -> None:
        while self._outbox and self._outbox[0].seq <= upto:
            self._outbox.popleft()
            if self._sent > 0:
                self._sent -= 1

    def _take(self, now: float, cost: float) -> bool:
        if not self.config.pace or self._bucket is None:
            return True
        return self._bucket.take(now, cost)
