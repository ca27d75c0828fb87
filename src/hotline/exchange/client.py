"""The client library a terminal uses to talk through an exchange.

::

    client = ExchangeClient(url, charter=signed, terminal_id="sochi-principal", key=key)
    await client.start()                       # connect + authenticate, then stay connected
    env = await client.send("wh-principal", "call.offer", body)   # None: every terminal
    event = await client.next_event()          # EnvelopeReceived | PresenceChanged | ...
    await client.close()

The exchange is not trusted. Every envelope received is checked again here: it parses, it
is for this line and for this terminal (or for all), its sender is a terminal of the charter,
the signature is the sender's, it is fresh, and its sequence number is above the last one
seen from that sender (so nothing is processed twice). TLS (wss) is pinned to the
fingerprint in the charter; no certificate authority is trusted. Plain ws is allowed only to
a loopback address.

Reconnection: after a drop the client reconnects with exponential backoff (at most 4 s
apart) and resumes. Given several exchanges (the charter's, in order), it tries the next at
once when one does not answer, and while on a fallback it probes the first every few seconds
and moves back to it as soon as it answers, so that the line's terminals meet on one.
Envelopes it sends wait in an outbox until the exchange reports them stored (``accepted``)
and are sent again on the next connection if not; the exchange tells at connect time the
highest sequence number it already has, so nothing is sent twice. Deliveries are
acknowledged once the application has taken them from :meth:`ExchangeClient.next_event`;
the exchange keeps and resends the rest (within its window), and duplicates are dropped by
sequence number. A terminal that also persists :attr:`ExchangeClient.state` resumes exactly
across its own restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Union
from urllib.parse import urlsplit, urlunsplit

import aiohttp

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
    LimitExceeded,
    MisroutedEnvelope,
    QueueFull,
    StateError,
    TLSPinMismatch,
    TooLarge,
    UnknownMember,
    UsageError,
)
from hotline.exchange import tls
from hotline.exchange.frames import (
    CHARTER_PUSH_COST,
    CLOSE_DUPLICATE,
    CLOSE_POLICY,
    CLOSE_REMOVED,
    CLOSE_SUPERSEDED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    FRAME_OVERHEAD,
    WS_PATH,
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
    ServerFrame,
    Welcome,
    auth_message,
    decode_server_frame,
    encode_frame,
    is_loopback,
    known_reason,
)
from hotline.exchange.routing import TokenBucket
from hotline.keys import SigningKey
from hotline.logs import event
from hotline.ratelog import LogGate, clip

logger = logging.getLogger("hotline.exchange.client")

#: pace at this share of the exchange's advertised rate, to stay clear of its limit
PACE_MARGIN = 0.9


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeReceived:
    """An envelope for this terminal, verified against the charter, in order, once."""

    envelope: Envelope


@dataclass(frozen=True)
class PresenceChanged:
    """The terminals of the line now online (this one included), as the exchange says."""

    online: frozenset[str]


@dataclass(frozen=True)
class CharterUpdated:
    """A newer charter of the line, verified (and accepted by ``accept_charter``)."""

    charter: SignedCharter


@dataclass(frozen=True)
class ConnectionChanged:
    connected: bool
    #: ``connected``, or why the connection ended (the exchange's close reason, ``closed``...)
    reason: str


@dataclass(frozen=True)
class EnvelopeRejected:
    """The exchange refused an envelope this terminal sent (``seq``), or refused it only for
    ``recipient`` (a broadcast to a full queue); ``seq`` None: the charter it pushed. The
    reason is one of ``frames.PROTOCOL_REASONS`` or ``"unlisted"``; ``recipient`` is a
    terminal of the charter or None."""

    seq: int | None
    reason: str
    recipient: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Something this terminal refused from the exchange: a delivery
    (``delivery_<reason>``: replay, bad_signature, stale, misrouted...), a charter
    (``charter_<reason>``), or the exchange itself on a reconnection (``tls_pin``,
    ``exchange_id``). Counted in :attr:`ExchangeClient.stats` too."""

    reason: str
    #: what was refused, without contents (at most ``ratelog.MAX_DETAIL`` characters)
    detail: str


