"""A client of Janus's HTTP API (the core's session/handle protocol and the VideoRoom plugin).

Janus is untrusted (``docs/threat-model.md``): it forwards SFrame-protected frames it cannot
read. Everything it answers is checked here before anyone uses it: each answer is read with a
size limit (:data:`MAX_ANSWER_BYTES`), must be a JSON object of the documented shape, ids are
positive integers below 2**53, SDP is text of bounded size, lists are bounded. An answer that
is not is a :class:`~hotline.errors.SfuProtocolError`; an error Janus reports is a
:class:`~hotline.errors.JanusError` with its code; no answer is
:class:`~hotline.errors.SfuUnavailable`.

The protocol (``janus.c``, ``janus_videoroom.c`` in janus-gateway 1.1)::

    POST /janus                {"janus": "create"}               -> success, data.id = session
    POST /janus/<session>      {"janus": "attach", "plugin": ..} -> success, data.id = handle
    POST /janus/<session>      {"janus": "keepalive"}            -> ack
    GET  /janus/<session>?maxev=N                                 -> events (long poll, ~30 s)
    POST /janus/<session>/<handle> {"janus": "message", "body": {...}, "jsep": {...}}
        synchronous plugin requests (create, destroy, exists): success + plugindata
        asynchronous ones (join, publish, start, leave): ack, then an event on the long poll
        with the same transaction

:class:`JanusSession` is one session (create, keep alive, long-poll, attach, destroy);
:class:`JanusHandle` one plugin handle; :class:`VideoRoomHandle` the VideoRoom requests a
conference uses. Only ``require_e2ee`` rooms are made, and a publisher always says
``e2ee: true`` (Janus refuses one that does not, with error 433, and keeps its hands off the
payload: no RED/simulcast rewriting of the frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from hotline.charter.model import is_loopback_host
from hotline.errors import JanusError, SfuProtocolError, SfuUnavailable, UsageError

log = logging.getLogger(__name__)

VIDEOROOM: Final = "janus.plugin.videoroom"
#: an answer larger than this is refused before it is parsed (an SDP is a few KB)
MAX_ANSWER_BYTES: Final = 256 * 1024
MAX_SDP_BYTES: Final = 64 * 1024
#: events one long poll may return
MAX_EVENTS_PER_POLL: Final = 16
#: publishers listed in one answer
MAX_FEEDS: Final = 64
MAX_DISPLAY: Final = 256
MAX_REASON: Final = 200
#: Janus ids are JSON numbers: integers that a double holds exactly
MAX_ID: Final = (1 << 53) - 1
#: a long poll that returns faster than this is followed by a pause of this length
MIN_POLL_S: Final = 0.02
#: events waiting for a handle's reader; older ones are dropped (and counted) beyond this
MAX_QUEUED_EVENTS: Final = 256
#: Janus core error "No such session" (janus.h): the SFU restarted or timed our session out
SESSION_NOT_FOUND: Final = 458
#: the long poll failing (no answer, refused, garbage) this long fails the session; a
#: glitch shorter than this on the API path leaves a conference whose media flows alone
POLL_FAILING_S: Final = 5.0


# --- checking what Janus says ---------------------------------------------------------------


def _clip(text: object, limit: int = MAX_REASON) -> str:
    """What the SFU said, for an error message or a log line: clipped, and with newlines and
    other control characters escaped (an SFU's text never starts a log line of its own)."""
    s = text if isinstance(text, str) else repr(text)
    s = s if len(s) <= limit else s[:limit] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SfuProtocolError(f"Janus {what}: expected a JSON object, got {type(value).__name__}")
    return value


def janus_id(value: object, what: str) -> int:
    """A Janus id (session, handle, room, feed): a positive integer below 2**53."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise SfuProtocolError(f"Janus {what}: {_clip(value, 40)} is not a valid id")
    return value


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value.encode()) > limit:
        raise SfuProtocolError(f"Janus {what}: expected text of at most {limit} bytes")
    return value


async def read_limited(resp: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The body of ``resp``, or :class:`SfuProtocolError` once it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16384):
        size += len(chunk)
        if size > limit:
            raise SfuProtocolError(f"Janus answer passes {limit} bytes: too large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(body: bytes, what: str) -> dict[str, Any] | list[Any]:
    if len(body) > MAX_ANSWER_BYTES:
        raise SfuProtocolError(f"Janus {what}: answer of {len(body)} bytes is too large")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SfuProtocolError(f"Janus {what}: the answer is not JSON") from exc
    if not isinstance(value, dict | list):
        raise SfuProtocolError(f"Janus {what}: the answer is not a JSON object")
    return value


def _raise_core_error(msg: Mapping[str, Any], what: str) -> None:
    if msg.get("janus") == "error":
        err = _object(msg.get("error"), f"{what} error")
        code = err.get("code")
        raise JanusError(
            code if isinstance(code, int) and not isinstance(code, bool) else 0,
            _clip(err.get("reason", "")),
            request=what,
        )


def plugin_data(msg: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The plugin's answer inside ``msg`` (``plugindata.data``); a plugin error raises."""
    pd = _object(msg.get("plugindata"), f"{what} plugindata")
    data = _object(pd.get("data"), f"{what} plugindata.data")
    if "error_code" in data or "error" in data:
        code = data.get("error_code")
        raise JanusError(
            code if isinstance(code, int) and not isinstance(code, bool) else 0,
            _clip(data.get("error", "")),
            request=what,
        )
    return data


def jsep_sdp(msg: Mapping[str, Any], kind: str, what: str) -> str:
    """The SDP of type ``kind`` ("offer" or "answer") that ``msg`` carries."""
    jsep = _object(msg.get("jsep"), f"{what} jsep")
    if jsep.get("type") != kind:
        raise SfuProtocolError(
            f"Janus {what}: expected an SDP {kind}, got {_clip(jsep.get('type'), 20)}"
        )
    return _text(jsep.get("sdp"), f"{what} SDP", MAX_SDP_BYTES)


@dataclass(frozen=True)
class Feed:
    """A publisher in a room as Janus lists it. Untrusted: ``display`` is what the publisher
    (or Janus) says, and only names whose keys will decide which frames are accepted."""

    feed_id: int
    display: str


def parse_feeds(value: object, what: str) -> tuple[Feed, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_FEEDS:
        raise SfuProtocolError(f"Janus {what}: expected a list of at most {MAX_FEEDS} publishers")
    feeds = []
    for i, item in enumerate(value):
        entry = _object(item, f"{what}[{i}]")
        display = entry.get("display", "")
        feeds.append(
            Feed(
                janus_id(entry.get("id"), f"{what}[{i}].id"),
                _text(display, f"{what}[{i}].display", MAX_DISPLAY),
            )
        )
    return tuple(feeds)


# --- session and handles ----------------------------------------------------------------------


def check_url(url: str, tls_fingerprint: bytes | None) -> None:
    """http:// only to a loopback address; https:// only with a pinned certificate."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        if tls_fingerprint is None:
            raise UsageError(f"SFU {url}: https needs a pinned TLS certificate in the charter")
    elif parts.scheme == "http":
        if not is_loopback_host(host):
            raise UsageError(f"SFU {url}: plain http is only allowed to a loopback address")
    else:
        raise UsageError(f"SFU {url}: expected http://127.0.0.1:PORT/janus or https://...")


@dataclass
class JanusEvent:
    """One event Janus pushed for a handle (``janus``: event, webrtcup, media, hangup, ...)."""

    kind: str
    message: dict[str, Any]


class JanusSession:
    """One Janus session over HTTP: create, keep alive, long-poll events, attach, destroy.

    ``tls_fingerprint``: SHA-256 of the DER certificate of an https SFU (the charter's pin;
    no certificate authority is trusted). Every request waits at most ``request_timeout_s``.
    """

    def __init__(
        self,
        url: str,
        *,
        tls_fingerprint: bytes | None = None,
        request_timeout_s: float = 10.0,
        keepalive_s: float = 25.0,
        poll_timeout_s: float = 45.0,
    ) -> None:
        check_url(url, tls_fingerprint)
        self.url = url.rstrip("/")
        self._ssl: aiohttp.Fingerprint | bool = (
            aiohttp.Fingerprint(tls_fingerprint) if tls_fingerprint is not None else False
        )
        self._request_timeout = request_timeout_s
        self._keepalive_s = keepalive_s
        self._poll_timeout = poll_timeout_s
        self._http: aiohttp.ClientSession | None = None
        self.session_id: int | None = None
        self._handles: dict[int, JanusHandle] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._tx = itertools.count(1)
        self._tx_prefix = secrets.token_hex(4)
        #: what went wrong with the SFU so far, by reason (shown in the call's status)
        self.stats: dict[str, int] = {}
        self.failure: Exception | None = None
        #: why the session failed, a fixed word (never the SFU's own text: that is
        #: untrusted, and the reason goes into the call log): see :meth:`_fail`
        self.failure_reason: str | None = None

    def _count(self, reason: str) -> None:
        self.stats[reason] = self.stats.get(reason, 0) + 1

    def _transaction(self) -> str:
        return f"{self._tx_prefix}-{next(self._tx)}"

    async def __aenter__(self) -> JanusSession:
        await self.create()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- HTTP --------------------------------------------------------------------------

    async def _post(
        self, path: str, body: dict[str, Any], what: str, tx: str | None = None
    ) -> dict[str, Any]:
        assert self._http is not None
        if self.failure is not None:  # nothing more is asked of a session that failed
            raise SfuUnavailable(str(self.failure))
        tx = tx or self._transaction()
        body = {**body, "transaction": tx}
        try:
            async with self._http.post(
                self.url + path,
                json=body,
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            ) as resp:
                raw = await read_limited(resp)
        except aiohttp.ServerFingerprintMismatch as exc:
            self._count("tls_pin_mismatch")
            raise SfuUnavailable(f"SFU {self.url}: TLS certificate is not the pinned one") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._count("unreachable")
            raise SfuUnavailable(f"SFU {self.url} did not answer {what}: {_clip(exc)}") from exc
        msg = _object(parse_answer(raw, what), what)
        try:
            _raise_core_error(msg, what)
        except JanusError as exc:
            if exc.code == SESSION_NOT_FOUND and path:  # the SFU restarted or timed us out
                self._fail(SfuUnavailable(f"SFU {self.url}: no such session"), "no_such_session")
            raise
        if msg.get("transaction") != tx:
            self._count("wrong_transaction")
            raise SfuProtocolError(f"Janus {what}: the answer is for another transaction")
        msg["_transaction"] = tx
        return msg

    async def create(self) -> int:
        """Create the Janus session and start its keepalive and long poll."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        msg = await self._post("", {"janus": "create"}, "create session")
        if msg.get("janus") != "success":
            raise SfuProtocolError("Janus create session: no success")
        self.session_id = janus_id(_object(msg.get("data"), "create data").get("id"), "session")
        self._tasks = [
            asyncio.create_task(self._poll(), name=f"janus-poll-{self.session_id}"),
            asyncio.create_task(self._keepalive(), name=f"janus-keepalive-{self.session_id}"),
        ]
        return self.session_id

    async def attach(self, plugin: str = VIDEOROOM) -> JanusHandle:
        msg = await self._post(
            f"/{self.session_id}", {"janus": "attach", "plugin": plugin}, "attach"
        )
        if msg.get("janus") != "success":
            raise SfuProtocolError("Janus attach: no success")
        handle_id = janus_id(_object(msg.get("data"), "attach data").get("id"), "handle")
        handle = JanusHandle(self, handle_id)
        self._handles[handle_id] = handle
        return handle

    async def _keepalive(self) -> None:
        while not self._closed and self.failure is None:
            await asyncio.sleep(self._keepalive_s)
            if self._closed or self.failure is not None:
                return
            try:
                await self._post(f"/{self.session_id}", {"janus": "keepalive"}, "keepalive")
            except (SfuUnavailable, SfuProtocolError, JanusError) as exc:
                if self.failure is None:  # 458 failed the session in _post: said there
                    log.warning("SFU keepalive failed: %s", exc)

    async def _poll(self) -> None:
        assert self._http is not None
        failures = 0
        failing_since = 0.0
        url = f"{self.url}/{self.session_id}?maxev={MAX_EVENTS_PER_POLL}"
        while not self._closed and self.failure is None:
            began = asyncio.get_running_loop().time()
            try:
                async with self._http.get(
                    url, ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=self._poll_timeout)
                ) as resp:
                    if resp.status == 404:  # Janus knows the session no more (it restarted)
                        self._fail(
                            SfuUnavailable(f"SFU {self.url}: no such session"), "no_such_session"
                        )
                        return
                    raw = await read_limited(resp)
                answer = parse_answer(raw, "events")
                failures = 0
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, SfuProtocolError) as exc:
                now = asyncio.get_running_loop().time()
                failing_since = failing_since if failures else now
                failures += 1
                self._count("poll_failed")
                if failures >= 3 and now - failing_since >= POLL_FAILING_S:
                    self._fail(
                        SfuUnavailable(f"SFU {self.url}: events failed: {_clip(exc)}"),
                        "events_failed",
                    )
                    return
                await asyncio.sleep(min(0.2 * failures, 1.0))
                continue
            if asyncio.get_running_loop().time() - began < MIN_POLL_S:
                await asyncio.sleep(
                    MIN_POLL_S
                )  # Janus holds a poll; an SFU that does not is not spun on
            events = answer if isinstance(answer, list) else [answer]
            if len(events) > MAX_EVENTS_PER_POLL:
                self._count("too_many_events")
                events = events[:MAX_EVENTS_PER_POLL]
            for item in events:
                if self.failure is not None:
                    return
                if isinstance(item, dict):
                    self._dispatch(item)
                else:
                    self._count("malformed_event")

    def _dispatch(self, msg: dict[str, Any]) -> None:
        log.debug("Janus event: %s", _clip(msg, 400))
        kind = msg.get("janus")
        if kind == "keepalive":
            return
        if kind == "error" and msg.get("session_id") is None:  # an error of the session
            self._fail(SfuUnavailable(f"SFU {self.url}: {_clip(msg.get('error'))}"), "error")
            return
        if kind == "timeout":  # Janus timed our session out: every handle is gone with it
            self._fail(SfuUnavailable(f"SFU {self.url}: our session timed out"), "timed_out")
            return
        tx = msg.get("transaction")
        if isinstance(tx, str) and kind == "event":
            future = self._waiting.pop(tx, None)
            if future is not None and not future.done():
                future.set_result(msg)
                return
        sender = msg.get("sender")
        handle = self._handles.get(sender) if isinstance(sender, int) else None
        if handle is None or not isinstance(kind, str):
            self._count("unrouted_event")
            return
        handle.push(JanusEvent(kind, msg))

    def _fail(self, exc: Exception, reason: str) -> None:
        """The session is gone (``reason``: no_such_session, timed_out, error,
        events_failed): every request and handle fails from now on. Once."""
        if self.failure is not None:
            return
        self.failure, self.failure_reason = exc, reason
        self._count(f"session_{reason}")
        log.warning("%s", exc)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)
        self._waiting.clear()
        for handle in self._handles.values():
            handle.push(JanusEvent("failed", {}))

    def _expect(self, tx: str) -> asyncio.Future[dict[str, Any]]:
        if self.failure is not None:  # raised here: a future nobody awaits would be logged
            raise SfuUnavailable(str(self.failure))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[tx] = future
        return future

    async def close(self) -> None:
        """Destroy the session (every handle with it) and stop polling. Bounded in time."""
        if self._closed:
            return
        self._closed = True
        if self.session_id is not None and self._http is not None and self.failure is None:
            with contextlib.suppress(SfuUnavailable, SfuProtocolError, JanusError):
                await self._post(f"/{self.session_id}", {"janus": "destroy"}, "destroy session")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SfuUnavailable("the SFU session was closed"))
        if self._http is not None:
            await self._http.close()
            self._http = None


