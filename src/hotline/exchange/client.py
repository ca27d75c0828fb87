"""The client library a terminal uses to talk through an exchange: the aiohttp adapter
around :class:`~hotline.exchange.client_core.ClientCore`.

::

    client = ExchangeClient(url, charter=signed, terminal_id="sochi-principal", key=key)
    await client.start()                       # connect + authenticate, then stay connected
    env = await client.send("wh-principal", "call.offer", body)   # None: every terminal
    event = await client.next_event()          # EnvelopeReceived | PresenceChanged | ...
    await client.close()

Every protocol decision is the core's (what a delivery must be to be accepted, the
outbox, acknowledgements, pacing, charter pushes, refusal counters, which exchange to
connect to next and when); this module only does the I/O it asks for: it opens the
WebSocket (TLS pinned to the fingerprint in the charter; no certificate authority is
trusted; plain ws only to a loopback address), feeds every frame and close to the core,
writes what the core gives it, probes the first exchange's ``/healthz`` when asked, and
sleeps until the core's next deadline. The core reads one clock: this adapter gives it
``time.monotonic()`` and the offset of the wall clock (``clock``) to it.

Reconnection, failover and resumption are described in ``docs/exchange.md`` ("The
terminal's client"). A terminal that also persists :attr:`ExchangeClient.state` resumes
exactly across its own restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp

from hotline.charter import SignedCharter
from hotline.envelope import Envelope
from hotline.errors import (
    ExchangeUnavailable,
    HotlineError,
    StateError,
    TLSPinMismatch,
)
from hotline.exchange.client_core import (
    EXCHANGE_REFUSALS,
    MAX_FRAME,
    REASON_BACK_TO_PRIMARY,
    REORDER_WINDOW,
    Action,
    CharterUpdated,
    ClientConfig,
    ClientCore,
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
    make_endpoints,
)
from hotline.ids import TerminalId
from hotline.keys import SigningKey

logger = logging.getLogger("hotline.exchange.client")

__all__ = [
    "EXCHANGE_REFUSALS",
    "REASON_BACK_TO_PRIMARY",
    "REORDER_WINDOW",
    "CharterUpdated",
    "ClientConfig",
    "ClientEvent",
    "ClientState",
    "ConnectionChanged",
    "EnvelopeReceived",
    "EnvelopeRejected",
    "ExchangeClient",
    "PresenceChanged",
    "Refusal",
]

_CLOSE_TYPES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class ExchangeClient:
    """A terminal's connection to an exchange (the first of the charter's that answers).
    See the module docstring; every keyword of :class:`ClientConfig` may be given here, or
    ``config`` as a whole."""

    def __init__(
        self,
        url: str,
        *,
        charter: SignedCharter,
        terminal_id: TerminalId | str,
        key: SigningKey,
        tls_fingerprint: str | None = None,
        fallbacks: Sequence[tuple[str, str | None]] = (),
        state: ClientState | None = None,
        accept_charter: Callable[[SignedCharter], SignedCharter] | None = None,
        config: ClientConfig | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        **settings: float | int | bool,
    ) -> None:
        if config is None:
            config = ClientConfig(**settings)  # type: ignore[arg-type]
        elif settings:
            raise TypeError("give either config or its fields, not both")
        self._clock = clock
        #: the DER certificate the exchange presented at the last TLS connection (pinned)
        self.peer_certificate: bytes | None = None
        now = time.monotonic()
        self._core = ClientCore(
            config,
            charter=charter,
            terminal_id=terminal_id,
            key=key,
            endpoints=make_endpoints(url, tls_fingerprint, fallbacks, charter),
            now=now,
            wall_offset_s=clock() - now,
            state=state,
            accept_charter=accept_charter,
            rng=rng,
        )
        self._wake = asyncio.Event()  # the core may have something to do
        self._progress = asyncio.Event()  # the core heard from the exchange or the network
        self._space = asyncio.Event()  # the application took an event
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ws_attempt = 0
        self._http: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._opening: tuple[int, asyncio.Task[None]] | None = None
        self._started = False
        self._stopping = False

    # --- public -----------------------------------------------------------------------

    @property
    def core(self) -> ClientCore:
        return self._core

    @property
    def config(self) -> ClientConfig:
        return self._core.config

    @property
    def terminal_id(self) -> TerminalId:
        return self._core.terminal_id

    @property
    def charter(self) -> SignedCharter:
        return self._core.charter

    @property
    def stats(self) -> Counter[str]:
        return self._core.stats

    @property
    def url(self) -> str:
        """The exchange this client uses now (or tries next)."""
        return self._core.endpoint.url

    @property
    def tls_fingerprint(self) -> str | None:
        return self._core.endpoint.tls_fingerprint

    @property
    def endpoints(self) -> list[str]:
        """Every exchange this client may use, in order of preference."""
        return [e.url for e in self._core.endpoints]

    @property
    def on_primary(self) -> bool:
        return self._core.on_primary

    @property
    def online(self) -> frozenset[str]:
        return self._core.online

    @property
    def connected(self) -> bool:
        return self._core.connected

    @property
    def state(self) -> ClientState:
        """A snapshot to persist (see :class:`ClientState`)."""
        return self._core.client_state

    @property
    def outbox_size(self) -> int:
        return self._core.outbox_size

    async def start(self, *, require_connection: bool = True) -> None:
        """Connect and authenticate, then keep the connection alive in the background.

        Raises the first attempt's error (:class:`ExchangeUnavailable`,
        :class:`AuthenticationError`, :class:`TLSPinMismatch`...) unless
        ``require_connection`` is False, in which case it keeps trying in the background."""
        if self._started or self._core.closed:
            raise StateError("the client was already started")
        self._started = True
        self._http = aiohttp.ClientSession()
        self._core.start(time.monotonic())
        self._runner = asyncio.create_task(self._run())
        while not self._core.connected and self._core.failures == 0:
            self._progress.clear()
            await self._progress.wait()
        if not self._core.connected and require_connection:
            error = self._core.last_failure
            await self._shutdown()
            assert error is not None
            raise error

    async def send(self, recipient: str | None, msg_type: str, body: bytes) -> Envelope:
        """Sign an envelope for ``recipient`` (None: every terminal of the line) and queue
        it. It is written at once when connected (paced to the exchange's rate), else on
        reconnection. Raises :class:`QueueFull` when the outbox is full, :class:`TooLarge`
        over the exchange's envelope size."""
        env = self._core.send(recipient, msg_type, body, time.monotonic())
        self._wake.set()
        return env

    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        """The next event. Raises :class:`StateError` once the client is closed and every
        event has been taken, and :class:`TimeoutError` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            event = self._core.next_event(time.monotonic())
            if event is not None:
                self._space.set()
                self._wake.set()  # an acknowledgement may be due
                return event
            if self._core.closed:
                raise StateError("the client is closed")
            self._progress.clear()
            async with asyncio.timeout_at(deadline):
                await self._progress.wait()

    async def update_charter(self, signed: SignedCharter) -> None:
        """Adopt a newer charter of the line (verified here) and push it to the exchange."""
        self._core.update_charter(signed)
        self._wake.set()

    async def close(self) -> None:
        if self._core.closed:
            return
        self._core.close(time.monotonic())
        await self._shutdown()
        self._progress.set()

    # --- the loop that does what the core asks --------------------------------------------

    async def _shutdown(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._runner, self._reader) if t is not None]
        if self._opening is not None:
            tasks.append(self._opening[1])
        tasks += list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = self._reader = self._opening = None
        await self._close_ws()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        core = self._core
        while not self._stopping:
            self._wake.clear()
            now = time.monotonic()
            core.handle_timer(now)
            while (action := core.next_action()) is not None:
                await self._do(action)
            await self._write(now)
            self._progress.set()
            timer = core.get_timer()
            timeout = None if timer is None else max(0.0, timer - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _do(self, action: Action) -> None:
        if isinstance(action, Connect):
            task = asyncio.create_task(self._open(action))
            self._opening = (action.attempt, task)
        elif isinstance(action, Probe):
            self._spawn(self._probe(action.endpoint))
        elif isinstance(action, Disconnect):
            if self._opening is not None and self._opening[0] == action.attempt:
                self._opening[1].cancel()
                self._opening = None
            if self._ws_attempt == action.attempt:
                if self._reader is not None:
                    self._reader.cancel()
                    self._reader = None
                await self._close_ws()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, now: float) -> None:
        frames = self._core.frames_to_send(now)
        ws = self._ws
        if ws is None or ws.closed:
            return  # the connection is gone: the core sends them again on the next one
        for data in frames:
            try:
                await ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                return  # the reader reports the close

    async def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _open(self, action: Connect) -> None:
        assert self._http is not None
        endpoint = action.endpoint
        error: HotlineError
        try:
            async with asyncio.timeout(self._core.config.connect_timeout_s):
                ws = await self._http.ws_connect(
                    endpoint.url,
                    ssl=aiohttp.Fingerprint(endpoint.fingerprint)
                    if endpoint.fingerprint
                    else False,
                    max_msg_size=MAX_FRAME,
                    heartbeat=self._core.config.heartbeat_s,
                    autoping=True,
                    compress=0,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except aiohttp.ServerFingerprintMismatch:
            error = TLSPinMismatch("the exchange's TLS certificate is not the one the charter pins")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = ExchangeUnavailable(f"cannot reach the exchange at {endpoint.url}: {exc}")
        else:
            self._opening = None
            if self._core.attempt != action.attempt or self._core.closed:
                await ws.close()  # the core moved on while it opened
                return
            await self._close_ws()
            ssl_object = ws.get_extra_info("ssl_object")
            if ssl_object is not None:  # what the exchange presented (pinned): expiry warnings
                self.peer_certificate = ssl_object.getpeercert(binary_form=True)
            self._ws, self._ws_attempt = ws, action.attempt
            now = time.monotonic()
            self._core.set_wall_offset(self._clock() - now)
            self._core.connection_made(action.attempt, now)
            self._reader = asyncio.create_task(self._read(ws, action.attempt))
            self._wake.set()
            return
        self._opening = None
        self._core.connection_failed(action.attempt, error, time.monotonic())
        self._progress.set()
        self._wake.set()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, attempt: int) -> None:
        core = self._core
        while not self._stopping:
            while core.receiving_paused:  # backpressure: the application is behind
                self._space.clear()
                await self._space.wait()
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                core.receive_frame(msg.data, time.monotonic())
            elif msg.type in _CLOSE_TYPES or msg.type is aiohttp.WSMsgType.ERROR:
                text = str(msg.extra or "") if msg.type is aiohttp.WSMsgType.CLOSE else ""
                if msg.type is aiohttp.WSMsgType.ERROR:
                    logger.warning("exchange connection failed: %r", msg.data)
                core.connection_closed(attempt, ws.close_code, text, time.monotonic())
                self._progress.set()
                self._wake.set()
                return
            else:
                continue
            self._progress.set()
            self._wake.set()

    async def _probe(self, primary: Endpoint) -> None:
        """Whether the first exchange accepts a connection (TLS pinned) and says it is up."""
        assert self._http is not None
        ssl = aiohttp.Fingerprint(primary.fingerprint) if primary.fingerprint else False
        timeout = aiohttp.ClientTimeout(total=max(0.5, self._core.config.primary_probe_s))
        try:
            async with self._http.get(primary.health_url, ssl=ssl, timeout=timeout) as resp:
                answered = resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            answered = False
        self._core.probe_result(answered, time.monotonic())
        self._wake.set()
