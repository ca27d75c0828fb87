"""The browser media engine: the terminal's open web page does WebRTC and the frame crypto.

The daemon keeps the identity key, the exchange, the call machine, the key agreement (HPKE)
and the call log. The page (``static/engine.js``, ``static/worker.js``) makes the peer
connections with the browser's own WebRTC (camera, microphone, jitter buffer, FEC) and
protects every encoded frame with SFrame in an ``RTCRtpScriptTransform`` worker, in the
same format as :mod:`hotline.e2ee.media`. What crosses the page's authenticated WebSocket:

daemon -> page   ``{"type": "engine", "id": N, "op": "open"|"offer"|"accept"|"answer"|
                 "show"|"close"|"end", "link": L, ...}`` (each answered by a reply; ``open``
                 has a ``mode``: ``mesh``, or ``publish`` / ``subscribe`` for a conference
                 through the SFU, see ``ui.browser_conference``), and
                 ``{"type": "keys", "op": "install"|"send"|"pause"|"erase_through"|"erase"|
                 "forget", ...}``: the call's SFrame base keys (base64), never a long-term key
page -> daemon   ``{"type": "reply", "id": N, "ok": true, "sdp": ...}``,
                 ``{"type": "link", "link": L, "state": S}`` (connection state), and
                 ``{"type": "stats", ...}`` twice a second: per link the frames decrypted
                 (liveness watches them) and shown; the worker's counters (frames
                 protected, decrypted, decrypted by sender, rejected by reason, refused
                 by reason); and the
                 hash of every frame protected and accepted since the last report
                 (``hashes``: ``sent`` [[kid, ctr, hex]], ``received`` [[kid, ctr, hex,
                 member]], ``overflow``; kid and ctr as decimal strings), which the daemon
                 signs and checks (signed frame digests, docs/protocol.md §11); and
                 ``{"type": "hashes", ...}`` five times a second: the hashes and the
                 worker's counters alone, so that they meet the digests' 2 s deadline
                 (only while the worker's own channel is not open, see below)
daemon -> page   ``{"type": "engine", "op": "hash_channel", "token": T}`` when the page
                 becomes the media engine: its worker opens ``/api/hashes`` (the same
                 origin: the login cookie, Host and Origin are checked as for ``/api/ws``),
                 says ``{"type": "hello", "token": T}``, and from then on sends its
                 ``{"type": "hashes", ...}`` reports itself, ten times a second, off the
                 page's main thread (which a conference can keep busy for seconds); the
                 token binds that channel to the engine page: another page's, or one sent
                 after the page stopped being the engine, is refused. Each report's
                 ``hashes.since`` is when its oldest hash was recorded (wall clock, ms):
                 the daemon keeps how late reports come (``hash_report_ms``)

Fail closed: with no page open a link cannot be made (the call shows it); the page drops
every frame it cannot protect or authenticate, and counts it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hotline.call.media_engine import EngineFactory, MediaLink, Received
from hotline.e2ee.frame_digest import FRAME_HASH_SIZE, FrameHashes, ReceivedFrame, SentFrame
from hotline.e2ee.media import DEFAULT_HASH_BUFFER, KeySink, MediaStats
from hotline.e2ee.sframe import MAX_EPOCH, CipherSuite, suite_by_name
from hotline.errors import SdpError, StateError
from hotline.media.stats import RECV, FrameEvent
from hotline.media.turn import IceSettings, select_ice
from hotline.sfu.room import ConferenceSlot
from hotline.ui.browser_conference import PageConference

if TYPE_CHECKING:
    from hotline.sfu.topology import ConferenceSpec

log = logging.getLogger("hotline.ui.engine")

#: how long the page may take to answer an engine request (an offer gathers candidates)
REQUEST_TIMEOUT_S = 10.0
#: the suites the page's WebCrypto implements
PAGE_SUITES = frozenset({"AES_128_GCM_SHA256_128", "AES_256_GCM_SHA512_128"})
_MAX_FIELD = (1 << 64) - 1


def _counter(value: object) -> int:
    """A KID or counter from the page (a decimal string): raises ValueError if it is not."""
    if not isinstance(value, str) or not value.isdigit() or len(value) > 20:
        raise ValueError("not a decimal counter")
    n = int(value)
    if n > _MAX_FIELD:
        raise ValueError("counter out of range")
    return n


def _hash(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * FRAME_HASH_SIZE:
        raise ValueError("not a frame hash")
    return bytes.fromhex(value)


def parse_page_hashes(data: Mapping[str, Any]) -> FrameHashes:
    """The frame hashes in a page's stats report; malformed entries are left out and
    counted as overflow (the daemon then signs or verifies fewer frames: fail closed)."""
    sent: list[SentFrame] = []
    received: list[ReceivedFrame] = []
    bad = 0
    raw_sent, raw_received = data.get("sent"), data.get("received")
    for raw in (raw_sent, raw_received):  # more than one report may hold: cut, and counted
        if isinstance(raw, list) and len(raw) > DEFAULT_HASH_BUFFER:
            bad += len(raw) - DEFAULT_HASH_BUFFER
    for entry in raw_sent[:DEFAULT_HASH_BUFFER] if isinstance(raw_sent, list) else ():
        try:
            kid, ctr, h = entry
            sent.append(SentFrame(_counter(kid), _counter(ctr), _hash(h)))
        except (TypeError, ValueError):
            bad += 1
    for entry in raw_received[:DEFAULT_HASH_BUFFER] if isinstance(raw_received, list) else ():
        try:
            kid, ctr, h, member = entry
            if not isinstance(member, str) or not 0 < len(member) <= 128:
                raise ValueError("not a member id")
            received.append(ReceivedFrame(_counter(kid), _counter(ctr), _hash(h), member))
        except (TypeError, ValueError):
            bad += 1
    overflow = data.get("overflow")
    dropped = overflow if isinstance(overflow, int) and not isinstance(overflow, bool) else 0
    return FrameHashes(tuple(sent), tuple(received), bad + max(0, dropped))


def _by_sender(value: object) -> dict[str, int]:
    """The page's frames accepted per sender (its worker's count): well-formed entries only."""
    if not isinstance(value, dict):
        return {}
    return {
        str(member)[:128]: count
        for member, count in list(value.items())[:256]
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0
    }


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode()


#: frame hashes of the page's reports held until the call takes them (the worker's own
#: bound, ``MAX_HASHES`` in static/worker.js)
MAX_HELD_HASHES = 8192

#: the WebSocket close code that tells a page another page took over as the media engine
#: (``static/app.js`` then stops its engine and does not reconnect)
SUPERSEDED = 4001


class BrowserHub:
    """The one page that is this terminal's media engine, and the channel to it."""

    def __init__(self) -> None:
        self._ws: web.WebSocketResponse | None = None
        self._out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.engines: dict[str, BrowserEngine] = {}
        #: the page's last statistics (also kept after the call)
        self.last_stats: dict[str, Any] = {}
        self._closing: set[asyncio.Task[bool]] = set()
        #: the engine page's worker's hash channel, and the token that opens it
        self._channel: web.WebSocketResponse | None = None
        self._channel_token: str | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def _close_later(self, ws: web.WebSocketResponse, code: int, message: bytes) -> None:
        if not ws.closed:
            task = asyncio.create_task(ws.close(code=code, message=message))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def attach(self, ws: web.WebSocketResponse) -> None:
        """``ws`` (an authenticated page) is the media engine from now on."""
        old = self._ws
        if old is not None and old is not ws:
            self._fail_pending("another page took over as the media engine")
            # the old page stops its engine and does not reconnect
            self._close_later(old, SUPERSEDED, b"superseded")
        self._ws = ws
        self._out = asyncio.Queue()
        if self._writer is not None:
            self._writer.cancel()
        self._writer = asyncio.create_task(self._write(ws, self._out))
        log.info("a page is this terminal's media engine")
        # its worker's own channel for the frame hashes: a fresh token, the old one closed
        self._end_channel()
        self._channel_token = secrets.token_urlsafe(32)
        self._out.put_nowait({"type": "engine", "op": "hash_channel", "token": self._channel_token})
        for engine in self.engines.values():  # a call in progress: its keys, again
            engine.restarted()
            engine.sink.replay()

    def _end_channel(self) -> None:
        self._channel_token = None
        channel, self._channel = self._channel, None
        if channel is not None:
            self._close_later(channel, 4003, b"not the engine page")

    def attach_channel(self, ws: web.WebSocketResponse, token: object) -> bool:
        """The hash channel ``ws`` (authenticated like the page) says ``token``: it is the
        engine page's worker's if that is the token the engine page got."""
        expected = self._channel_token
        if (
            expected is None
            or not self.connected
            or not isinstance(token, str)
            or not hmac.compare_digest(token.encode(), expected.encode())
        ):
            return False
        old, self._channel = self._channel, ws
        if old is not None and old is not ws:
            self._close_later(old, 4003, b"replaced")
        log.info("the engine page's worker sends its frame hashes on its own channel")
        return True

    def detach_channel(self, ws: web.WebSocketResponse) -> None:
        if self._channel is ws:
            self._channel = None

    @property
    def channel_open(self) -> bool:
        return self._channel is not None and not self._channel.closed

    def channel_receive(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        """A message on the worker's hash channel: hash reports only, while it is the
        engine page's."""
        if ws is not self._channel or data.get("type") != "hashes":
            return
        target = self.engines.get(str(data.get("call")))
        if target is not None:
            target.on_stats(data, via="worker")

    def detach(self, ws: web.WebSocketResponse) -> None:
        if self._ws is ws:
            self._ws = None
            self._end_channel()
            if self._writer is not None:
                self._writer.cancel()
                self._writer = None
            self._fail_pending("the page closed")
            for engine in self.engines.values():
                engine.page_gone()

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SdpError(f"media engine page: {reason}"))
        self._pending.clear()

    async def _write(self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            while True:
                await ws.send_json(await queue.get())

    def post(self, message: dict[str, Any]) -> None:
        """Send in order, without waiting (key operations come from synchronous code)."""
        if not self.connected:
            log.warning(
                "no media engine page: %s %s not delivered", message["type"], message.get("op")
            )
            return
        self._out.put_nowait(message)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        if not self.connected:
            raise StateError("no page is open as this terminal's media engine (open the UI link)")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._out.put_nowait({**message, "type": "engine", "id": request_id})
        try:
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError as exc:
            raise SdpError(f"the page did not answer {message.get('op')} in time") from exc
        finally:
            self._pending.pop(request_id, None)
        if not reply.get("ok"):
            raise SdpError(f"the page refused {message.get('op')}: {reply.get('error')}")
        return reply

    def receive(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if ws is not self._ws:
            return
        kind = data.get("type")
        if kind == "reply":
            future = self._pending.get(data.get("id", -1))
            if future is not None and not future.done():
                future.set_result(data)
        elif kind == "link":
            for engine in self.engines.values():
                engine.on_link_state(str(data.get("link")), str(data.get("state")))
        elif kind in ("stats", "hashes"):
            if kind == "stats":  # "hashes": only the frame hashes and the worker's counters
                self.last_stats = data
            target = self.engines.get(str(data.get("call")))
            if target is not None:
                target.on_stats(data)


class BrowserLink:
    """One peer connection in the page (a :class:`~hotline.call.media_engine.MediaLink`)."""

    def __init__(
        self, engine: BrowserEngine, link_id: str, peer_id: str, offerer: bool, attempt: int
    ) -> None:
        self.engine = engine
        self.link_id = link_id
        self.peer_id = peer_id
        self.offerer = offerer
        self.attempt = attempt
        self.created = time.monotonic()
        self.state = "new"
        self.decrypted = 0
        self.shown = 0
        self.stats: dict[str, Any] = {}
        self._offer_open = False

    @property
    def media_total(self) -> int:
        """Frames the page's worker decrypted on this link: every one arrived (video frames
        and audio packets; the browser's audio concealment never passes the worker)."""
        return self.decrypted

    @property
    def video_frames(self) -> int:
        """Video frames the page decoded on this link (its last report, every 0.5 s)."""
        value = self.stats.get("video_decoded")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def awaiting_answer(self) -> bool:
        return self._offer_open

    async def _ask(self, op: str, **fields: Any) -> dict[str, Any]:
        return await self.engine.hub.request(
            {"op": op, "call": self.engine.call_id, "link": self.link_id, **fields}
        )

    async def create_offer(self) -> str:
        reply = await self._ask("offer")
        self._offer_open = True
        return str(reply["sdp"])

    async def accept_offer(self, sdp: str) -> str:
        return str((await self._ask("accept", sdp=sdp))["sdp"])

    async def apply_answer(self, sdp: str) -> None:
        await self._ask("answer", sdp=sdp)
        self._offer_open = False


#: why a page that took over mid-call sends nothing until the next epoch
SEND_KEY_WITHHELD = (
    "this page took over mid-call: it sends nothing until a new epoch (a send key is never "
    "given to a second page, whose counters would start again at 0)"
)


class BrowserKeySink:
    """The key sink of a call whose frame crypto is in the page: every operation goes to the
    page's worker, in order. The receive keys the page holds are mirrored here (what the
    daemon's key session holds anyway, and erased with it), so that a page that reloads, or
    another that takes over, gets them again (:meth:`replay`).

    A send key goes to one page only: a new page's worker would start its frame counter at
    0 again, reusing AES-GCM nonces under that key. A page that takes over while a send key
    is active gets a ``pause`` instead, and :attr:`new_epoch_wanted` asks the call for a new
    epoch (docs/protocol.md §13); it sends again once that epoch's key is activated."""

    def __init__(self, hub: BrowserHub, call_id: str, suite: CipherSuite) -> None:
        self.hub = hub
        self.call_id = call_id
        self.suite = suite
        self.send_epoch = 0
        self.send_suite: str | None = None
        self.epochs: set[int] = set()
        self.rosters: dict[int, tuple[str, ...]] = {}
        #: the install message of each epoch held, and the current send key's message
        self._installed: dict[int, dict[str, Any]] = {}
        self._sending: dict[str, Any] | None = None
        #: the current send key reached a page (it is never handed to another)
        self._send_delivered = False
        #: a page took over while a send key was active: the call should start a new epoch
        #: (the call session takes the flag, and the key session rekeys)
        self.new_epoch_wanted = False
        #: send keys withheld from a page that took over (each one also a rejection)
        self.withheld = 0

    def _post(self, op: str, **fields: Any) -> dict[str, Any]:
        message = {"type": "keys", "op": op, "call": self.call_id, **fields}
        self.hub.post(message)
        return message

    def replay(self) -> None:
        """Give a (new) page every receive key it should hold now, in order, and the send key
        only if no page had it yet; otherwise the page is paused until a new epoch."""
        for epoch in sorted(self._installed):
            self.hub.post(self._installed[epoch])
        if self._sending is None:
            return
        if not self._send_delivered:
            self._send_delivered = self.hub.connected
            self.hub.post(self._sending)
            return
        log.warning(
            "call %s: send key of epoch %d withheld from the page that took over; "
            "sending resumes at the next epoch",
            self.call_id,
            self.send_epoch,
        )
        self.withheld += 1
        self.new_epoch_wanted = True
        self.send_epoch, self.send_suite = 0, None
        self._sending = None
        self._post("pause", reason=SEND_KEY_WITHHELD)

    def install_receive_keys(
        self,
        epoch: int,
        roster: Sequence[str],
        keys: Mapping[str, bytes | bytearray],
        suite: CipherSuite | None = None,
    ) -> None:
        chosen = suite or self.suite
        self.epochs.add(epoch)
        self.rosters[epoch] = tuple(roster)
        self._installed[epoch] = self._post(
            "install",
            epoch=epoch,
            roster=list(roster),
            suite=chosen.name,
            keys={member: _b64(key) for member, key in keys.items()},
        )

    def activate_send(
        self,
        epoch: int,
        sender_index: int,
        base_key: bytes | bytearray,
        suite: CipherSuite | None = None,
    ) -> None:
        chosen = suite or self.suite
        self.send_epoch, self.send_suite = epoch, chosen.name
        self._sending = self._post(
            "send", epoch=epoch, index=sender_index, suite=chosen.name, key=_b64(base_key)
        )
        self._send_delivered = self.hub.connected
        self.new_epoch_wanted = False  # a fresh key: counters from 0 are safe under it

    def pause_sending(self, reason: str) -> None:
        self.send_epoch, self.send_suite = 0, None
        self._sending = None
        self._post("pause", reason=reason)

    def erase_epochs_through(self, epoch: int) -> None:
        self.epochs = {e for e in self.epochs if e > epoch}
        self._installed = {e: m for e, m in self._installed.items() if e > epoch}
        if self.send_epoch and self.send_epoch <= epoch:
            self.send_epoch, self.send_suite = 0, None
            self._sending = None
        self._post("erase_through", epoch=epoch)

    def erase_epoch(self, epoch: int) -> None:
        self.epochs.discard(epoch)
        self._installed.pop(epoch, None)
        self._post("erase", epoch=epoch)

    def forget_sender(self, member: str) -> None:
        for message in self._installed.values():
            message["keys"] = {m: k for m, k in message["keys"].items() if m != member}
        self._post("forget", member=member)


class BrowserEngine(ConferenceSlot[PageConference]):
    """One call's media in the page (a :class:`~hotline.call.media_engine.MediaEngine`,
    and a :class:`~hotline.call.media_engine.ConferenceEngine`: through the SFU the daemon
    drives Janus and the page holds one publishing link and one link per member's feed,
    see ``ui.browser_conference``)."""

    def __init__(
        self,
        hub: BrowserHub,
        call_id: str,
        suite: str,
        on_frame_event: Callable[[FrameEvent], None],
        ice: IceSettings | None = None,
    ) -> None:
        if suite not in PAGE_SUITES:
            raise StateError(f"the browser engine does not implement the SFrame suite {suite}")
        self.hub = hub
        self.call_id = call_id
        self.sink = BrowserKeySink(hub, call_id, suite_by_name(suite))
        self.key_sink: KeySink = self.sink
        self._on_frame_event = on_frame_event
        self.links: dict[str, BrowserLink] = {}
        self._shown: dict[str, BrowserLink] = {}
        self._ids = itertools.count(1)
        self.crypto: dict[str, Any] = {}
        #: what the page's gallery painted of each member (frames, longest freeze)
        self.tiles: dict[str, dict[str, int]] = {}
        self._ice = ice or IceSettings()
        self._hashes: list[FrameHashes] = []
        #: hashes in ``_hashes``, at most :data:`MAX_HELD_HASHES`
        self._hashes_held = 0
        #: hashes in page reports dropped because too many waited (counted as overflow)
        self._hashes_dropped = 0
        #: the newest counters snapshot of the page's worker (its reports come two ways)
        self._crypto_seq = 0
        #: how late the page's hash reports reached the daemon (the oldest hash in each,
        #: from its recording in the worker), ms: the last and the longest, by path
        self.hash_report_ms: dict[str, dict[str, int]] = {}
        #: the call's conference through the SFU, while it uses one (else a mesh)
        self.conference: PageConference | None = None
        hub.engines[call_id] = self

    async def _ice_config(self) -> dict[str, Any]:
        """The page's ICE configuration: explicit servers only (never a public STUN
        server), the first live TURN relay of the charter, relay-only if the charter says."""
        settings = await select_ice(self._ice)  # raises RelayUnavailable for relay-only
        servers: list[dict[str, str]] = []
        if settings.turn is not None:
            username, password = settings.turn.credentials.at(time.time())
            servers.append(
                {"urls": settings.turn.url, "username": username, "credential": password}
            )
        return {"ice_servers": servers, "ice_policy": "relay" if settings.relay_only else "all"}

    async def open_link(
        self, peer_id: str, *, offerer: bool, attempt: int, mode: str = "mesh"
    ) -> BrowserLink:
        tag = "" if mode == "mesh" else f"{mode}:"
        link = BrowserLink(self, f"{tag}{peer_id}#{next(self._ids)}", peer_id, offerer, attempt)
        await self.hub.request(
            {
                "op": "open",
                "call": self.call_id,
                "link": link.link_id,
                "peer": peer_id,
                "offerer": offerer,
                "attempt": attempt,
                "mode": mode,
                **await self._ice_config(),
            }
        )
        self.links[link.link_id] = link
        return link

    async def open_page_link(self, peer_id: str, *, mode: str) -> BrowserLink:
        """A conference link in the page: ``publish`` (send-only, the page offers; its
        ``peer_id`` is our own id) or ``subscribe`` (receive-only, frames bound to
        ``peer_id``'s keys; Janus offers)."""
        return await self.open_link(peer_id, offerer=mode == "publish", attempt=1, mode=mode)

    def show(self, link: MediaLink) -> None:
        assert isinstance(link, BrowserLink)
        self._shown[link.peer_id] = link
        self.hub.post({"type": "engine", "op": "show", "call": self.call_id, "link": link.link_id})

    async def close_link(self, link: MediaLink) -> None:
        assert isinstance(link, BrowserLink)
        self.links.pop(link.link_id, None)
        if self._shown.get(link.peer_id) is link:
            del self._shown[link.peer_id]
        link.state = "closed"
        self.hub.post({"type": "engine", "op": "close", "call": self.call_id, "link": link.link_id})

    def page_gone(self) -> None:
        for link in self.links.values():
            link.state = "failed"  # liveness reports it, and rebuilds once a page is back

    def on_link_state(self, link_id: str, state: str) -> None:
        link = self.links.get(link_id)
        if link is not None and state in (
            "new",
            "connecting",
            "connected",
            "disconnected",
            "failed",
            "closed",
        ):
            link.state = state

    def restarted(self) -> None:
        """A page (re)started as the engine: its worker counts from the start again."""
        self._crypto_seq = 0

    def on_stats(self, data: dict[str, Any], *, via: str = "page") -> None:
        hashes = data.get("hashes")
        if isinstance(hashes, dict):
            since = hashes.get("since")
            if isinstance(since, int | float) and not isinstance(since, bool):
                late = max(0, round(time.time() * 1000 - since))
                figures = self.hash_report_ms.setdefault(
                    via, {"last": 0, "max": 0, "n": 0, "over_1s": 0}
                )
                figures["last"], figures["n"] = late, figures["n"] + 1
                figures["max"] = max(figures["max"], late)
                figures["over_1s"] += late > 1000
            report = parse_page_hashes(hashes)
            size = len(report.sent) + len(report.received)
            # the worker reports as each frame leaves (many small reports): bounded by the
            # hashes they hold, as many as the worker itself keeps
            if self._hashes_held + size <= MAX_HELD_HASHES:
                self._hashes.append(report)
                self._hashes_held += size
            else:  # long untaken (the call's tick stalled): dropped, and counted as lost
                self._hashes_dropped += len(report.sent) + len(report.received) + report.overflow
        crypto = data.get("crypto")
        seq = crypto.get("seq") if isinstance(crypto, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool):
            if seq < self._crypto_seq:
                crypto = None  # an older snapshot than one already taken (the other path)
            else:
                self._crypto_seq = seq
        if isinstance(crypto, dict):
            before = dict(self.crypto.get("rejected", {}))
            self.crypto = crypto
            for reason, count in dict(crypto.get("rejected", {})).items():
                repeat = str(reason).startswith("duplicate_")  # authentic, received twice
                if isinstance(count, int) and count > before.get(reason, 0) and not repeat:
                    self._on_frame_event(FrameEvent(RECV, "video", str(reason), 0))
        tiles = data.get("tiles")
        if isinstance(tiles, dict):
            self.tiles = {
                str(peer): {
                    k: v
                    for k, v in entry.items()
                    if k in ("frames", "longest_freeze_ms")
                    and isinstance(v, int)
                    and not isinstance(v, bool)
                }
                for peer, entry in tiles.items()
                if isinstance(entry, dict)
            }
        links = data.get("links")
        if isinstance(links, dict):
            for link_id, entry in links.items():
                link = self.links.get(str(link_id))
                if link is not None and isinstance(entry, dict):
                    link.decrypted = int(entry.get("decrypted", 0))
                    link.shown = int(entry.get("shown", 0))
                    link.stats = entry

    # --- conferences through the SFU (see hotline.ui.browser_conference) ----------------------

    async def join_conference(self, spec: ConferenceSpec, members: Iterable[str]) -> None:
        """Publish the page's media to the call's SFU room and subscribe the page to every
        member's feed (the same worker and keys as a mesh: the key sink is not touched)."""
        if self.conference is not None:
            return
        if not self.hub.connected:
            raise StateError("no page is open as this terminal's media engine (open the UI link)")
        conference = PageConference(
            engine=self,
            self_id=spec.self_id,
            url=spec.url,
            room=spec.room,
            secret=spec.secret,
            members=members,
            tls_fingerprint=spec.tls_fingerprint,
        )
        conference.on_downstream = lambda down: self.show(down.link)
        await self._enter_conference(conference, spec.publishers)

    def conference_broken(self) -> bool:
        """The conference is broken (the page that held our upstream is gone — reloaded,
        closed, or another took over — or our Janus API session failed) and a page is
        back: its links are made again by joining the room again."""
        return super().conference_broken() and self.hub.connected

    async def snapshot(self) -> dict[str, Any]:
        peers = {
            peer: {
                "engine": "browser",
                "link": link.link_id,
                "page": link.stats,
                "tile": self.tiles.get(peer),
            }
            for peer, link in self._shown.items()
        }
        frames = {
            "engine": "browser",
            "page": self.crypto,
            "hash_channel": self.hub.channel_open,
            "hash_report_ms": self.hash_report_ms,
        }
        return {"frames": frames, "peers": peers}

    def received(self, peer_id: str) -> Received:
        link = self._shown.get(peer_id)
        if link is None:
            return Received()
        entry = link.stats

        def count(*keys: str) -> int:
            for key in keys:
                value = entry.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
            return 0

        return Received(
            video_frames=count("video_decoded", "decrypted_video"),
            audio_packets=count("audio_received", "decrypted_audio"),
            longest_freeze_ms=count("longest_freeze_ms"),
        )

    async def path_quality(self, link: MediaLink, now: float) -> None:
        """The page reports no far-end RTP figures (jitter, round trip, loss) yet."""
        return None

    async def peer_left(self, peer_id: str) -> None:
        return None

    def crypto_stats(self) -> MediaStats:
        c = self.crypto
        return MediaStats(
            protected=int(c.get("protected", 0)),
            unprotected=int(c.get("decrypted", 0)),
            rejected={str(k): int(v) for k, v in dict(c.get("rejected", {})).items()},
            refused={str(k): int(v) for k, v in dict(c.get("refused", {})).items()},
            last_rejected_sender=None,
            sending_epoch=self.sink.send_epoch,
            receive_epochs=tuple(sorted(self.sink.epochs)),
            sending_suite=self.sink.send_suite,
            unprotected_by_sender=_by_sender(c.get("by_sender")),
        )

    def take_frame_hashes(self) -> FrameHashes:
        """The hashes the page's worker reported since the last call (twice a second)."""
        batches, self._hashes = self._hashes, []
        self._hashes_held = 0
        dropped, self._hashes_dropped = self._hashes_dropped, 0
        return FrameHashes(
            tuple(f for b in batches for f in b.sent),
            tuple(f for b in batches for f in b.received),
            sum(b.overflow for b in batches) + dropped,
        )

    async def close(self) -> None:
        await self.leave_conference()
        self.sink.erase_epochs_through(MAX_EPOCH)  # nothing kept for a replay
        self.hub.post({"type": "engine", "op": "end", "call": self.call_id})
        self.hub.engines.pop(self.call_id, None)


def browser_engine_factory(
    hub: BrowserHub, call_id: str, ice: IceSettings | None = None
) -> EngineFactory:
    def make(suite: str, on_frame_event: Callable[[FrameEvent], None]) -> BrowserEngine:
        return BrowserEngine(hub, call_id, suite, on_frame_event, ice)

    return make
