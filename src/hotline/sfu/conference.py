"""One terminal's media in a conference through the SFU (Janus VideoRoom, ``require_e2ee``).

Topology: the terminal publishes **one** upstream peer connection to Janus (its SFrame-
protected VP8 + Opus, the same frame crypto as a mesh call: :class:`MediaCrypto`) and holds
**one downstream peer connection per other member** (a VideoRoom subscription to that member's
feed). Janus forwards the RTP payloads as they are: it holds no key (``docs/threat-model.md``).

Which feed is whose: a publisher names itself (``display`` = its terminal id), and Janus
relays that name; neither is trusted. What is trusted is the frame key: the downstream
connection subscribed as member M decrypts with :meth:`MediaCrypto.for_peer` (M), so a frame
under any other member's KID on it is refused (``wrong_sender``) and counted. This keeps the
mesh binding "frames on this connection are M's" as far as a member alone can break it; a
member *and* the SFU together (the SFU relabelling the member's feed as M, the member sending
under M's key, which every member holds) are not caught by it: that needs per-sender frame
signatures (``docs/protocol.md``, sender authenticity), which plug in at
:meth:`SfuConference.frame_crypto_for` / the ``on_feed`` callback.

Only feeds of :attr:`SfuConference.members` are subscribed; a second feed naming a member
already subscribed is refused and counted (``duplicate_feed``), one naming a stranger too
(``unknown_feed``). A feed that leaves or unpublishes closes its subscription; the member's
sinks go on with its next feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from hotline.call.media_engine import Received
from hotline.e2ee.media import MediaCrypto, MediaStats
from hotline.errors import HotlineError, JanusError, SfuError, SfuProtocolError
from hotline.media import aiortc_patch, engine
from hotline.media.aiortc_patch import FrameCrypto
from hotline.media.fanout import FanoutTrack
from hotline.media.sdp import check_codecs
from hotline.media.sinks import AudioChirpSink, CountingTrack, VideoFrameIdSink
from hotline.media.sources import MediaSource
from hotline.media.stats import MediaCryptoStats
from hotline.media.turn import IceSettings
from hotline.sfu.janus import Feed, JanusSession, Joined, VideoRoomHandle, parse_feeds

log = logging.getLogger(__name__)

#: how long to wait for a peer connection to Janus to connect
CONNECT_TIMEOUT_S = 20.0
#: JANUS_VIDEOROOM_ERROR_ROOM_EXISTS
ROOM_EXISTS = 427


@dataclass
class Downstream:
    """The subscription to one member's feed: a receive-only peer connection."""

    member: str
    feed_id: int
    pc: RTCPeerConnection
    handle: VideoRoomHandle
    received: list[CountingTrack] = field(default_factory=list)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)