ClientEvent = Union[  # noqa: UP007
    EnvelopeReceived,
    PresenceChanged,
    CharterUpdated,
    ConnectionChanged,
    EnvelopeRejected,
    Refusal,
]

#: refusals of the exchange itself: logged at WARNING on every reconnection attempt
_EXCHANGE_REFUSALS = frozenset({"tls_pin", "exchange_id"})


@dataclass
class ClientState:
    """What a terminal may persist to resume exactly across its own restarts."""

    #: the last sequence number this terminal used (the next ones are higher)
    last_seq: int = 0
    #: per sender, the highest sequence number the application has taken
    seen: dict[str, int] = field(default_factory=dict)
    #: the exchange store that :attr:`delivered` refers to
    store_id: str | None = None
    #: the highest delivery id the application has taken
    delivered: int = 0


@dataclass(frozen=True)
class _Item:
    event: ClientEvent | None
    delivery_id: int | None = None


_CLOSED = _Item(None)


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", "")).lower()


def _close_error(code: int | None, reason: str) -> HotlineError:
    if code == CLOSE_DUPLICATE:
        return DuplicateTerminal(
            "the exchange refused this connection: another connection with this terminal's "
            "identity is online and they kept replacing each other. Two copies of this "
            "terminal folder are running (here and elsewhere): stop one."
        )
    if code == CLOSE_TRY_LATER:
        return LimitExceeded(f"the exchange refused the connection: {reason}", reason=reason)
    if code in (CLOSE_POLICY, CLOSE_TOO_BIG):
        return AuthenticationError(f"the exchange refused us: {reason}", reason=reason or "auth")
    return ExchangeUnavailable(f"the exchange closed the connection ({code}) {reason}".strip())


REASON_BACK_TO_PRIMARY = "back_to_primary"
#: envelopes from one sender that may arrive out of order (each still exactly once)
REORDER_WINDOW = 64


@dataclass(frozen=True)
class _Endpoint:
    """One exchange a client may use: its URL and pinned certificate."""

    url: str
    tls_fingerprint: str | None
    fingerprint: bytes | None

    @classmethod
    def make(cls, url: str, tls_fingerprint: str | None, charter: SignedCharter) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise UsageError(f"exchange URL {url!r}: expected ws:// or wss://host:port")
        if parts.path in ("", "/"):
            url = urlunsplit((parts.scheme, parts.netloc, WS_PATH, "", ""))
        fingerprint: bytes | None = None
        if parts.scheme == "wss":
            if tls_fingerprint is None:
                for endpoint in charter.charter.exchanges:
                    if _base_url(endpoint.url) == _base_url(url) and endpoint.tls_fingerprint:
                        tls_fingerprint = endpoint.tls_fingerprint
            if tls_fingerprint is None:
                raise UsageError(
                    f"no pinned TLS fingerprint for {_base_url(url)}: the charter lists none "
                    "and none was given"
                )
            fingerprint = tls.parse_fingerprint(tls_fingerprint)
        elif not is_loopback(parts.hostname):
            raise UsageError(f"plain ws:// is only allowed to a loopback address, not {url}")
        return cls(url, tls_fingerprint, fingerprint)


