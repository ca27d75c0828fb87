"""The terminal's local control API: HTTP + JSON on 127.0.0.1, protected by a bearer token.

Only the operator's own tools get in: a request must name ``Host: 127.0.0.1:<port>``
exactly and carry no ``Origin`` header, so that a web page in the operator's browser cannot
reach the API, not even by DNS rebinding (HTTP 403, counted as ``control_not_local``).

The token and URL are written to ``<terminal>/state/control.json`` (mode 0600) when the
daemon is ready; the CLI (``hotline call ...``) and the demo read them from there.

=======  ==================  ==========================================================
method   path                what
=======  ==================  ==========================================================
GET      /status             terminal, exchange connection, current call and its stats
GET      /events?since=N     events after sequence number N (ring, answered, epoch...)
GET      /events?follow=1    the same, then every new event as it happens: one JSON
                             object a line (``application/x-ndjson``), until the
                             terminal stops (``hotline call watch``; the web UI
                             follows the same events over its WebSocket)
POST     /call               ``{"target": ID}``: ring another terminal of the line
POST     /answer             answer the ringing call
POST     /decline            decline the ringing call
POST     /invite             ``{"target": ID}``: ring a terminal into the running call
POST     /hangup             leave the call
POST     /check              ``{"target": ID, "seconds": S}``: run a readiness check now
GET      /checks             readiness results, newest last
POST     /charter            ``{"charter": FILE TEXT}``: install a newer charter version
                             (verified, kept, handed to the exchange and to every call;
                             ``hotline terminal install-charter``)
POST     /ui/link            a new one-time login link to the web UI (``--ui``)
GET      /metrics            Prometheus text (OpenMetrics on ``Accept``); no token
GET      /livez              200 while the terminal runs its own tasks; no token
GET      /readyz             200 when the line can be relied on, else 503 naming the
                             failed checks (``terminal.metrics.readiness``); no token
=======  ==================  ==========================================================

``/metrics``, ``/livez`` and ``/readyz`` need no token, so that a scraper or supervisor on
the same host can read them, but the same ``Host``/``Origin`` rule: they carry counts,
states and the ids of the line's terminals, never a key, a code or a call id.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from hotline.errors import ExchangeUnavailable, HotlineError, StateError, UsageError
from hotline.httplog import HttpErrorLog
from hotline.terminal.metrics import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    TerminalMetrics,
    readiness,
)

if TYPE_CHECKING:
    from hotline.terminal.daemon import TerminalDaemon
    from hotline.ui.server import UiServer

log = logging.getLogger("hotline.terminal.control")

CONTROL_FILE = "control.json"
#: what a local scraper or supervisor reads without the token
OPEN_PATHS = frozenset({"/metrics", "/livez", "/readyz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HTTP_LOG = web.AppKey("http_log", HttpErrorLog)


def local_origin_refusal(request: web.Request) -> str | None:
    """Why this request may not come from the operator's own tools, or ``None``.

    A web page in the operator's browser can send requests to 127.0.0.1. It always sends an
    ``Origin`` header with them (our CLI never does), and by DNS rebinding it can reach
    127.0.0.1 only under its own host name: so the ``Host`` must be exactly the address
    and port this socket listens on, and any ``Origin`` is refused.
    """
    if "Origin" in request.headers:
        return "requests with an Origin header (from a web page) are refused"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return "unknown local address"
    expected = f"{sockname[0]}:{sockname[1]}"
    if request.headers.get("Host", "") != expected:
        return f"Host must be {expected}"
    return None


def make_app(daemon: TerminalDaemon, token: str, ui: UiServer | None = None) -> web.Application:
    http_log = HttpErrorLog(log, daemon.count_control_refusal)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = local_origin_refusal(request)
        if refusal is not None:
            http_log.malformed(request.remote, "not_local", refusal)
            return web.json_response({"error": refusal}, status=403)
        if request.method == "GET" and request.path in OPEN_PATHS:
            return await handler(request)
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            return web.json_response({"error": "missing or wrong control token"}, status=401)
        try:
            return await handler(request)
        except HotlineError as exc:
            status = 409 if isinstance(exc, StateError) else 400
            return web.json_response({"error": str(exc), "reason": exc.reason}, status=status)

    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except (ValueError, RecursionError, LookupError) as exc:  # bad JSON, nesting, charset
            raise UsageError("request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise UsageError("request body must be a JSON object")
        return data

    def target_of(data: dict[str, Any]) -> str:
        target = data.get("target")
        if not isinstance(target, str) or not target:
            raise UsageError("give a target terminal id")
        return target

    async def status(request: web.Request) -> web.Response:
        return web.json_response(await daemon.status())

    async def events(request: web.Request) -> web.StreamResponse:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError as exc:
            raise UsageError("since must be an integer") from exc
        if request.query.get("follow") not in ("1", "true"):
            return web.json_response(daemon.events_since(since))
        return await follow_events(request, daemon, since)

    async def call(request: web.Request) -> web.Response:
        call_id = await daemon.dial(target_of(await body(request)))
        return web.json_response({"call": call_id})

    async def answer(request: web.Request) -> web.Response:
        await daemon.answer()
        return web.json_response({"ok": True})

    async def decline(request: web.Request) -> web.Response:
        await daemon.decline()
        return web.json_response({"ok": True})

    async def invite(request: web.Request) -> web.Response:
        await daemon.invite(target_of(await body(request)))
        return web.json_response({"ok": True})

    async def hangup(request: web.Request) -> web.Response:
        await daemon.hangup()
        return web.json_response({"ok": True})

    async def check(request: web.Request) -> web.Response:
        data = await body(request)
        seconds = data.get("seconds", 3)
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not 1 <= seconds <= 60
        ):
            raise UsageError("seconds must be a number from 1 to 60")
        return web.json_response(await daemon.check(target_of(data), float(seconds)))

    async def checks(request: web.Request) -> web.Response:
        return web.json_response(daemon.check_history())

    async def charter(request: web.Request) -> web.Response:
        from hotline.charter import SignedCharter  # noqa: PLC0415

        text = (await body(request)).get("charter")
        if not isinstance(text, str):
            raise UsageError("give the charter file's text as 'charter'")
        signed = SignedCharter.from_file_bytes(text.encode("utf-8"))
        before = daemon.charter.version
        await daemon.install_charter(signed)
        return web.json_response(
            {
                "line_id": daemon.charter.line_id,
                "version": daemon.charter.version,
                "previous_version": before,
                "installed": daemon.charter.version > before,
            }
        )

    async def ui_link(request: web.Request) -> web.Response:
        if ui is None:
            raise StateError("this terminal runs without its web UI (start it with --ui)")
        return web.json_response({"url": ui.login_url()})

    metrics = TerminalMetrics(daemon)

    async def metrics_page(request: web.Request) -> web.Response:
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            text, content_type = metrics.render_openmetrics(), OPENMETRICS_CONTENT_TYPE
        else:
            text, content_type = metrics.render(), TEXT_CONTENT_TYPE
        return web.Response(
            body=text.encode("utf-8"),
            headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"},
        )

    async def livez(request: web.Request) -> web.Response:
        if not daemon.running:
            return web.json_response({"status": "stopped"}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = readiness(daemon)
        ready = all(ok for ok, _ in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        }
        return web.json_response(body, status=200 if ready else 503)

    # a charter file may be up to MAX_CHARTER_FILE_SIZE (1 MiB), hex-encoded in JSON
    app = web.Application(middlewares=[auth], client_max_size=3 * 1024 * 1024)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/ui/link", ui_link)
    app[HTTP_LOG] = http_log
    app.router.add_get("/status", status)
    app.router.add_get("/events", events)
    app.router.add_post("/call", call)
    app.router.add_post("/answer", answer)
    app.router.add_post("/decline", decline)
    app.router.add_post("/invite", invite)
    app.router.add_post("/hangup", hangup)
    app.router.add_post("/check", check)
    app.router.add_get("/checks", checks)
    app.router.add_post("/charter", charter)
    return app


async def follow_events(
    request: web.Request, daemon: TerminalDaemon, since: int
) -> web.StreamResponse:
    """Stream the events after ``since`` and then every new one, one JSON line each."""
    queue = daemon.subscribe()  # before the history: no event falls between the two
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    try:
        last = since
        for event in daemon.events_since(since):
            last = event["seq"]
            await resp.write(json.dumps(event).encode() + b"\n")
        while (live := await queue.get()) is not None:
            if live["seq"] > last:
                await resp.write(json.dumps(live).encode() + b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the follower went away
    finally:
        daemon.unsubscribe(queue)
    return resp


def make_runner(daemon: TerminalDaemon, token: str, ui: UiServer | None = None) -> web.AppRunner:
    """The control API's runner: no access log; a malformed request is one counted line
    (``control_<reason>`` in the terminal's refusals), never a traceback."""
    app = make_app(daemon, token, ui)
    return web.AppRunner(app, access_log=None, logger=app[HTTP_LOG])


def write_control_file(state_dir: Path, url: str, token: str, pid: int) -> Path:
    path = state_dir / CONTROL_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token, "pid": pid}, fh)
    os.replace(tmp, path)
    return path