class JanusHandle:
    """One handle attached to a plugin in a :class:`JanusSession`."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.handle_id = handle_id
        self.events: asyncio.Queue[JanusEvent] = asyncio.Queue()
        self.dropped_events = 0

    def push(self, event: JanusEvent) -> None:
        if self.events.qsize() >= MAX_QUEUED_EVENTS:
            self.events.get_nowait()
            self.dropped_events += 1
        self.events.put_nowait(event)

    @property
    def _path(self) -> str:
        return f"/{self.session.session_id}/{self.handle_id}"

    async def request(self, body: dict[str, Any], what: str) -> dict[str, Any]:
        """A synchronous plugin request: its ``plugindata.data`` (a plugin error raises)."""
        msg = await self.session._post(self._path, {"janus": "message", "body": body}, what)
        if msg.get("janus") != "success":
            raise SfuProtocolError(f"Janus {what}: expected success, got {_clip(msg.get('janus'))}")
        return plugin_data(msg, what)

    async def message(
        self,
        body: dict[str, Any],
        what: str,
        *,
        jsep: dict[str, Any] | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """An asynchronous plugin request: the whole event that answers it (``plugindata``
        checked for errors; ``jsep`` left for the caller)."""
        payload: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        tx = self.session._transaction()
        # waiting before we ask: the event may come on the long poll before the ack here
        future = self.session._expect(tx)
        try:
            msg = await self.session._post(self._path, payload, what, tx)
            if msg.get("janus") == "success":  # some "asynchronous" requests answer at once
                plugin_data(msg, what)
                return msg
            if msg.get("janus") != "ack":
                raise SfuProtocolError(f"Janus {what}: expected ack, got {_clip(msg.get('janus'))}")
            event = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise SfuUnavailable(f"SFU {self.session.url} did not answer {what} in time") from exc
        finally:
            left = self.session._waiting.pop(tx, None) or future
            if left.done() and not left.cancelled():
                left.exception()  # read: a failure nobody awaited is not logged as lost
            else:
                left.cancel()
        if event.get("sender") != self.handle_id:
            raise SfuProtocolError(f"Janus {what}: the answer came for another handle")
        plugin_data(event, what)
        return event

    async def trickle_done(self) -> None:
        """Tell Janus our candidates are all in the SDP (aiortc gathers before it offers)."""
        await self.session._post(
            self._path, {"janus": "trickle", "candidate": {"completed": True}}, "trickle"
        )

    async def detach(self) -> None:
        self.session._handles.pop(self.handle_id, None)
        with contextlib.suppress(SfuUnavailable, SfuProtocolError, JanusError):
            await self.session._post(self._path, {"janus": "detach"}, "detach")


# --- the VideoRoom plugin -----------------------------------------------------------------------


@dataclass(frozen=True)
class Joined:
    """A publisher's place in a room: its feed, its private id, and who publishes already."""

    room: int
    feed_id: int
    private_id: int
    publishers: tuple[Feed, ...]


