"""The terminal's web UI: a static page served by the daemon on 127.0.0.1, and its channel.

Security model (docs/ui.md):

* **Loopback only.** The UI listens on a 127.0.0.0/8 address; any other is refused at start.
* **A per-start token as a one-time link.** At start the daemon prints
  ``http://127.0.0.1:PORT/login?token=T``. The first request with ``T`` gets an ``HttpOnly;
  SameSite=Strict`` session cookie (a second random value, never printed) and is redirected
  to ``/``; the link then stops working (a second use is refused). Every other path needs
  the cookie. A new link can be asked for through the control API (``POST /ui/link``).
* **Host and Origin checked.** ``Host`` must be exactly the address and port the UI listens
  on (no DNS rebinding); an ``Origin`` header, when present, must be that same origin, and
  state-changing requests (POST) and the WebSocket must carry it. No CORS headers are ever
  sent, so no other site's script can read a response.
* The page never sees long-term keys: the daemon keeps the identity key, the exchange, the
  call machine, the key agreement and the call log. With ``--engine browser`` the page gets
  the call's SFrame base keys over its WebSocket (``ui.browser_engine``), nothing more.

Paths: ``/login`` (the link), ``/`` (the page), ``/static/...`` (its files), ``/api/status``,
``/api/call`` ``{"target": ID}``, ``/api/answer``, ``/api/decline``, ``/api/hangup``, and
``/api/ws``: the WebSocket that carries every terminal event (the same as the control API's
``/events``) with a status snapshot (and, during a call, a snapshot each second without an
event: counters and link states move without events), and, when the page is the media
engine, the engine's messages both ways; ``/api/hashes``: the engine page's worker's own
WebSocket for its frame hashes (the same checks, and a token bound to the engine page).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from hotline.call.machine import CallState
from hotline.errors import HotlineError, StateError, UsageError
from hotline.httplog import HttpErrorLog

if TYPE_CHECKING:
    from hotline.terminal.daemon import TerminalDaemon
    from hotline.ui.browser_engine import BrowserHub

#: the close code of a hash channel whose token is not the engine page's (the worker stops)
CHANNEL_REFUSED = 4003

log = logging.getLogger("hotline.ui")

COOKIE = "hotline_ui"
#: during a call, a status snapshot is pushed this often when no event came
REFRESH_S = 1.0
STATIC_FILES = frozenset(
    {"app.js", "style.css", "engine.js", "gallery.js", "sframe.js", "worker.js"}
)
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
#: the page's WebSocket and its worker's hash channel: both need the page's Origin
WEBSOCKETS = frozenset({"/api/ws", "/api/hashes"})
LIVE = frozenset({CallState.OUTGOING, CallState.INCOMING, CallState.ACTIVE})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: the page's own files and its loopback origin only; no framing, no inline script
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; worker-src 'self'; connect-src 'self' {ws}; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def parse_ui_address(text: str) -> tuple[str, int]:
    """``--ui [HOST:]PORT`` (default 127.0.0.1:0): only loopback addresses are accepted."""
    host, _, port_text = text.rpartition(":")
    host = host or "127.0.0.1"
    try:
        port = int(port_text)
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise UsageError(f"--ui {text!r}: give 127.0.0.1:PORT") from exc
    if not address.is_loopback or address.version != 4:
        raise UsageError(f"--ui {text!r}: the UI listens on 127.0.0.1 only (loopback)")
    if not 0 <= port < 65536:
        raise UsageError(f"--ui {text!r}: bad port")
    return host, port


def static_text(name: str) -> bytes:
    return resources.files("hotline.ui").joinpath("static", name).read_bytes()


class UiServer:
    """The UI of one running terminal (one per daemon start)."""

    def __init__(self, daemon: TerminalDaemon, hub: BrowserHub | None = None) -> None:
        self.daemon = daemon
        self.hub = hub
        self._login_token: str | None = secrets.token_urlsafe(32)
        self._session = secrets.token_urlsafe(32)
        self.origin = ""  # http://127.0.0.1:PORT once listening
        self._http_log = HttpErrorLog(log, self._count)
        self._sockets: set[web.WebSocketResponse] = set()

    def _count(self, reason: str) -> None:
        self.daemon.count_control_refusal(f"ui_{reason}")

    def login_url(self) -> str:
        """The one-time link (a fresh one if the last was used)."""
        if self._login_token is None:
            self._login_token = secrets.token_urlsafe(32)
        return f"{self.origin}/login?token={self._login_token}"

    # --- checks ------------------------------------------------------------------------------

    def _refusal(self, request: web.Request) -> str | None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if not sockname:
            return "unknown local address"
        host = f"{sockname[0]}:{sockname[1]}"
        if request.headers.get("Host", "") != host:
            return f"Host must be {host}"
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"http://{host}":
            return "a request from another origin"
        if origin is None and (request.method != "GET" or request.path in WEBSOCKETS):
            return "a state-changing request without the page's Origin"
        return None

    def _authenticated(self, request: web.Request) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    def make_app(self) -> web.Application:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            refusal = self._refusal(request)
            if refusal is not None:
                self._http_log.malformed(request.remote, "not_local", refusal)
                return web.Response(status=403, text=f"refused: {refusal}\n")
            if request.path != "/login" and not self._authenticated(request):
                self._count("unauthenticated")
                return web.Response(
                    status=401,
                    text="open the one-time link printed by `hotline terminal run --ui`\n",
                )
            try:
                response = await handler(request)
            except HotlineError as exc:
                status = 409 if isinstance(exc, StateError) else 400
                response = web.json_response(
                    {"error": str(exc), "reason": exc.reason}, status=status
                )
            if not isinstance(response, web.WebSocketResponse):
                ws = self.origin.replace("http://", "ws://")
                response.headers.update(
                    {
                        "Cache-Control": "no-store",
                        "X-Content-Type-Options": "nosniff",
                        "X-Frame-Options": "DENY",
                        "Referrer-Policy": "no-referrer",
                        "Content-Security-Policy": CSP.format(ws=ws),
                    }
                )
            return response

        app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
        app.router.add_get("/login", self._login)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._status)
        app.router.add_post("/api/{command}", self._command)
        app.router.add_get("/api/ws", self._ws)
        app.router.add_get("/api/hashes", self._hash_channel)
        app.on_shutdown.append(self._close_sockets)
        return app

    def make_runner(self) -> web.AppRunner:
        return web.AppRunner(self.make_app(), access_log=None, logger=self._http_log)

    # --- handlers ----------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.StreamResponse:
        supplied = request.query.get("token", "")
        token = self._login_token
        if token is None or not hmac.compare_digest(supplied.encode(), token.encode()):
            self._count("bad_login")
            return web.Response(
                status=403,
                text="this link is wrong or was used already; ask for a new one "
                "(POST /ui/link on the control API)\n",
            )
        self._login_token = None  # one time
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", path="/")
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=static_text("index.html"), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        suffix = name[name.rfind(".") :]
        return web.Response(body=static_text(name), content_type=_TYPES[suffix])

    async def full_status(self, *, media: bool) -> dict[str, Any]:
        status = await self.daemon.status(media=media)
        charter = self.daemon.charter.charter
        status["terminals"] = [
            {
                "id": t.terminal_id,
                "name": t.name,
                "role": str(t.role),
                "language": t.language,
                "site": t.site_id,
                "fingerprint": t.identity_key.fingerprint,
            }
            for t in charter.terminals
        ]
        status["charter_digest"] = charter.digest_code
        status["policy"] = {"kem": charter.policy.kem, "suite": charter.policy.cipher_suite}
        status["engine"] = self.daemon.config.engine
        # the page's camera as the media engine: at most these (--width, --height, --fps)
        settings = self.daemon.config.media
        status["capture"] = {
            "width": settings.width,
            "height": settings.height,
            "fps": settings.fps,
        }
        status["page_engine"] = self.hub is not None and self.hub.connected
        return status

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.full_status(media=True))

    async def _command(self, request: web.Request) -> web.Response:
        command = request.match_info["command"]
        data: dict[str, Any] = {}
        if request.can_read_body:
            try:
                parsed = await request.json()
            except ValueError as exc:
                raise UsageError("request body is not valid JSON") from exc
            if isinstance(parsed, dict):
                data = parsed
        if command == "call":
            target = data.get("target")
            if not isinstance(target, str) or not target:
                raise UsageError("give a target terminal id")
            return web.json_response({"call": await self.daemon.dial(target)})
        actions = {
            "answer": self.daemon.answer,
            "decline": self.daemon.decline,
            "hangup": self.daemon.hangup,
        }
        action = actions.get(command)
        if action is None:
            raise web.HTTPNotFound()
        await action()
        return web.json_response({"ok": True})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=1 << 20)
        await ws.prepare(request)
        self._sockets.add(ws)
        queue = self.daemon.subscribe()
        engine_page = False
        sender = asyncio.create_task(self._pump_events(ws, queue))
        try:
            await ws.send_json({"type": "status", "status": await self.full_status(media=False)})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                if data.get("type") == "engine_hello" and self.hub is not None:
                    engine_page = True
                    self.hub.attach(ws)
                elif engine_page and self.hub is not None:
                    try:
                        self.hub.receive(ws, data)
                    except (ValueError, TypeError, KeyError, AttributeError):
                        self._count("bad_engine_message")  # the page's bug: skip, go on
        finally:
            sender.cancel()
            self.daemon.unsubscribe(queue)
            self._sockets.discard(ws)
            if engine_page and self.hub is not None:
                self.hub.detach(ws)
        return ws

    async def _hash_channel(self, request: web.Request) -> web.WebSocketResponse:
        """The engine page's worker's own channel (authenticated as ``/api/ws`` is: the
        cookie, Host and Origin, by the guard): its first message must carry the token the
        daemon gave the page that is the media engine now; then it carries only that
        worker's frame hash reports (``ui.browser_engine.BrowserHub.channel_receive``)."""
        if self.hub is None:
            raise web.HTTPNotFound()
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=1 << 20)
        await ws.prepare(request)
        self._sockets.add(ws)
        bound = False
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    continue
                if not bound:
                    bound = data.get("type") == "hello" and self.hub.attach_channel(
                        ws, data.get("token")
                    )
                    if not bound:  # not the engine page's worker (any more): refused
                        self._count("bad_hash_channel")
                        await ws.close(code=CHANNEL_REFUSED, message=b"not the engine page")
                        break
                    continue
                try:
                    self.hub.channel_receive(ws, data)
                except (ValueError, TypeError, KeyError, AttributeError):
                    self._count("bad_engine_message")
        finally:
            self._sockets.discard(ws)
            if bound:
                self.hub.detach_channel(ws)
        return ws

    async def _pump_events(
        self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any] | None]
    ) -> None:
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), REFRESH_S)
                except TimeoutError:
                    # no event: during a call the counters and link states still move
                    if self.daemon.call is not None and self.daemon.call.machine.state in LIVE:
                        status = await self.full_status(media=False)
                        await ws.send_json({"type": "status", "status": status})
                    continue
                if event is None:
                    break
                status = await self.full_status(media=False)
                await ws.send_json({"type": "event", "event": event, "status": status})
            await ws.close()

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close()