def read_control_file(terminal_dir: Path) -> tuple[str, str]:
    path = terminal_dir / "state" / CONTROL_FILE
    try:
        data = json.loads(path.read_text())
        return str(data["url"]), str(data["token"])
    except FileNotFoundError as exc:
        raise ExchangeUnavailable(
            f"{terminal_dir}: no running terminal (start it with `hotline terminal run`)"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: unreadable control file") from exc


class ControlClient:
    """What the CLI and the demo use to talk to a running terminal."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_terminal(cls, terminal_dir: Path) -> ControlClient:
        return cls(*read_control_file(terminal_dir))

    async def __aenter__(self) -> ControlClient:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def follow(self, since: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Every event after ``since``, then each new one as it happens, until the
        terminal stops."""
        assert self._session is not None, "use `async with ControlClient(...)`"
        url = f"{self.url}/events?follow=1&since={since}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        try:
            async with self._session.get(url, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise UsageError(f"HTTP {resp.status} from {self.url}/events")
                async for line in resp.content:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event
        except aiohttp.ClientError as exc:
            raise ExchangeUnavailable(f"the terminal does not answer at {self.url}") from exc

    async def request(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        assert self._session is not None, "use `async with ControlClient(...)`"
        try:
            async with self._session.request(method, self.url + path, json=data) as resp:
                payload = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise ExchangeUnavailable(
                f"the terminal does not answer at {self.url}: not running? "
                "(start it with `hotline terminal run`)"
            ) from exc
        if resp.status >= 400:
            message = payload.get("error", "") if isinstance(payload, dict) else str(payload)
            if resp.status == 409:
                raise StateError(message)
            raise UsageError(message or f"HTTP {resp.status}")
        return payload