class ExchangeClient:
    """A terminal's connection to an exchange (the first of the charter's that answers).
    See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        charter: SignedCharter,
        terminal_id: str,
        key: SigningKey,
        tls_fingerprint: str | None = None,
        fallbacks: Sequence[tuple[str, str | None]] = (),
        primary_probe_s: float = 3.0,
        state: ClientState | None = None,
        accept_charter: Callable[[SignedCharter], SignedCharter] | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 4.0,
        connect_timeout_s: float = 10.0,
        heartbeat_s: float = 20.0,
        max_outbox: int = 1000,
        max_events: int = 10_000,
        max_age_s: float = 300.0,
        max_future_s: float = 60.0,
        ack_delay_s: float = 0.05,
        pace: bool = True,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        charter.verify()
        try:
            member = charter.charter.terminal(terminal_id)
        except UnknownMember as exc:
            raise UsageError(f"{terminal_id} is not a terminal of line {charter.line_id}") from exc
        if member.identity_key != key.public:
            raise UsageError(f"this key is not the identity key of {terminal_id} in the charter")
        #: the DER certificate the exchange presented at the last TLS connection (pinned)
        self.peer_certificate: bytes | None = None
        self._endpoints = [_Endpoint.make(url, tls_fingerprint, charter)]
        for extra_url, extra_fingerprint in fallbacks:
            endpoint = _Endpoint.make(extra_url, extra_fingerprint, charter)
            if all(endpoint.url != e.url for e in self._endpoints):
                self._endpoints.append(endpoint)
        self._current = 0
        self._primary_probe_s = primary_probe_s
        self.terminal_id = terminal_id
        self.charter = charter
        self._key = key
        self._accept_charter = accept_charter
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._connect_timeout = connect_timeout_s
        self._heartbeat = heartbeat_s
        self._max_outbox = max_outbox
        self._max_age_ms = int(max_age_s * 1000)
        self._max_future_ms = int(max_future_s * 1000)
        self._ack_delay = ack_delay_s
        self._pace = pace
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (backoff jitter, not a secret)
        state = state or ClientState()
        self._counter = SequenceCounter(int(clock() * 1000), floor=state.last_seq)
        self._tracker = SequenceTracker(state.seen, window=REORDER_WINDOW)
        self._taken: dict[str, int] = dict(state.seen)
        self._store_id = state.store_id
        self._delivered = state.delivered
        self._acked = state.delivered
        self._events: asyncio.Queue[_Item] = asyncio.Queue(max_events)
        self._outbox: deque[Envelope] = deque()
        self._sent = 0
        self._wake = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._limits = AdvertisedLimits(DEFAULT_MAX_ENVELOPE_SIZE, 50.0, 200, 60.0)
        self._bucket: TokenBucket | None = None
        self._online: frozenset[str] = frozenset()
        self._connected = False
        self._closed = False
        self._runner: asyncio.Task[None] | None = None
        self._io: list[asyncio.Task[None]] = []
        self._ack_due: float | None = None
        self._charter_push: bytes | None = None
        self._close_reason: str | None = None
        self._max_frame = (1 << 20) + FRAME_OVERHEAD
        self.stats: Counter[str] = Counter()
        self._log_gate = LogGate()  # refusals are counted exactly; logged at most 1/s each

    # --- public -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The exchange this client uses now (or tries next)."""
        return self._endpoints[self._current].url

    @property
    def tls_fingerprint(self) -> str | None:
        return self._endpoints[self._current].tls_fingerprint

    @property
    def endpoints(self) -> list[str]:
        """Every exchange this client may use, in order of preference."""
        return [e.url for e in self._endpoints]

    @property
    def on_primary(self) -> bool:
        return self._current == 0

    @property
    def online(self) -> frozenset[str]:
        return self._online

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def state(self) -> ClientState:
        """A snapshot to persist (see :class:`ClientState`)."""
        return ClientState(
            last_seq=self._counter.last,
            seen=dict(self._taken),
            store_id=self._store_id,
            delivered=self._delivered,
        )

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    async def start(self, *, require_connection: bool = True) -> None:
        """Connect and authenticate, then keep the connection alive in the background.

        Raises the first attempt's error (:class:`ExchangeUnavailable`,
        :class:`AuthenticationError`, :class:`TLSPinMismatch`...) unless
        ``require_connection`` is False, in which case it keeps trying in the background."""
        if self._runner is not None or self._closed:
            raise StateError("the client was already started")
        self._http = aiohttp.ClientSession()
        first_error: HotlineError | None = None
        try:
            await self._connect()
        except HotlineError as exc:
            if require_connection:
                await self._http.close()
                self._http = None
                raise
            first_error = exc
        self._runner = asyncio.create_task(self._run(first_error))

    async def send(self, recipient: str | None, msg_type: str, body: bytes) -> Envelope:
        """Sign an envelope for ``recipient`` (None: every terminal of the line) and queue
        it. It is written at once when connected (paced to the exchange's rate), else on
        reconnection. Raises :class:`QueueFull` when the outbox is full, :class:`TooLarge`
        over the exchange's envelope size."""
        if self._closed:
            raise StateError("the client is closed")
        if recipient is not None:
            try:
                self.charter.charter.terminal(recipient)
            except UnknownMember as exc:
                raise UsageError(f"{recipient} is not a terminal of the line") from exc
        if len(self._outbox) >= self._max_outbox:
            raise QueueFull(f"{len(self._outbox)} envelopes wait to be sent")
        env = Envelope.create(
            self._key,
            line_id=self.charter.line_id,
            sender=self.terminal_id,
            recipient=recipient,
            seq=self._counter.next(),
            timestamp_ms=int(self._clock() * 1000),
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
        self._wake.set()
        return env

    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        """The next event. Raises :class:`StateError` once the client is closed and every
        event has been taken, and :class:`TimeoutError` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed and self._events.empty():
                raise StateError("the client is closed")
            if not self._events.empty():
                item = self._events.get_nowait()
            elif deadline is None:
                item = await self._events.get()
            else:
                item = await asyncio.wait_for(self._events.get(), max(0.0, deadline - loop.time()))
            if item is _CLOSED:
                self._events.put_nowait(_CLOSED)
                raise StateError("the client is closed")
            self._taken_delivery(item.delivery_id)  # a refused delivery is acknowledged too
            if item.event is None:
                continue
            if isinstance(item.event, EnvelopeReceived):
                env = item.event.envelope
                self._taken[env.sender] = env.seq
                self.stats["delivered"] += 1
            return item.event

    async def update_charter(self, signed: SignedCharter) -> None:
        """Adopt a newer charter of the line (verified here) and push it to the exchange."""
        self._adopt(signed)
        self._charter_push = signed.to_file_bytes()
        self._wake.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self._drop_connection("closed")
        if self._http is not None:
            await self._http.close()
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(_CLOSED)

    # --- connection -------------------------------------------------------------------

    async def _run(self, first_error: HotlineError | None) -> None:
        """Stay connected: after a drop, try every exchange in the charter's order (the
        next one at once, a whole round with backoff); while on a fallback, probe the first
        and go back to it as soon as it answers, so that all terminals meet on one."""
        attempt = 0
        if first_error is not None:
            self._log_connect_failure(first_error)
            await self._emit(ConnectionChanged(False, first_error.reason))
            await self._refused_exchange(first_error)
            self._next_endpoint()
        while not self._closed:
            if self._connected:
                reason = await self._wait_closed_or_primary()
                await self._drop_connection(reason)
                attempt = 0
                if reason == REASON_BACK_TO_PRIMARY:
                    self._current = 0
                    delay = 0.0
                else:
                    self._next_endpoint()
                    delay = self._reconnect[0] * self._rng.uniform(0.5, 1.0)
            else:
                low, high = self._reconnect
                delay = min(high, low * (2**attempt)) * self._rng.uniform(0.5, 1.0)
                attempt = min(attempt + 1, 30)
            await asyncio.sleep(delay)
            try:
                await self._connect()
                self.stats["reconnects"] += 1
            except HotlineError as exc:
                self.stats[f"connect_failed_{exc.reason}"] += 1
                self._log_connect_failure(exc)
                if isinstance(exc, DuplicateTerminal):
                    await self._emit(ConnectionChanged(False, exc.reason))
                else:
                    await self._refused_exchange(exc)
                if self._next_endpoint():
                    attempt = max(0, attempt - 1)  # the next exchange at once, not later

    def _log_connect_failure(self, exc: HotlineError) -> None:
        """A refusal that may be an attack or a misconfiguration (a certificate that is not
        the pinned one, an exchange that does not admit us, a second copy of this terminal)
        is a WARNING or above; an exchange that does not answer is INFO (it is retried)."""
        fields = {"url": self.url, "reason": exc.reason}
        if isinstance(exc, DuplicateTerminal):
            logger.error("%s: %s", self.url, exc, extra=event("duplicate_terminal", **fields))
        elif exc.reason in _EXCHANGE_REFUSALS:
            return  # someone else answers there: _refused_exchange says so
        elif isinstance(exc, AuthenticationError):
            logger.warning(
                "the exchange at %s did not admit us: %s",
                self.url,
                exc,
                extra=event("exchange_refused", **fields),
            )
        else:
            logger.info(
                "connection to %s failed: %s",
                self.url,
                exc,
                extra=event("exchange_unreachable", **fields),
            )

    def _next_endpoint(self) -> bool:
        """Move to the next exchange; True while the round of exchanges is not over."""
        if len(self._endpoints) == 1:
            return False
        self._current = (self._current + 1) % len(self._endpoints)
        return self._current != 0

    async def _wait_closed_or_primary(self) -> str:
        if self._current == 0 or self._primary_probe_s <= 0:
            return await self._wait_closed()
        waiter = asyncio.ensure_future(self._wait_closed())
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=self._primary_probe_s)
                if done:
                    return waiter.result()
                if await self._primary_answers():
                    self.stats["back_to_primary"] += 1
                    logger.warning(
                        "the first exchange %s answers again: moving back from %s",
                        self._endpoints[0].url,
                        self.url,
                    )
                    return REASON_BACK_TO_PRIMARY
        finally:
            waiter.cancel()

    async def _primary_answers(self) -> bool:
        """Whether the first exchange accepts a connection (TLS pinned) and says it is up."""
        assert self._http is not None
        primary = self._endpoints[0]
        parts = urlsplit(primary.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        url = f"{scheme}://{parts.netloc}/healthz"
        ssl = aiohttp.Fingerprint(primary.fingerprint) if primary.fingerprint else False
        try:
            async with self._http.get(
                url, ssl=ssl, timeout=aiohttp.ClientTimeout(total=self._primary_probe_s)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _refused_exchange(self, exc: HotlineError) -> bool:
        """A TLS pin mismatch or a foreign exchange id: someone else answers at the
        exchange's address. Logged at WARNING and reported; True if it was one."""
        if exc.reason not in _EXCHANGE_REFUSALS:
            return False
        name = "tls_pin_mismatch" if isinstance(exc, TLSPinMismatch) else "exchange_id_mismatch"
        logger.warning(
            "refusing the exchange at %s (%s): %s",
            self.url,
            exc.reason,
            exc,
            extra=event(name, url=self.url, reason=exc.reason),
        )
        await self._emit(Refusal(exc.reason, clip(f"the exchange at {self.url}: {exc}")))
        return True

    async def _wait_closed(self) -> str:
        done, _ = await asyncio.wait(self._io, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.warning("exchange connection failed: %r", task.exception())
        ws = self._ws
        if ws is not None and ws.close_code is not None:
            return self._close_reason or f"closed_{ws.close_code}"
        return self._close_reason or "connection_lost"

    async def _connect(self) -> None:
        assert self._http is not None
        fingerprint = self._endpoints[self._current].fingerprint
        try:
            ws = await self._http.ws_connect(
                self.url,
                ssl=aiohttp.Fingerprint(fingerprint) if fingerprint else False,
                max_msg_size=self._max_frame,
                heartbeat=self._heartbeat,
                autoping=True,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except aiohttp.ServerFingerprintMismatch as exc:
            self.stats["tls_pin_mismatch"] += 1
            raise TLSPinMismatch(
                "the exchange's TLS certificate is not the one the charter pins"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ExchangeUnavailable(f"cannot reach the exchange at {self.url}: {exc}") from exc
        ssl_object = ws.get_extra_info("ssl_object")
        if ssl_object is not None:  # what the exchange presented (pinned): for expiry warnings
            self.peer_certificate = ssl_object.getpeercert(binary_form=True)
        try:
            await asyncio.wait_for(self._handshake(ws), self._connect_timeout)
        except BaseException:
            await ws.close()
            raise

    async def _receive_frame(self, ws: aiohttp.ClientWebSocketResponse) -> ServerFrame:
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.BINARY:
            return decode_server_frame(msg.data, self._max_frame)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            extra = str(msg.extra or "")
            raise _close_error(ws.close_code, known_reason(extra) if extra else _reason_of(ws))
        raise FrameError(f"unexpected WebSocket message {msg.type!r} from the exchange")

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        challenge = await self._receive_frame(ws)
        if not isinstance(challenge, Challenge):
            raise FrameError("the exchange did not start with a challenge")
        if self.tls_fingerprint is not None and challenge.exchange_id != self.tls_fingerprint:
            raise AuthenticationError(
                "the exchange presents another exchange's id", reason="exchange_id"
            )
        if challenge.store_id != self._store_id:
            self._store_id = challenge.store_id  # another store: its delivery ids are new
            self._delivered = self._acked = 0
        line_id = self.charter.line_id
        signature = self._key.sign(
            auth_message(challenge.challenge, challenge.exchange_id, line_id, self.terminal_id)
        )
        await ws.send_bytes(
            encode_frame(
                Hello(line_id, self.terminal_id, signature, self._delivered, self.charter.version)
            )
        )
        welcome = await self._receive_frame(ws)
        if not isinstance(welcome, Welcome) or welcome.terminal_id != self.terminal_id:
            raise FrameError("the exchange did not welcome this terminal")
        self._limits = challenge.limits
        self._bucket = TokenBucket(
            challenge.limits.rate_per_s * PACE_MARGIN,
            max(1, challenge.limits.burst - 2),
            time.monotonic(),
        )
        if welcome.last_seq is not None:
            self._prune_outbox(welcome.last_seq)
        self._sent = 0
        self._acked = self._delivered  # the hello told the exchange
        self._ws = ws
        self._close_reason = None
        self._connected = True
        if welcome.charter_version < self.charter.version:
            self._charter_push = self.charter.to_file_bytes()
        self._io = [
            asyncio.create_task(self._reader(ws)),
            asyncio.create_task(self._writer(ws)),
        ]
        self._wake.set()
        logger.info("connected to %s as %s", self.url, self.terminal_id)
        await self._emit(ConnectionChanged(True, "connected"))
        await self._set_online(welcome.online)

    def _emit_nowait(self, event: ClientEvent) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(_Item(event))

    async def _drop_connection(self, reason: str) -> None:
        for task in self._io:
            task.cancel()
        for task in self._io:
            with contextlib.suppress(BaseException):
                await task
        self._io = []
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._connected:
            self._connected = False
            logger.info("disconnected from %s: %s", self.url, reason)
            if self._closed:  # close() must not wait for the application
                self._emit_nowait(ConnectionChanged(False, reason))
            else:
                await self._emit(ConnectionChanged(False, reason))

    # --- reading ------------------------------------------------------------------------

    async def _reader(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.BINARY:
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    extra = str(msg.extra or "")
                    self._close_reason = known_reason(extra) if extra else _reason_of(ws)
                    return
                continue
            try:
                frame = decode_server_frame(msg.data, self._max_frame)
            except HotlineError as exc:
                self.stats[f"bad_frame_{exc.reason}"] += 1
                logger.warning("the exchange sent a malformed frame: %s", exc)
                self._close_reason = "bad_frame"
                return
            if isinstance(frame, Deliver):
                await self._on_deliver(frame)
            elif isinstance(frame, Accepted):
                self.stats["accepted"] += 1
                self._prune_outbox(frame.seq)
            elif isinstance(frame, Reject):
                await self._on_reject(frame)
            elif isinstance(frame, Presence):
                await self._set_online(frame.online)
            elif isinstance(frame, CharterFrame):
                await self._on_charter(frame.data)
            else:
                self.stats["bad_frame_unexpected"] += 1
                self._close_reason = "bad_frame"
                return

    async def _on_deliver(self, frame: Deliver) -> None:
        self.stats["received"] += 1
        try:
            env = Envelope.from_bytes(frame.envelope, self._limits.max_envelope_size)
            if env.recipient is not None and env.recipient != self.terminal_id:
                raise MisroutedEnvelope("an envelope for another terminal")
            if env.sender == self.terminal_id:
                raise MisroutedEnvelope("an envelope from this terminal itself")
            env.verify(self.charter)
            env.check_fresh(
                int(self._clock() * 1000),
                max_age_ms=self._max_age_ms,
                max_future_ms=self._max_future_ms,
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
            await self._events.put(_Item(refusal, frame.delivery_id))
            return
        await self._events.put(_Item(EnvelopeReceived(env), frame.delivery_id))

    async def _on_reject(self, frame: Reject) -> None:
        if frame.seq is None and frame.reason == DuplicateTerminal.reason:
            self.stats["duplicate_terminal"] += 1
            logger.error(
                "the exchange refused another connection with this terminal's identity, "
                "which kept replacing this one: two copies of this terminal folder are "
                "running (here and elsewhere); stop one",
                extra=event("duplicate_terminal", url=self.url, reason=frame.reason),
            )
            await self._emit(ConnectionChanged(True, frame.reason))
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
            await self._emit(EnvelopeRejected(None, frame.reason))
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
        await self._emit(EnvelopeRejected(frame.seq, frame.reason, recipient))

    async def _on_charter(self, data: bytes) -> None:
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
            await self._emit(Refusal(f"charter_{exc.reason}", clip(f"a charter: {exc}")))
            return
        await self._emit(CharterUpdated(self.charter))

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

    async def _set_online(self, online: frozenset[str]) -> None:
        members = self._members()
        online = frozenset(t for t in online if t in members)
        if online != self._online:
            self._online = online
            await self._emit(PresenceChanged(online))

    async def _emit(self, event: ClientEvent) -> None:
        await self._events.put(_Item(event))

    def _taken_delivery(self, delivery_id: int | None) -> None:
        if delivery_id is None or delivery_id <= self._delivered:
            return
        self._delivered = delivery_id
        if self._ack_due is None:
            self._ack_due = time.monotonic() + self._ack_delay
            self._wake.set()

    # --- writing ------------------------------------------------------------------------

    def _prune_outbox(self, upto: int) -> None:
        while self._outbox and self._outbox[0].seq <= upto:
            self._outbox.popleft()
            if self._sent > 0:
                self._sent -= 1

    async def _writer(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(ConnectionError):
            await self._write_loop(ws)

    async def _write_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            now = time.monotonic()
            charter_cost = min(CHARTER_PUSH_COST, self._bucket.burst if self._bucket else 1.0)
            if self._charter_push is not None and self._take(now, charter_cost):
                data, self._charter_push = self._charter_push, None
                await ws.send_bytes(encode_frame(CharterFrame(data)))
                continue
            if self._ack_due is not None and now >= self._ack_due and self._acked < self._delivered:
                self._ack_due = None
                upto = self._delivered
                await ws.send_bytes(encode_frame(Ack(upto)))
                self._acked = upto
                self.stats["acks_sent"] += 1
                continue
            if self._ack_due is not None and self._acked >= self._delivered:
                self._ack_due = None
            if self._sent < len(self._outbox):
                if not self._take(now, 1.0):
                    await self._sleep(self._bucket.delay(now) if self._bucket else 0.01)
                    continue
                env = self._outbox[self._sent]
                self._sent += 1
                await ws.send_bytes(encode_frame(Send(env.raw)))
                continue
            waits = []
            if self._ack_due is not None:
                waits.append(max(0.0, self._ack_due - now))
            if self._charter_push is not None and self._bucket is not None:
                waits.append(self._bucket.delay(now, charter_cost))
            await self._sleep(min(waits) if waits else None)

    def _take(self, now: float, cost: float) -> bool:
        if not self._pace or self._bucket is None:
            return True
        return self._bucket.take(now, cost)

    async def _sleep(self, timeout: float | None) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)


def _reason_of(ws: aiohttp.ClientWebSocketResponse) -> str:
    code = ws.close_code
    if code == CLOSE_TOO_BIG:
        return "too_large"
    if code == CLOSE_SUPERSEDED:
        return "superseded"
    if code == CLOSE_REMOVED:
        return "removed_from_charter"
    if code == CLOSE_DUPLICATE:
        return DuplicateTerminal.reason
    if code is None:
        return "connection_lost"
    return f"closed_{code}" if 1000 <= code <= 1015 or 4000 <= code <= 4010 else "closed_other"
