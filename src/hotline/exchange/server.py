"""The exchange server: the aiohttp adapter around :mod:`hotline.exchange.routing`.

One WebSocket per terminal at :data:`~hotline.exchange.frames.WS_PATH`, plus ``/healthz``,
``/livez``, ``/readyz`` and ``/metrics``. The protocol is in ``docs/exchange.md``, the limits
in ``docs/limits.md``.
Everything a terminal sends goes through the routing core; this module only moves bytes,
keeps time, persists batches to :class:`~hotline.exchange.store.ExchangeStore` and counts.
A connection that misbehaves is closed with a reason; nothing it sends can stop the server
or touch another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from hotline.charter import SignedCharter
from hotline.errors import (
    AddressUnavailable,
    AuthenticationError,
    CharterError,
    CharterRollback,
    DuplicateTerminal,
    FrameError,
    HotlineError,
    LimitExceeded,
    StateError,
    TooLarge,
    UsageError,
)
from hotline.exchange import tls
from hotline.exchange.frames import (
    CHALLENGE_SIZE,
    CHARTER_PUSH_COST,
    CLOSE_DUPLICATE,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_REMOVED,
    CLOSE_SUPERSEDED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    MAX_HELLO_SIZE,
    WS_PATH,
    Accepted,
    Ack,
    Challenge,
    CharterFrame,
    Hello,
    Presence,
    Reject,
    Send,
    Welcome,
    decode_client_frame,
    encode_deliver,
    encode_frame,
    is_loopback,
)
from hotline.exchange.metrics import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Metrics
from hotline.exchange.routing import Limits, Refused, Router, Session
from hotline.exchange.store import Event, ExchangeStore, WriteBatch
from hotline.httplog import HttpErrorLog
from hotline.logs import event

logger = logging.getLogger("hotline.exchange")

_DELIVER_BATCH = 64
#: warn (WARNING, once a day, and `/readyz` detail) this long before our certificate ends
CERT_WARN_AHEAD_S = 30 * 86_400


@dataclass(frozen=True)
class ServerConfig:
    """How one exchange process runs."""

    #: SQLite file of the store (charters, pending envelopes, event log)
    db_path: Path
    #: folder with ``tls-cert.pem`` / ``tls-key.pem`` (``hotline exchange init``); None only
    #: with ``insecure_loopback``
    tls_dir: Path | None = None
    host: str = "127.0.0.1"
    #: 0: any free port (read :attr:`ExchangeServer.port` after start)
    port: int = 0
    #: serve plain ws:// (only allowed on a loopback address)
    insecure_loopback: bool = False
    limits: Limits = field(default_factory=Limits)
    #: how often accepted envelopes are committed to the store (and senders told)
    flush_interval_s: float = 0.1
    #: how often the window is enforced in memory and in the store
    expire_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.insecure_loopback:
            if not is_loopback(self.host):
                raise UsageError(
                    f"--insecure-loopback serves plain ws://, which is only allowed on a "
                    f"loopback address, not {self.host}"
                )
        elif self.tls_dir is None:
            raise UsageError("a TLS folder is required (or --insecure-loopback on 127.0.0.1)")


class _Closed(Exception):
    """The connection was closed by the exchange; stop reading it."""


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    source: str
    session: Session | None = None
    control: deque[bytes] = field(default_factory=deque)
    writer: asyncio.Task[None] | None = None
    #: highest sequence number accepted since the last flush (reported after the commit)
    accepted_seq: int | None = None
    closing: bool = False


class ExchangeServer:
    """One exchange: ``await start()``, then :attr:`url`; ``await stop()``."""

    def __init__(self, config: ServerConfig, charters: Sequence[SignedCharter] = ()) -> None:
        self.config = config
        self.limits = config.limits
        self.metrics = Metrics()
        self.store = ExchangeStore(config.db_path, max_event_rows=config.limits.max_event_log_rows)
        self.router: Router = Router(self.limits)
        self._initial = list(charters)
        self._conns: dict[int, _Conn] = {}  # by session id
        self._all: set[_Conn] = set()
        self._batch = WriteBatch()
        self._presence_scheduled = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        #: the signed charter served for each line
        self.charters: dict[str, SignedCharter] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.url = ""
        if config.insecure_loopback:
            self.exchange_id = f"ws-loopback:{self.store.store_id}"
            self._ssl = None
        else:
            assert config.tls_dir is not None
            self.exchange_id = tls.load_fingerprint(config.tls_dir)
            self._ssl = tls.server_context(config.tls_dir)
        #: the end of validity of our own TLS certificate (None: plain ws on loopback)
        self.cert_not_after = (
            None if config.tls_dir is None or config.insecure_loopback
            else tls.load_not_after(config.tls_dir)
        )  # fmt: skip
        self._cert_warned_day: int | None = None
        self.http_log = HttpErrorLog(
            logger, lambda reason: self.metrics.inc("bad_http_requests_total", reason)
        )
        self.metrics.gauge("open_connections", lambda: len(self._all))
        self.metrics.gauge("terminals_online", lambda: len(self._conns))
        self.metrics.gauge("lines", lambda: len(self.router.lines()))
        self.metrics.gauge(
            "tls_certificate_expiry_timestamp_seconds",
            lambda: float("nan") if self.cert_not_after is None else self.cert_not_after,
        )
        self.metrics.gauge("pending_envelopes", self.router.pending_count)

    # --- charters ----------------------------------------------------------------------

    def install_charter(self, signed: SignedCharter) -> SignedCharter:
        """Serve a charter the operator gave (verified and kept by the store; a version
        lower than one already held is refused with :class:`CharterRollback`)."""
        current = self.store.accept_charter(signed)
        self._apply_charter(current)
        return current

    def _apply_charter(self, current: SignedCharter) -> bool:
        """Serve ``current`` (already verified and kept by the store) if it is newer than
        the line's charter: evict removed terminals, tell the others. True if it was."""
        held = self.charters.get(current.line_id)
        if held is not None and held.version >= current.version:
            return False
        change = self.router.set_charter(current.charter)
        self.charters[current.line_id] = current
        self._batch.add_removed(change.dropped)
        frame = encode_frame(CharterFrame(current.to_file_bytes()))
        for session in change.notify:
            conn = self._conns.get(session.session_id)
            if conn is not None:
                self._queue(conn, frame)
        for session in change.evicted:
            conn = self._conns.get(session.session_id)
            if conn is not None:
                self._spawn(self._close(conn, CLOSE_REMOVED, "removed_from_charter"))
        self._schedule_presence()
        self.metrics.inc("charter_updates_total")
        self._event("charter_updated", line=current.line_id, reason=f"version {current.version}")
        logger.info("line %s: now serving charter version %d", current.line_id, current.version)
        return True

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            self.store.close()
            raise

    async def _start(self) -> None:
        now = time.time()
        for signed in self.store.charters_held():
            self._apply_charter(signed)
        for signed in self._initial:
            try:
                self.install_charter(signed)
            except CharterRollback as exc:
                logger.warning("%s; serving the newer version held in the store", exc)
        if not self.router.lines():
            raise UsageError("no charter to serve: give at least one --charter")
        snapshot = self.store.load(int(now * 1000), int(self.limits.window_s * 1000))
        self.router.advance_ids(snapshot.next_delivery_id, snapshot.next_envelope_id)
        stale = self.router.restore(snapshot.pending, snapshot.last_seqs)
        if stale:
            self.store.delete_deliveries(stale)
        app = web.Application(client_max_size=self.limits.max_frame_size)
        app.router.add_get(WS_PATH, self._ws_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            logger=self.http_log,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.port, ssl_context=self._ssl, backlog=1024
        )
        try:
            await site.start()
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise AddressUnavailable(
                f"cannot listen on {self.config.host}:{self.config.port}: {why}"
            ) from exc
        address = self._runner.addresses[0]
        self.port = int(address[1])
        scheme = "ws" if self._ssl is None else "wss"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"{scheme}://{host}:{self.port}{WS_PATH}"
        self._tasks.append(asyncio.create_task(self._flush_loop()))
        self._tasks.append(asyncio.create_task(self._expire_loop()))
        self._event("started", reason=self.url)
        self._flush()
        logger.info(
            "exchange %s listening on %s with %d line(s), %d pending deliveries",
            self.exchange_id,
            self.url,
            len(self.router.lines()),
            self.router.pending_count(),
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.gather(
            *(self._close(c, CLOSE_GOING_AWAY, "going_away") for c in list(self._all)),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._event("stopped")
        self._flush()
        self.store.close()

    # --- HTTP -------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        del request
        body = {
            "status": "ok",
            "exchange_id": self.exchange_id,
            "lines": len(self.router.lines()),
            "connections": len(self._all),
            "terminals_online": len(self._conns),
            "pending_envelopes": self.router.pending_count(),
        }
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            text, content_type = self.metrics.render_openmetrics(), OPENMETRICS_CONTENT_TYPE
        else:
            text, content_type = self.metrics.render(), TEXT_CONTENT_TYPE
        return web.Response(
            body=text.encode("utf-8"),
            headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"},
        )

    async def _livez(self, request: web.Request) -> web.Response:
        """The process answers (its event loop runs): restart it if this fails."""
        del request
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready to serve terminals: 200 if every check passes, else 503 naming the failed
        ones (route no terminal here, but do not restart: it may be the disk)."""
        del request
        checks = self.readiness()
        ready = all(ok for ok, _ in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        }
        return web.json_response(body, status=200 if ready else 503)

    def readiness(self) -> dict[str, tuple[bool, str]]:
        """``/readyz``'s checks: the store answers, charters are loaded, the port listens."""
        try:
            self.store.check()
            store = (True, str(self.config.db_path))
        except StateError as exc:
            store = (False, str(exc))
        lines = self.router.lines()
        checks = {
            "store": store,
            "charters": (bool(lines), f"{len(lines)} line(s)" if lines else "no charter"),
            "listening": (self._runner is not None and self.port > 0, self.url or "not yet"),
        }
        if self.cert_not_after is not None:
            # a detail, never a failure: terminals pin the certificate and go on working
            # past its end; the WARNING and the gauge are what alert
            left = self.cert_not_after - time.time()
            checks["certificate"] = (True, cert_detail(left, self.cert_not_after))
        return checks

    def _watch_certificate(self, now: float) -> None:
        """A WARNING once a day from CERT_WARN_AHEAD_S before our certificate ends."""
        if self.cert_not_after is None:
            return
        left = self.cert_not_after - now
        day = int(now // 86_400)
        if left > CERT_WARN_AHEAD_S or self._cert_warned_day == day:
            return
        self._cert_warned_day = day
        self._event("certificate_expiry", reason=cert_detail(left, self.cert_not_after))
        logger.warning(
            "the exchange's TLS certificate %s: make a new one (`hotline exchange init` in a "
            "new folder), put its fingerprint in a new charter version that every site signs, "
            "then serve from it",
            cert_detail(left, self.cert_not_after),
        )

    # --- connections --------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        source = request.remote or "unknown"
        ws = web.WebSocketResponse(
            max_msg_size=self.limits.max_frame_size,
            heartbeat=self.limits.heartbeat_s,
            autoping=True,
            compress=False,
        )
        if not ws.can_prepare(request).ok:  # a plain GET: no WebSocket upgrade
            self.http_log.malformed(source, "not_websocket", f"{request.method} {WS_PATH}")
            return web.json_response(
                {"error": "this is a WebSocket endpoint", "reason": "not_websocket"}, status=400
            )
        try:
            self.router.sources.open(source, time.time())
        except LimitExceeded as exc:
            self.metrics.inc("refused_connections_total", exc.reason)
            self._event("refused", source=source, reason=exc.reason)
            logger.warning(
                "refused a connection from %s: %s",
                source,
                exc,
                extra=event("connection_refused", source=source, reason=exc.reason),
            )
            await ws.prepare(request)
            await ws.close(code=CLOSE_TRY_LATER, message=exc.reason.encode())
            return ws
        conn = _Conn(ws, source)
        self._all.add(conn)
        self.metrics.inc("connections_total")
        try:
            await ws.prepare(request)
            await self._serve(conn)
        except (_Closed, ConnectionError):
            pass
        except Exception:  # a bug must not take the exchange down
            logger.exception("connection from %s failed", source)
            await self._close(conn, CLOSE_INTERNAL, "internal_error")
        finally:
            self._all.discard(conn)
            self.router.sources.close(source)
            if conn.writer is not None:
                conn.writer.cancel()
            session = conn.session
            if session is not None:
                if self._conns.get(session.session_id) is conn:
                    del self._conns[session.session_id]
                if self.router.disconnect(session):
                    self._schedule_presence()
                self._event(
                    "disconnected",
                    line=session.line_id,
                    terminal=session.terminal_id,
                    source=source,
                )
        return ws

    async def _serve(self, conn: _Conn) -> None:
        ws = conn.ws
        blocked = self.router.sources.blocked(conn.source, time.time())
        auth_timeout = self.limits.auth_timeout_s
        if blocked:  # admitted only with a hello that verifies, and quickly
            auth_timeout = min(auth_timeout, self.limits.blocked_auth_timeout_s)
        challenge = os.urandom(CHALLENGE_SIZE)
        await ws.send_bytes(
            encode_frame(
                Challenge(
                    challenge, self.exchange_id, self.store.store_id, self.limits.advertised()
                )
            )
        )
        try:
            msg = await ws.receive(timeout=auth_timeout)
        except TimeoutError:
            await self._auth_failed(
                conn, AuthenticationError("no hello in time", reason="timeout"), blocked=blocked
            )
            raise _Closed from None
        hello = await self._frame(conn, msg, MAX_HELLO_SIZE)
        if hello is None:
            return
        if not isinstance(hello, Hello):
            await self._auth_failed(
                conn, AuthenticationError("expected a hello", reason="bad_frame"), blocked=blocked
            )
            raise _Closed
        try:
            self.router.authenticate(
                challenge=challenge,
                exchange_id=self.exchange_id,
                line_id=hello.line_id,
                terminal_id=hello.terminal_id,
                signature=hello.signature,
            )
        except AuthenticationError as exc:
            await self._auth_failed(conn, exc, hello, blocked=blocked)
            raise _Closed from None
        now = time.time()
        try:
            connected = self.router.connect(
                line_id=hello.line_id,
                terminal_id=hello.terminal_id,
                source=conn.source,
                now=now,
                resume=hello.resume,
            )
        except DuplicateTerminal as exc:
            await self._duplicate(conn, hello, exc)
            raise _Closed from None
        session = conn.session = connected.session
        self._conns[session.session_id] = conn
        self._batch.add_removed(connected.dropped)
        if connected.superseded is not None:
            old = self._conns.pop(connected.superseded.session_id, None)
            if old is not None:
                self._spawn(self._close(old, CLOSE_SUPERSEDED, "superseded"))
        self.metrics.inc("admitted_total")
        self._event(
            "admitted", line=session.line_id, terminal=session.terminal_id, source=conn.source
        )
        logger.info(
            "admitted %s of line %s from %s", session.terminal_id, session.line_id, conn.source
        )
        current = self.charters.get(session.line_id)
        version = current.version if current is not None else 0
        conn.control.append(
            encode_frame(
                Welcome(
                    terminal_id=session.terminal_id,
                    online=self.router.online(session.line_id),
                    last_seq=self.router.last_seq(session.line_id, session.terminal_id),
                    charter_version=version,
                )
            )
        )
        if current is not None and hello.charter_version < version:
            conn.control.append(encode_frame(CharterFrame(current.to_file_bytes())))
        self._kick(conn)
        self._schedule_presence()
        while not ws.closed:
            msg = await ws.receive()
            frame = await self._frame(conn, msg, self.limits.max_frame_size)
            if frame is None:
                return
            if conn.closing or session.closed:
                raise _Closed
            if isinstance(frame, Send):
                await self._on_envelope(conn, session, frame.envelope)
            elif isinstance(frame, Ack):
                self._on_ack(conn, session, frame.upto)
            elif isinstance(frame, CharterFrame):
                await self._on_charter(conn, session, frame.data)
            else:
                await self._violation(conn, FrameError("a second hello"))

    async def _frame(
        self, conn: _Conn, msg: object, max_size: int
    ) -> Hello | Send | Ack | CharterFrame | None:
        """Decode one received message; None when the peer closed."""
        kind = getattr(msg, "type", None)
        if kind is WSMsgType.BINARY:
            data = getattr(msg, "data", b"")
            try:
                return decode_client_frame(data, max_size)
            except HotlineError as exc:
                await self._violation(conn, exc)
        if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        if kind is WSMsgType.ERROR:
            error = getattr(msg, "data", None)
            # aiohttp has already closed the connection (1009 for a frame too large)
            if isinstance(error, WebSocketError) and error.code == CLOSE_TOO_BIG:
                self._count_violation(conn, TooLarge("a frame over the size limit"))
            elif isinstance(error, WebSocketError):  # broken WebSocket framing
                self._count_violation(conn, FrameError(f"WebSocket protocol error: {error}"))
            raise _Closed  # otherwise the connection failed: nobody's fault
        await self._violation(conn, FrameError("only binary frames are accepted"))
        raise _Closed  # unreachable: _violation raises

    def _count_violation(self, conn: _Conn, exc: HotlineError) -> None:
        session = conn.session
        if session is None:
            self.metrics.inc("auth_failures_total", exc.reason)
            self.router.sources.auth_failed(conn.source, time.time())
        self.metrics.inc("closes_total", exc.reason)
        self._event(
            "closed",
            line=session.line_id if session else None,
            terminal=session.terminal_id if session else None,
            source=conn.source,
            reason=exc.reason,
        )
        logger.warning(
            "closing %s (%s): %s",
            session.terminal_id if session else conn.source,
            exc.reason,
            exc,
            extra=event(
                "protocol_violation",
                line=session.line_id if session else None,
                terminal=session.terminal_id if session else None,
                source=conn.source,
                reason=exc.reason,
            ),
        )

    async def _violation(self, conn: _Conn, exc: HotlineError) -> None:
        """Close a connection that broke the protocol, with the reason. Raises _Closed."""
        self._count_violation(conn, exc)
        code = CLOSE_TOO_BIG if isinstance(exc, TooLarge) else CLOSE_POLICY
        await self._close(conn, code, exc.reason, counted=True)
        raise _Closed

    async def _auth_failed(
        self,
        conn: _Conn,
        exc: AuthenticationError,
        hello: Hello | None = None,
        *,
        blocked: bool = False,
    ) -> None:
        """Count, log and close a failed authentication. From a source that was already
        blocked the close says ``auth_rate_limited`` (1013: try later), counted in
        ``refused_connections_total``, and the log line is at INFO (the block was logged)."""
        now = time.time()
        was_blocked = blocked
        blocked = self.router.sources.auth_failed(conn.source, now)
        self.metrics.inc("auth_failures_total", exc.reason)
        if was_blocked:
            self.metrics.inc("refused_connections_total", "auth_rate_limited")
            self._event("refused", source=conn.source, reason="auth_rate_limited")
            logger.info(  # the block itself was a WARNING; its repeats would flood the log
                "refused %s (blocked source): %s",
                conn.source,
                exc.reason,
                extra=event("connection_refused", source=conn.source, reason="auth_rate_limited"),
            )
            await self._close(conn, CLOSE_TRY_LATER, "auth_rate_limited")
            return
        self._event(
            "auth_failed",
            line=hello.line_id if hello else None,
            terminal=hello.terminal_id if hello else None,
            source=conn.source,
            reason=exc.reason,
        )
        logger.warning(
            "authentication failed from %s%s: %s%s",
            conn.source,
            f" as {hello.terminal_id} of {hello.line_id}" if hello else "",
            exc.reason,
            " (source now blocked)" if blocked else "",
            extra=event(
                "auth_failed",
                line=hello.line_id if hello else None,
                terminal=hello.terminal_id if hello else None,
                source=conn.source,
                reason=exc.reason,
                blocked=blocked,
            ),
        )
        await self._close(conn, CLOSE_POLICY, exc.reason)

    async def _duplicate(self, conn: _Conn, hello: Hello, exc: DuplicateTerminal) -> None:
        """Refuse a newcomer that would replace a connection of the same terminal in a
        supersede loop: counted, logged loudly, the incumbent told with a ``reject``."""
        incumbent = self.router.session_of(hello.line_id, hello.terminal_id)
        where = incumbent.source if incumbent is not None else "?"
        self.metrics.inc("duplicate_terminals_total")
        self._event(
            "duplicate_terminal",
            line=hello.line_id,
            terminal=hello.terminal_id,
            source=conn.source,
            reason=f"already connected from {where}",
        )
        logger.warning(
            "duplicate terminal %s of line %s: a connection from %s refused, the one from %s "
            "kept (%s). Two copies of this terminal (one identity key) are running: stop one.",
            hello.terminal_id,
            hello.line_id,
            conn.source,
            where,
            exc,
            extra=event(
                "duplicate_terminal",
                line=hello.line_id,
                terminal=hello.terminal_id,
                source=conn.source,
                incumbent=where,
            ),
        )
        other = self._conns.get(incumbent.session_id) if incumbent is not None else None
        if other is not None:
            self._queue(other, encode_frame(Reject(None, exc.reason)))
        await self._close(conn, CLOSE_DUPLICATE, exc.reason)

    async def _close(self, conn: _Conn, code: int, reason: str, *, counted: bool = False) -> None:
        if conn.closing:
            return
        conn.closing = True
        if not counted:
            self.metrics.inc("closes_total", reason)
        if conn.writer is not None and conn.writer is not asyncio.current_task():
            conn.writer.cancel()
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code, message=reason.encode()[:120])

    # --- frames from terminals -----------------------------------------------------------

    async def _on_envelope(self, conn: _Conn, session: Session, data: bytes) -> None:
        self.metrics.inc("envelopes_received_total")
        now = time.time()
        try:
            result = self.router.submit(session, data, now)
        except HotlineError as exc:
            self.metrics.inc("envelopes_rejected_total", exc.reason)
            await self._violation(conn, exc)
            return
        if isinstance(result, Refused):
            reason = result.error.reason
            self.metrics.inc("envelopes_rejected_total", reason)
            self._event(
                "rejected", line=session.line_id, terminal=session.terminal_id, reason=reason
            )
            logger.warning(
                "refused %s: %s",
                result.envelope.describe(),
                result.error,
                extra=event(
                    "envelope_refused",
                    line=session.line_id,
                    terminal=session.terminal_id,
                    reason=reason,
                ),
            )
            self._queue(conn, encode_frame(Reject(result.envelope.seq, reason)))
            return
        self.metrics.inc("envelopes_routed_total")
        self._batch.add_routed(result)
        conn.accepted_seq = result.envelope.seq
        for recipient, reason in result.dropped:
            self.metrics.inc("envelopes_rejected_total", reason)
            self._queue(conn, encode_frame(Reject(result.envelope.seq, reason, recipient)))
        for target in result.wake:
            other = self._conns.get(target.session_id)
            if other is not None:
                self._kick(other)

    def _on_ack(self, conn: _Conn, session: Session, upto: int) -> None:
        try:
            removed = self.router.ack(session, upto, time.time())
        except LimitExceeded as exc:
            self._spawn(self._violation_task(conn, exc))
            return
        if removed:
            self.metrics.inc("deliveries_acked_total", n=len(removed))
            self._batch.add_removed(removed)

    async def _violation_task(self, conn: _Conn, exc: HotlineError) -> None:
        with contextlib.suppress(_Closed):
            await self._violation(conn, exc)

    async def _on_charter(self, conn: _Conn, session: Session, data: bytes) -> None:
        if not session.bucket.take(time.time(), min(CHARTER_PUSH_COST, self.limits.burst)):
            await self._violation(
                conn, LimitExceeded("charter pushes too fast", reason="rate_limited")
            )
        try:
            if len(data) > self.limits.max_charter_size:
                raise TooLarge(f"a charter of {len(data)} bytes")
            signed = SignedCharter.from_file_bytes(data)
            if signed.line_id != session.line_id:
                raise CharterError("a charter of another line", reason="wrong_line")
            held = self.router.charter(session.line_id).version
            if signed.version < held:  # refused before any signature is checked
                raise CharterRollback(f"version {signed.version} is older than {held}")
            if signed.version == held:
                return
            current = self.store.accept_charter(signed)
        except HotlineError as exc:
            self.metrics.inc("charter_rejections_total", exc.reason)
            self._event(
                "charter_refused",
                line=session.line_id,
                terminal=session.terminal_id,
                reason=exc.reason,
            )
            logger.warning(
                "refused a charter from %s: %s",
                session.terminal_id,
                exc,
                extra=event(
                    "charter_refused",
                    line=session.line_id,
                    terminal=session.terminal_id,
                    reason=exc.reason,
                ),
            )
            self._queue(conn, encode_frame(Reject(None, exc.reason)))
            return
        self._apply_charter(current)

    # --- frames to terminals -------------------------------------------------------------

    def _queue(self, conn: _Conn, frame: bytes) -> None:
        if not conn.closing:
            conn.control.append(frame)
            self._kick(conn)

    def _kick(self, conn: _Conn) -> None:
        if conn.closing or (conn.writer is not None and not conn.writer.done()):
            return
        conn.writer = asyncio.create_task(self._drain(conn))

    async def _drain(self, conn: _Conn) -> None:
        """Write the connection's control frames, then its deliveries, until none is left."""
        ws = conn.ws
        try:
            while not conn.closing:
                if conn.control:
                    await ws.send_bytes(conn.control.popleft())
                    continue
                session = conn.session
                entries = self.router.take(session, _DELIVER_BATCH) if session else []
                if not entries:
                    return
                for p in entries:
                    await ws.send_bytes(encode_deliver(p.delivery_id, p.data))
                    self.metrics.observe("delivery_latency_seconds", time.time() - p.accepted_at)
                self.metrics.inc("deliveries_sent_total", n=len(entries))
        except (ConnectionError, RuntimeError):
            return  # the reader notices the closed connection and cleans up

    def _schedule_presence(self) -> None:
        if not self._presence_scheduled:
            self._presence_scheduled = True
            asyncio.get_running_loop().call_soon(self._push_presence)

    def _push_presence(self) -> None:
        self._presence_scheduled = False
        for _line_id, online, sessions in self.router.take_presence():
            frame = encode_frame(Presence(online))
            for session in sessions:
                conn = self._conns.get(session.session_id)
                if conn is not None:
                    self._queue(conn, frame)

    # --- persistence ----------------------------------------------------------------------

    def _event(self, kind: str, **fields: str | None) -> None:
        self._batch.add_event(Event(at_ms=int(time.time() * 1000), kind=kind, **fields))

    def _flush(self) -> None:
        """Commit the current batch, then tell senders what is now stored."""
        batch, self._batch = self._batch, WriteBatch()
        reports: list[tuple[_Conn, int]] = []
        for conn in self._conns.values():
            if conn.accepted_seq is not None:
                reports.append((conn, conn.accepted_seq))
                conn.accepted_seq = None
        if batch:
            started = time.perf_counter()
            self.store.write(batch, next_ids=self.router.next_ids())
            self.metrics.observe("store_flush_seconds", time.perf_counter() - started)
            self.metrics.inc("store_flushes_total")
        for conn, seq in reports:
            self._queue(conn, encode_frame(Accepted(seq)))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval_s)
            try:
                self._flush()
            except StateError:
                logger.exception("cannot write the store; will retry")

    async def _expire_loop(self) -> None:
        last_sweep = 0.0
        self._watch_certificate(time.time())
        while True:
            await asyncio.sleep(self.config.expire_interval_s)
            now = time.time()
            self._watch_certificate(now)
            expired = self.router.expire(now)
            if expired:
                self.metrics.inc("deliveries_expired_total", n=len(expired))
                self._batch.add_removed(expired)
                logger.info("%d deliveries expired unacknowledged", len(expired))
            if now - last_sweep >= 30.0:
                last_sweep = now
                try:
                    self.store.sweep(int(now * 1000), int(self.limits.window_s * 1000))
                except StateError:
                    logger.exception("cannot clean the store")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def cert_detail(left_s: float, not_after: float) -> str:
    """How long our certificate has left, in words."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_after))
    if left_s <= 0:
        return f"expired {when}"
    return f"expires {when} (in {left_s / 86_400:.0f} days)"


def listening_line(server: ExchangeServer) -> str:
    """The one JSON line ``hotline exchange serve --json`` prints when ready."""
    return json.dumps(
        {
            "schema": 1,
            "event": "listening",
            "url": server.url,
            "port": server.port,
            "exchange_id": server.exchange_id,
            "lines": server.router.lines(),
        },
        sort_keys=True,
    )
