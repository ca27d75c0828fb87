"""One terminal's aiortc media in a conference through the SFU (Janus VideoRoom, ``require_e2ee``).

Topology: the terminal publishes **one** upstream peer connection to Janus (its SFrame-
protected VP8 + Opus, the same frame crypto as a mesh call: :class:`MediaCrypto`) and holds
**one downstream peer connection per other member** (a VideoRoom subscription to that member's
feed). Janus forwards the RTP payloads as they are: it holds no key (``docs/threat-model.md``).
The Janus side (room, publisher, which feeds are taken: members only, ``duplicate_feed`` /
``unknown_feed`` refused) is :class:`~hotline.sfu.room.JanusConference`, shared with the
browser engine's conferences; this module adds aiortc peer connections to it.

Which feed is whose: a publisher names itself (``display`` = its terminal id), and Janus
relays that name; neither is trusted. What is trusted is the frame key: the downstream
connection subscribed as member M decrypts with :meth:`MediaCrypto.for_peer` (M), so a frame
under any other member's KID on it is refused (``wrong_sender``) and counted. This keeps the
mesh binding "frames on this connection are M's" as far as a member alone can break it; a
member *and* the SFU together (the SFU relabelling the member's feed as M, the member sending
under M's key, which every member holds) are not caught by it: the signed frame digests
(``docs/protocol.md`` §11) catch them, and a test's hostile SFU plugs in at
:meth:`SfuConference.frame_crypto_for`.

A feed that leaves or unpublishes closes its subscription; the member's sinks go on with its
next feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from hotline.call.media_engine import Received
from hotline.e2ee.media import MediaCrypto, MediaStats
from hotline.media import aiortc_patch, engine
from hotline.media.aiortc_patch import FrameCrypto
from hotline.media.fanout import FanoutTrack
from hotline.media.sdp import check_codecs
from hotline.media.sinks import AudioChirpSink, CountingTrack, VideoFrameIdSink
from hotline.media.sources import MediaSource
from hotline.media.stats import MediaCryptoStats
from hotline.media.turn import IceSettings
from hotline.sfu.janus import VideoRoomHandle
from hotline.sfu.room import CONNECT_TIMEOUT_S, ROOM_EXISTS, JanusConference, Subscription

__all__ = ["CONNECT_TIMEOUT_S", "ROOM_EXISTS", "Downstream", "SfuConference"]


@dataclass
class Downstream(Subscription):
    """The subscription to one member's feed: a receive-only aiortc peer connection."""

    pc: RTCPeerConnection = field(kw_only=True)
    received: list[CountingTrack] = field(default_factory=list, kw_only=True)
    consumers: list[asyncio.Task[None]] = field(default_factory=list, kw_only=True)

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    @property
    def video_frames(self) -> int:
        return sum(t.frames for t in self.received if t.kind == "video")


class SfuConference(JanusConference[Downstream]):
    """One terminal's aiortc conference (see the module docstring).

    ``crypto`` is the call's frame crypto, keyed by the call's key session as in a mesh
    call; ``source`` what the terminal sends.
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
        super().__init__(
            self_id=self_id,
            url=url,
            room=room,
            secret=secret,
            members=members,
            tls_fingerprint=tls_fingerprint,
        )
        self.crypto = crypto
        self._source = source
        self._ice = ice or IceSettings()
        self.frame_stats = frame_stats or MediaCryptoStats()
        #: the frame crypto of the subscription to a member (default: bound to its KIDs)
        self.frame_crypto_for = frame_crypto_for or crypto.for_peer
        self.upstream: RTCPeerConnection | None = None
        self._tracks: list[FanoutTrack] = []
        self._sinks: dict[str, tuple[VideoFrameIdSink, AudioChirpSink]] = {}
        #: where a member's media is shown and played: the call's own sinks when given (they
        #: outlive a move between mesh and SFU), else sinks of this conference
        self._shared_sinks = sinks_of

    # --- the media of the hooks -------------------------------------------------------------

    async def _publish(self, control: VideoRoomHandle) -> None:
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
        await self._connected(lambda: str(pc.connectionState), "upstream")

    def sinks_of(self, member: str) -> tuple[VideoFrameIdSink, AudioChirpSink]:
        if self._shared_sinks is not None:
            return self._shared_sinks(member)
        sinks = self._sinks.get(member)
        if sinks is None:
            sinks = self._sinks[member] = (VideoFrameIdSink(), AudioChirpSink())
        return sinks

    async def _open_downstream(
        self, member: str, feed_id: int, handle: VideoRoomHandle
    ) -> Downstream:
        pc = engine.create_peer_connection(
            self.frame_crypto_for(member), self.frame_stats, self._ice
        )
        down = Downstream(member, feed_id, handle, pc=pc)
        video_sink, audio_sink = self.sinks_of(member)

        @pc.on("track")
        def on_track(track: Any) -> None:
            counted = CountingTrack(track)
            down.received.append(counted)
            sink = video_sink if track.kind == "video" else audio_sink
            down.consumers.append(sink.start(counted))

        return down

    async def _answer_downstream(self, down: Downstream, offer: str) -> str:
        pc = down.pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        engine.force_e2ee_codecs(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def _close_downstream_media(self, down: Downstream) -> None:
        aiortc_patch.unbind(down.pc)
        for task in down.consumers:
            task.cancel()
        await engine.close_peer_connection(down.pc)

    async def _close_upstream_media(self) -> None:
        if self.upstream is not None:
            aiortc_patch.unbind(self.upstream)
            for track in self._tracks:
                track.stop()
            await engine.close_peer_connection(self.upstream)
        for video, audio in self._sinks.values():
            await video.stop()
            await audio.stop()

    def upstream_state(self) -> str | None:
        return str(self.upstream.connectionState) if self.upstream is not None else None

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