class VideoRoomHandle:
    """The VideoRoom requests of a conference over one :class:`JanusHandle`."""

    def __init__(self, handle: JanusHandle) -> None:
        self.handle = handle

    async def create_room(
        self, room: int, *, publishers: int, secret: str, description: str = "hotline"
    ) -> int:
        """Create a private ``require_e2ee`` room for VP8 + Opus (no recording, no
        audio-level events): its id."""
        data = await self.handle.request(
            {
                "request": "create",
                "room": room,
                "permanent": False,
                "description": description[:64],
                "secret": secret,
                "is_private": True,
                "publishers": publishers,
                "require_e2ee": True,
                "audiocodec": "opus",
                "videocodec": "vp8",
                "record": False,
                "audiolevel_event": False,
                "notify_joining": False,
                "bitrate": 0,
                "fir_freq": 0,
            },
            "create room",
        )
        if data.get("videoroom") != "created":
            raise SfuProtocolError("Janus create room: no 'created'")
        return janus_id(data.get("room"), "room")

    async def destroy_room(self, room: int, *, secret: str) -> None:
        data = await self.handle.request(
            {"request": "destroy", "room": room, "secret": secret, "permanent": False},
            "destroy room",
        )
        if data.get("videoroom") != "destroyed":
            raise SfuProtocolError("Janus destroy room: no 'destroyed'")

    async def participants(self, room: int) -> int:
        """How many participants the room has (``listparticipants``)."""
        data = await self.handle.request(
            {"request": "listparticipants", "room": room}, "listparticipants"
        )
        listed = data.get("participants")
        if not isinstance(listed, list) or len(listed) > MAX_FEEDS:
            raise SfuProtocolError("Janus listparticipants: expected a bounded list")
        return len(listed)

    async def exists(self, room: int) -> bool:
        data = await self.handle.request({"request": "exists", "room": room}, "exists")
        return data.get("exists") is True

    async def join_publisher(
        self, room: int, display: str, *, feed_id: int | None = None
    ) -> Joined:
        body: dict[str, Any] = {
            "request": "join",
            "ptype": "publisher",
            "room": room,
            "display": display[:MAX_DISPLAY],
        }
        if feed_id is not None:
            body["id"] = feed_id
        event = await self.handle.message(body, "join as publisher")
        data = plugin_data(event, "join as publisher")
        if data.get("videoroom") != "joined":
            raise SfuProtocolError("Janus join as publisher: no 'joined'")
        return Joined(
            room=janus_id(data.get("room"), "joined room"),
            feed_id=janus_id(data.get("id"), "feed id"),
            private_id=janus_id(data.get("private_id"), "private id"),
            publishers=parse_feeds(data.get("publishers"), "publishers"),
        )

    async def publish(self, offer_sdp: str, *, e2ee: bool = True) -> str:
        """Publish our upstream (its SDP offer): Janus's SDP answer. ``e2ee`` must be true in
        a ``require_e2ee`` room (Janus refuses the publisher otherwise, error 433)."""
        body: dict[str, Any] = {"request": "publish", "audio": True, "video": True}
        if e2ee:
            body["e2ee"] = True
        event = await self.handle.message(
            body,
            "publish",
            jsep={"type": "offer", "sdp": offer_sdp, **({"e2ee": True} if e2ee else {})},
        )
        await self.handle.trickle_done()  # every candidate is in the offer
        return jsep_sdp(event, "answer", "publish")

    async def subscribe(self, room: int, feed_id: int, *, private_id: int | None) -> str:
        """Subscribe this handle to ``feed_id``: Janus's SDP offer (answer with :meth:`start`)."""
        body: dict[str, Any] = {
            "request": "join",
            "ptype": "subscriber",
            "room": room,
            "streams": [{"feed": feed_id}],
        }
        if private_id is not None:
            body["private_id"] = private_id
        event = await self.handle.message(body, "subscribe")
        data = plugin_data(event, "subscribe")
        if data.get("videoroom") != "attached":
            raise SfuProtocolError("Janus subscribe: no 'attached'")
        return jsep_sdp(event, "offer", "subscribe")

    async def start(self, answer_sdp: str) -> None:
        await self.handle.message(
            {"request": "start"}, "start", jsep={"type": "answer", "sdp": answer_sdp}
        )
        await self.handle.trickle_done()

    async def leave(self) -> None:
        with contextlib.suppress(SfuUnavailable, SfuProtocolError, JanusError):
            await self.handle.message({"request": "leave"}, "leave", timeout=5.0)


def pin_from_hex(value: str) -> bytes:
    """A charter pin ``sha256:<64 hex>`` as the 32 bytes aiohttp checks."""
    if not value.startswith("sha256:") or len(value) != 71:
        raise UsageError(f"TLS pin {value!r}: expected sha256:<64 hex digits>")
    return bytes.fromhex(value[7:])


__all__ = [
    "VIDEOROOM",
    "Feed",
    "JanusEvent",
    "JanusHandle",
    "JanusSession",
    "Joined",
    "VideoRoomHandle",
    "janus_id",
    "pin_from_hex",
]


async def reachable(url: str, tls_fingerprint: bytes | None, timeout_s: float = 5.0) -> None:
    """Create and destroy one Janus session: the SFU answers at ``url`` (with the pinned
    certificate). Raises :class:`SfuUnavailable` or :class:`SfuProtocolError` otherwise."""
    session = JanusSession(url, tls_fingerprint=tls_fingerprint, request_timeout_s=timeout_s)
    try:
        await session.create()
    finally:
        await session.close()  # also when create failed: no HTTP session is left open
