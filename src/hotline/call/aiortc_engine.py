"""The aiortc media engine: peer connections in this process, the Python frame crypto.

Every frame a link carries goes through the call's :class:`~hotline.e2ee.media.MediaCrypto`
bound to the link's peer (a frame under another member's KID is refused as
``wrong_sender``); with no send key, nothing is sent (fail closed). aiortc gathers every
candidate before ``setLocalDescription`` returns, so candidates travel inside the SDP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from hotline.call.media_engine import EngineFactory, MediaLink, MediaSettings
from hotline.e2ee.media import KeySink, MediaCrypto, MediaStats
from hotline.e2ee.sframe import suite_by_name
from hotline.media import aiortc_patch, engine
from hotline.media.fanout import FanoutTrack
from hotline.media.sinks import AudioChirpSink, VideoFrameIdSink
from hotline.media.sources import MediaSource
from hotline.media.stats import CallMediaStats, FrameEvent, MediaCryptoStats


@dataclass
class PeerLink:
    """The transport to one other member: one aiortc peer connection."""

    peer_id: str
    pc: RTCPeerConnection
    offerer: bool
    video_sink: VideoFrameIdSink
    audio_sink: AudioChirpSink
    #: this connection's views of the terminal's source, stopped when it closes
    tracks: list[FanoutTrack] = field(default_factory=list)
    state: str = "new"
    attempt: int = 1
    created: float = 0.0

    @property
    def media_total(self) -> int:
        return self.video_sink.frames + self.audio_sink.frames

    def awaiting_answer(self) -> bool:
        return bool(self.pc.signalingState == "have-local-offer")

    async def create_offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_offer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        engine.force_e2ee_codecs(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def apply_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


class AiortcEngine:
    """One call's aiortc media (a :class:`~hotline.call.media_engine.MediaEngine`)."""

    def __init__(
        self,
        *,
        media: MediaSettings,
        source: MediaSource,
        suite: str,
        on_frame_event: Callable[[FrameEvent], None] | None = None,
    ) -> None:
        self._media = media
        self._source = source
        self.crypto = MediaCrypto(suite_by_name(suite))
        self.key_sink: KeySink = self.crypto
        self.frame_stats = MediaCryptoStats(on_event=on_frame_event)
        self.media_stats = CallMediaStats(self.frame_stats)

    async def open_link(self, peer_id: str, *, offerer: bool, attempt: int) -> PeerLink:
        # bound to this peer: a frame under another member's KID is refused (wrong_sender)
        crypto = self.crypto.for_peer(peer_id)
        ice = await engine.select_ice(self._media.ice)  # the first live TURN relay, if any
        pc = engine.create_peer_connection(crypto, self.frame_stats, ice)
        link = PeerLink(
            peer_id=peer_id,
            pc=pc,
            offerer=offerer,
            video_sink=VideoFrameIdSink(),
            audio_sink=AudioChirpSink(),
            attempt=attempt,
            created=time.monotonic(),
        )
        # one terminal-wide source, fanned out to every peer connection of every call
        link.tracks = self._source.subscribe()
        for track in link.tracks:
            pc.addTrack(track)
        engine.force_e2ee_codecs(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                link.video_sink.start(track)
            else:
                link.audio_sink.start(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            link.state = pc.connectionState

        return link

    def show(self, link: MediaLink) -> None:
        assert isinstance(link, PeerLink)
        self.media_stats.add_peer(link.peer_id, link.pc, link.video_sink, link.audio_sink)

    async def close_link(self, link: MediaLink) -> None:
        assert isinstance(link, PeerLink)
        aiortc_patch.unbind(link.pc)  # not one more frame through this connection
        if self.media_stats.peer_connection(link.peer_id) is link.pc:
            self.media_stats.remove_peer(link.peer_id)
        await link.video_sink.stop()
        await link.audio_sink.stop()
        for track in link.tracks:
            track.stop()  # the source stops feeding this connection
        await engine.close_peer_connection(link.pc)  # bounded: a dead relay never answers

    async def snapshot(self) -> dict[str, Any]:
        return await self.media_stats.snapshot()

    def crypto_stats(self) -> MediaStats:
        return self.crypto.stats()

    async def close(self) -> None:
        return None


def aiortc_engine_factory(media: MediaSettings, source: MediaSource) -> EngineFactory:
    """An :data:`~hotline.call.media_engine.EngineFactory` for aiortc engines."""

    def make(suite: str, on_frame_event: Callable[[FrameEvent], None]) -> AiortcEngine:
        return AiortcEngine(media=media, source=source, suite=suite, on_frame_event=on_frame_event)

    return make