class SfuConference:
    """The SFU side of one terminal in one conference (see the module docstring).

    ``room`` and ``secret`` are the call's (from its signed set-up), ``url`` one SFU of the
    charter. ``crypto`` is the call's frame crypto, keyed by the call's key session as in a
    mesh call. ``members``: the roster this terminal accepts feeds from (its own id excluded).
    """

    def __init__(
        self,
        *,
        self_id: str,
        url: str,
        room: int,
        secret: str,
        crypto: MediaCrypto,
        source: MediaSource,
        members: Iterable[str] = (),
        tls_fingerprint: bytes | None = None,
        ice: IceSettings | None = None,
        frame_stats: MediaCryptoStats | None = None,
        frame_crypto_for: Callable[[str], FrameCrypto] | None = None,
        sinks_of: Callable[[str], tuple[VideoFrameIdSink, AudioChirpSink]] | None = None,
    ) -> None:
        self.self_id = self_id
        self.room = room
        self._secret = secret
        self.crypto = crypto
        self._source = source
        self.members: set[str] = set(members) - {self_id}
        self._ice = ice or IceSettings()
        self.frame_stats = frame_stats or MediaCryptoStats()
        #: the frame crypto of the subscription to a member (default: bound to its KIDs)
        self.frame_crypto_for = frame_crypto_for or crypto.for_peer
        self.session = JanusSession(url, tls_fingerprint=tls_fingerprint)
        self._control: VideoRoomHandle | None = None
        self.joined: Joined | None = None
        self.upstream: RTCPeerConnection | None = None
        self._tracks: list[FanoutTrack] = []
        self.downstream: dict[str, Downstream] = {}
        self._sinks: dict[str, tuple[VideoFrameIdSink, AudioChirpSink]] = {}
        #: where a member's media is shown and played: the call's own sinks when given (they
        #: outlive a move between mesh and SFU), else sinks of this conference
        self._shared_sinks = sinks_of
        self._watcher: asyncio.Task[None] | None = None
        self._subscribing: set[int] = set()
        self._pending: set[asyncio.Task[None]] = set()
        #: refusals and SFU failures by reason (shown in the call's status)
        self.refused: dict[str, int] = {}
        self.setup_ms: float | None = None
        #: on close, destroy the room if nobody is left in it
        self.destroy_when_empty = False
        #: told of each subscription once it connects, and when it closes (statistics)
        self.on_downstream: Callable[[Downstream], None] | None = None
        self.on_downstream_closed: Callable[[Downstream], None] | None = None

    def _count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    # --- set-up ----------------------------------------------------------------------------

    async def create_room(self, publishers: int) -> None:
        """Make the call's ``require_e2ee`` room (the member that sets the call up does)."""
        handle = await self._ensure_control()
        await handle.create_room(self.room, publishers=publishers, secret=self._secret)

    async def ensure_room(self, publishers: int) -> None:
        """Make the call's room unless another member did already (Janus error 427)."""
        try:
            await self.create_room(publishers)
        except JanusError as exc:
            if exc.code != ROOM_EXISTS:
                raise

    async def destroy_room(self) -> None:
        handle = await self._ensure_control()
        await handle.destroy_room(self.room, secret=self._secret)

    async def _ensure_control(self) -> VideoRoomHandle:
        if self.session.session_id is None:
            await self.session.create()
        if self._control is None:
            self._control = VideoRoomHandle(await self.session.attach())
        return self._control

    async def join(self) -> None:
        """Join the room, publish our upstream, subscribe to every member's feed listed."""
        started = time.monotonic()
        control = await self._ensure_control()
        self.joined = await control.join_publisher(self.room, self.self_id)
        pc = engine.create_peer_connection(self.crypto, self.frame_stats, self._ice)
        self.upstream = pc
        self._tracks = self._source.subscribe()
        for track in self._tracks:
            pc.addTransceiver(track, direction="sendonly")
        engine.force_e2ee_codecs(pc)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await control.publish(pc.localDescription.sdp, e2ee=True)
        check_codecs(answer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await self._connected(pc, "upstream")
        self._watcher = asyncio.create_task(self._watch(control), name=f"sfu-{self.self_id}")
        await asyncio.gather(*(self._offer_feed(f) for f in self.joined.publishers))
        self.setup_ms = (time.monotonic() - started) * 1000

    async def _connected(self, pc: RTCPeerConnection, what: str) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                self._count(f"{what}_failed")
                raise SfuError(f"the {what} connection to the SFU did not connect")
            await asyncio.sleep(0.05)

    def sinks_of(self, member: str) -> tuple[VideoFrameIdSink, AudioChirpSink]:
        if self._shared_sinks is not None:
            return self._shared_sinks(member)
        sinks = self._sinks.get(member)
        if sinks is None:
            sinks = self._sinks[member] = (VideoFrameIdSink(), AudioChirpSink())
        return sinks

    async def _offer_feed(self, feed: Feed) -> None:
        member = feed.display
        if member not in self.members:
            self._count("unknown_feed")
            log.warning("SFU lists a feed for %r, not a member of this call: ignored", member[:64])
            return
        if member in self.downstream or feed.feed_id in self._subscribing:
            self._count("duplicate_feed")
            log.warning("SFU lists a second feed for %s: ignored", member)
            return
        self._subscribing.add(feed.feed_id)
        try:
            await self.subscribe(member, feed.feed_id)
        except (HotlineError, OSError) as exc:
            self._count("subscribe_failed")
            log.warning("subscription to %s's feed failed: %s", member, exc)
        finally:
            self._subscribing.discard(feed.feed_id)

    async def subscribe(self, member: str, feed_id: int) -> Downstream:
        """Receive ``member``'s feed ``feed_id``: frames on it must be under its keys."""
        handle = VideoRoomHandle(await self.session.attach())
        pc = engine.create_peer_connection(
            self.frame_crypto_for(member), self.frame_stats, self._ice
        )
        down = Downstream(member, feed_id, pc, handle)
        video_sink, audio_sink = self.sinks_of(member)

        @pc.on("track")
        def on_track(track: Any) -> None:
            counted = CountingTrack(track)
            down.received.append(counted)
            sink = video_sink if track.kind == "video" else audio_sink
            down.consumers.append(sink.start(counted))

        private_id = self.joined.private_id if self.joined is not None else None
        try:
            offer = await handle.subscribe(self.room, feed_id, private_id=private_id)
            check_codecs(offer)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            engine.force_e2ee_codecs(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            await handle.start(pc.localDescription.sdp)
            self.downstream[member] = down
            await self._connected(pc, "downstream")
            if self.on_downstream is not None:
                self.on_downstream(down)
        except BaseException:
            await self._close_downstream(down)
            raise
        return down

    # --- what Janus says during the call ------------------------------------------------------

    async def _watch(self, control: VideoRoomHandle) -> None:
        while True:
            event = await control.handle.events.get()
            if event.kind == "failed":
                self._count("sfu_failed")
                return
            if event.kind != "event":
                continue
            try:
                pd = event.message.get("plugindata")
                data = pd.get("data") if isinstance(pd, dict) else None
                if not isinstance(data, dict):
                    raise SfuProtocolError("Janus event without plugin data")
                for feed in parse_feeds(data.get("publishers"), "publishers"):
                    task = asyncio.create_task(self._offer_feed(feed))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
                for key in ("unpublished", "leaving"):
                    gone = data.get(key)
                    if isinstance(gone, int) and not isinstance(gone, bool):
                        await self._feed_gone(gone)
            except SfuProtocolError as exc:
                self._count("malformed_event")
                log.warning("%s", exc)

    async def _feed_gone(self, feed_id: int) -> None:
        for down in list(self.downstream.values()):
            if down.feed_id == feed_id:
                del self.downstream[down.member]
                await self._close_downstream(down)

    async def _close_downstream(self, down: Downstream) -> None:
        if self.on_downstream_closed is not None:
            self.on_downstream_closed(down)
        aiortc_patch.unbind(down.pc)
        for task in down.consumers:
            task.cancel()
        await engine.close_peer_connection(down.pc)
        await down.handle.leave()
        await down.handle.handle.detach()

    async def member_left(self, member: str) -> None:
        """``member`` left the call: its subscription closes, its feeds are no longer taken."""
        self.members.discard(member)
        down = self.downstream.pop(member, None)
        if down is not None:
            await self._close_downstream(down)

    def member_joined(self, member: str) -> None:
        if member != self.self_id:
            self.members.add(member)

    # --- what the call shows ----------------------------------------------------------------

    def received(self, member: str) -> Received:
        if self._shared_sinks is None and member not in self._sinks:
            return Received()
        video, audio = self.sinks_of(member)
        vs = video.to_dict()
        return Received(
            video_frames=video.frames,
            audio_packets=audio.frames,
            corrupt_shown=int(vs.get("corrupt_shown") or 0),
            longest_freeze_ms=int(vs.get("longest_freeze_ms") or 0),
        )

    def crypto_stats(self) -> MediaStats:
        return self.crypto.stats()

    def status(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "feed": self.joined.feed_id if self.joined else None,
            "upstream": self.upstream.connectionState if self.upstream else None,
            "downstream": {m: d.state for m, d in sorted(self.downstream.items())},
            "refused": dict(self.refused),
            "sfu": dict(self.session.stats),
            "setup_ms": self.setup_ms,
        }

    async def close(self) -> None:
        """Leave the room and close every connection (bounded in time)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for down in list(self.downstream.values()):
            await self._close_downstream(down)
        self.downstream.clear()
        if self.upstream is not None:
            aiortc_patch.unbind(self.upstream)
            for track in self._tracks:
                track.stop()
            await engine.close_peer_connection(self.upstream)
        for video, audio in self._sinks.values():
            await video.stop()
            await audio.stop()
        if self._control is not None and self.joined is not None:
            await self._control.leave()
            if self.destroy_when_empty:
                with contextlib.suppress(SfuError):  # the last one out removes the room
                    if await self._control.participants(self.room) == 0:
                        await self._control.destroy_room(self.room, secret=self._secret)
        await self.session.close()
