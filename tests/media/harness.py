"""Two peer connections in one process on 127.0.0.1, each with sources and measuring sinks."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from hotline.e2ee.media import MediaCrypto
from hotline.media import aiortc_patch, engine
from hotline.media.aiortc_patch import FrameCrypto, RtpTap
from hotline.media.link_model import LinkModel, LinkSpec
from hotline.media.sinks import AudioChirpSink, VideoFrameIdSink
from hotline.media.sources import SyntheticAudioTrack, SyntheticVideoTrack
from hotline.media.stats import FrameEvent, MediaCryptoStats

#: small pictures keep several concurrent test calls cheap on 2 shared cores
TEST_WIDTH = 320
TEST_HEIGHT = 180
TEST_FPS = 15


@dataclass
class Side:
    name: str
    pc: RTCPeerConnection
    stats: MediaCryptoStats
    video_sink: VideoFrameIdSink = field(default_factory=VideoFrameIdSink)
    audio_sink: AudioChirpSink = field(default_factory=AudioChirpSink)
    events: list[FrameEvent] = field(default_factory=list)
    tracks: list[MediaStreamTrack] = field(default_factory=list)

    def add_media(self, width: int, height: int, fps: int) -> None:
        for track in (SyntheticAudioTrack(), SyntheticVideoTrack(self.name, width, height, fps)):
            self.pc.addTrack(track)
            self.tracks.append(track)

    async def outbound_packets(self) -> dict[str, int]:
        report = await self.pc.getStats()
        out = {"audio": 0, "video": 0}
        for s in report.values():
            if s.type == "outbound-rtp":
                out[s.kind] += s.packetsSent
        return out


def sframe_pair() -> tuple[MediaCrypto, MediaCrypto]:
    """The real E2EE (SFrame, VP8 header in clear) for a two-member call, epoch 1."""
    roster = ("a", "b")
    keys = {"a": os.urandom(32), "b": os.urandom(32)}
    a, b = MediaCrypto(), MediaCrypto()
    a.activate_send(1, 0, keys["a"])
    b.activate_send(1, 1, keys["b"])
    a.install_receive_keys(1, roster, {"b": keys["b"]})
    b.install_receive_keys(1, roster, {"a": keys["a"]})
    return a, b


def impair(side: Side, spec: LinkSpec, seed: int) -> LinkModel:
    """Impair what ``side`` receives (call after :func:`connect`); returns the link."""
    link = LinkModel(spec, seed)
    assert aiortc_patch.impair_ingress(side.pc, link.fate) >= 1
    return link


def make_side(
    name: str,
    crypto: FrameCrypto | None,
    tap: RtpTap | None = None,
    *,
    video_guard: bool = True,
    audio_path: bool = True,
    ice: engine.IceSettings | None = None,
) -> Side:
    stats = MediaCryptoStats()
    pc = engine.create_peer_connection(crypto, stats, ice)
    aiortc_patch.set_video_guard(pc, video_guard)
    aiortc_patch.set_audio_path(pc, audio_path)
    side = Side(name, pc, stats)
    stats.on_event = side.events.append
    if tap is not None:
        aiortc_patch.tap_outgoing_rtp(pc, tap)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        sink = side.video_sink if track.kind == "video" else side.audio_sink
        sink.start(track)

    return side


async def connect(
    a: Side,
    b: Side,
    *,
    width: int = TEST_WIDTH,
    height: int = TEST_HEIGHT,
    fps: int = TEST_FPS,
    force_codecs: bool = True,
) -> None:
    """A offers, B answers (adding its media once the offer is in, like a terminal)."""
    a.add_media(width, height, fps)
    if force_codecs:
        engine.force_e2ee_codecs(a.pc)
    await a.pc.setLocalDescription(await a.pc.createOffer())
    offer = a.pc.localDescription
    await b.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type))
    b.add_media(width, height, fps)
    if force_codecs:
        engine.force_e2ee_codecs(b.pc)
    await b.pc.setLocalDescription(await b.pc.createAnswer())
    answer = b.pc.localDescription
    await a.pc.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))


async def close(*sides: Side) -> None:
    for side in sides:
        await side.video_sink.stop()
        await side.audio_sink.stop()
    await asyncio.gather(*(side.pc.close() for side in sides))
