"""The aiortc media engine: peer connections in this process, the Python frame crypto.

Every frame a link carries goes through the call's :class:`~hotline.e2ee.media.MediaCrypto`
bound to the link's peer (a frame under another member's KID is refused as
``wrong_sender``); with no send key, nothing is sent (fail closed). aiortc gathers every
candidate before ``setLocalDescription`` returns, so candidates travel inside the SDP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from hotline.call.media_engine import EngineFactory, MediaLink, MediaSettings, Received
from hotline.e2ee.frame_digest import FrameHashes
from hotline.e2ee.media import KeySink, MediaCrypto, MediaStats
from hotline.e2ee.sframe import suite_by_name
from hotline.media import aiortc_patch, engine, speech
from hotline.media.sinks import AudioChirpSink, CountingTrack, PcmCapture, VideoFrameIdSink
from hotline.media.sources import (
    AUDIO_SAMPLES,
    AUDIO_TIME_BASE,
    ClipAudioTrack,
    MediaSource,
    synthetic_second,
)
from hotline.media.stats import CallMediaStats, FrameEvent, MediaCryptoStats, RtcStatsSampler
from hotline.sfu.conference import Downstream, SfuConference
from hotline.sfu.room import ConferenceSlot
from hotline.sfu.topology import ConferenceSpec

log = logging.getLogger("hotline.call")

#: RTP clock of video (what aiortc's VP8 encoder reads pts in)
VIDEO_CLOCK = Fraction(1, 90_000)


class LoopbackVideoTrack(MediaStreamTrack):
    """A readiness check's callee sends the caller's own video back: the caller reads its
    own frame ids (``media.frame_id``) and gets the video round trip — through both
    encoders, both networks and both jitter buffers — on its own clock alone. Nothing is
    sent before the caller's first frame; a slow encoder drops frames, never queues them."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)
        self._start: float | None = None

    def feed(self, frame: Any) -> None:
        if self.readyState != "live":
            return
        if self._queue.full():
            self._queue.get_nowait()  # the newest frame goes back, not a backlog
        self._queue.put_nowait(frame)

    async def recv(self) -> Any:
        frame = await self._queue.get()
        now = time.monotonic()
        if self._start is None:
            self._start = now
        frame.pts, frame.time_base = int((now - self._start) * 90_000), VIDEO_CLOCK
        return frame


class LoopbackAudioTrack(MediaStreamTrack):
    """A readiness check's callee sends the caller's own audio back (as it plays it out):
    the caller scores its reference speech after both legs, both codings and both jitter
    buffers (PESQ), and times its chirps' round trip. Timestamps follow the samples sent;
    a backlog beyond :data:`MAX_QUEUED` frames loses its oldest frame."""

    kind = "audio"
    MAX_QUEUED = 50  #: 1 s of 20 ms frames (a stalled host releases them in a burst)

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.MAX_QUEUED)
        self._samples = 0

    def feed(self, frame: Any) -> None:
        if self.readyState != "live":
            return
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(frame)

    async def recv(self) -> Any:
        frame = await self._queue.get()
        frame.pts, frame.time_base = self._samples, AUDIO_TIME_BASE
        self._samples += frame.samples
        return frame


class CheckAudio:
    """What a readiness check's caller sends as audio — real speech (``media.speech``'s
    check clip) looped, with a chirp once per loop — and what it measures of it coming
    back: the capture PESQ scores, and the chirps' send times. Without alsa-utils' speech
    the synthetic speech-like signal is sent (chirp once a second) and PESQ is not scored
    (:attr:`missing` says why)."""

    def __init__(self) -> None:
        made = speech.check_clip()
        self.missing = speech.speech_missing() if made is None else None
        if made is None:
            clip = array("h", synthetic_second("speech"))
            made = clip[: len(clip) - len(clip) % AUDIO_SAMPLES], [0]
        self.clip, self.marks = made
        #: monotonic ms of every chirp sent, by every connection of the call
        self.chirps_sent_ms: list[int] = []

    def track(self) -> ClipAudioTrack:
        return ClipAudioTrack(self.clip, self.marks, self.chirps_sent_ms)

    def round_trips_ms(self, heard_ms: list[int]) -> list[int]:
        """Each chirp heard back: its arrival minus the last chirp sent before it (chirps
        are one loop apart: a longer round trip is not measured)."""
        loop_ms = len(self.clip) * 1000 // 48000
        out = []
        for heard in heard_ms:
            before = [sent for sent in self.chirps_sent_ms if sent <= heard]
            if before and heard - before[-1] < loop_ms:
                out.append(heard - before[-1])
        return out


class TeeTrack(MediaStreamTrack):
    """Passes a remote track's frames on, handing each to ``to`` as well."""

    def __init__(self, inner: MediaStreamTrack, to: Callable[[Any], None]) -> None:
        super().__init__()
        self.kind = inner.kind
        self._inner, self._to = inner, to

    async def recv(self) -> Any:
        frame = await self._inner.recv()
        self._to(frame)
        return frame


@dataclass
class PeerLink:
    """The transport to one other member: one aiortc peer connection. Its sinks are the
    peer's, shared by its successive connections (see :meth:`AiortcEngine.sinks_of`)."""

    peer_id: str
    pc: RTCPeerConnection
    offerer: bool
    video_sink: VideoFrameIdSink
    audio_sink: AudioChirpSink
    #: this connection's views of the terminal's source, stopped when it closes
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    state: str = "new"
    attempt: int = 1
    created: float = 0.0
    #: what this connection's remote tracks delivered, and the tasks feeding the sinks
    received: list[CountingTrack] = field(default_factory=list)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def media_total(self) -> int:
        """What arrived on this connection: video frames decoded, and audio *packets*
        received (Hotline's audio path plays concealment when none come, so played audio
        frames say nothing about the link)."""
        audio_paths = aiortc_patch.audio_receivers(self.pc)
        if not audio_paths:
            return sum(track.frames for track in self.received)
        packets = sum(int(path.stats().get("packets", 0)) for path in audio_paths)
        return packets + sum(t.frames for t in self.received if t.kind == "video")

    @property
    def video_frames(self) -> int:
        return sum(t.frames for t in self.received if t.kind == "video")

    def audio_packets(self) -> int | None:
        """Audio packets received on this connection (None: no audio receive path yet)."""
        paths = aiortc_patch.audio_receivers(self.pc)
        return sum(int(p.stats().get("packets", 0)) for p in paths) if paths else None

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


class AiortcEngine(ConferenceSlot[SfuConference]):
    """One call's aiortc media (a :class:`~hotline.call.media_engine.MediaEngine`)."""

    def __init__(
        self,
        *,
        media: MediaSettings,
        source: MediaSource,
        suite: str,
        on_frame_event: Callable[[FrameEvent], None] | None = None,
        call_id: str = "",
    ) -> None:
        self._media = media
        self._call_id = call_id
        self._source = source
        self.crypto = MediaCrypto(suite_by_name(suite))
        self.key_sink: KeySink = self.crypto
        self.frame_stats = MediaCryptoStats(on_event=on_frame_event)
        self.media_stats = CallMediaStats(self.frame_stats)
        #: what this terminal shows and plays of each peer, for the whole call
        self._sinks: dict[str, tuple[VideoFrameIdSink, AudioChirpSink]] = {}
        self._shown: dict[str, PeerLink] = {}
        self._samplers: dict[str, RtcStatsSampler] = {}
        #: the call's conference through the SFU, while it uses one (else a mesh)
        self.conference: SfuConference | None = None
        #: send each peer's video back to it instead of ours (a readiness check's callee)
        self.loopback_video = False
        #: and its audio (a readiness check's callee)
        self.loopback_audio = False
        #: the reference speech sent instead of our audio (a readiness check's caller)
        self.check_audio: CheckAudio | None = None

    def _audio_capture(self, peer_id: str) -> PcmCapture | None:
        files = self._media.capture_audio
        if files is None:
            return None
        path = files.next_path()
        log.warning(
            "call %s: writing the audio played out of %s to %s", self._call_id, peer_id, path
        )
        return PcmCapture(str(path), keep=False, by_pts=True)

    def sinks_of(self, peer_id: str) -> tuple[VideoFrameIdSink, AudioChirpSink]:
        """What this terminal shows and plays of ``peer_id``: one pair of sinks per peer for
        the whole call, across rebuilt transports."""
        sinks = self._sinks.get(peer_id)
        if sinks is None:
            sinks = self._sinks[peer_id] = (
                VideoFrameIdSink(),
                AudioChirpSink(capture=self._audio_capture(peer_id)),
            )
        return sinks

    async def open_link(self, peer_id: str, *, offerer: bool, attempt: int) -> PeerLink:
        # bound to this peer: a frame under another member's KID is refused (wrong_sender)
        crypto = self.crypto.for_peer(peer_id)
        ice = await engine.select_ice(self._media.ice)  # the first live TURN relay, if any
        pc = engine.create_peer_connection(crypto, self.frame_stats, ice)
        link = PeerLink(
            peer_id=peer_id,
            pc=pc,
            offerer=offerer,
            video_sink=self.sinks_of(peer_id)[0],
            audio_sink=self.sinks_of(peer_id)[1],
            attempt=attempt,
            created=time.monotonic(),
        )
        # one terminal-wide source, fanned out to every peer connection of every call
        link.tracks = list[MediaStreamTrack](self._source.subscribe())
        loop: LoopbackVideoTrack | None = None
        if self.loopback_video:
            loop = LoopbackVideoTrack()
            self._replace_track(link, loop)
        loop_audio: LoopbackAudioTrack | None = None
        if self.loopback_audio:
            loop_audio = LoopbackAudioTrack()
            self._replace_track(link, loop_audio)
        elif self.check_audio is not None:
            self._replace_track(link, self.check_audio.track())
        for track in link.tracks:
            pc.addTrack(track)
        engine.force_e2ee_codecs(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            counted = CountingTrack(track)
            link.received.append(counted)
            sink = link.video_sink if track.kind == "video" else link.audio_sink
            back = {"video": loop, "audio": loop_audio}.get(track.kind)
            shown = TeeTrack(counted, back.feed) if back is not None else counted
            link.consumers.append(sink.start(shown))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            link.state = pc.connectionState

        return link

    @staticmethod
    def _replace_track(link: PeerLink, track: MediaStreamTrack) -> None:
        """Send ``track`` instead of the source's track of its kind (added if there is none)."""
        for i, old in enumerate(link.tracks):
            if old.kind == track.kind:
                old.stop()
                link.tracks[i] = track
                return
        link.tracks.append(track)

    def measure_audio(self, peer_id: str, capture: PcmCapture | None) -> None:
        """Keep what is played out of ``peer_id`` in ``capture`` from now (None: stop)."""
        self.sinks_of(peer_id)[1].measure = capture

    def chirps_heard_ms(self, peer_id: str) -> list[int]:
        """When each chirp in ``peer_id``'s audio was played out (monotonic ms)."""
        return list(self.sinks_of(peer_id)[1].chirp_times_ms)

    def show(self, link: MediaLink) -> None:
        assert isinstance(link, PeerLink)
        self._shown[link.peer_id] = link
        self.media_stats.add_peer(link.peer_id, link.pc, link.video_sink, link.audio_sink)

    async def close_link(self, link: MediaLink) -> None:
        assert isinstance(link, PeerLink)
        aiortc_patch.unbind(link.pc)  # not one more frame through this connection
        if self.media_stats.peer_connection(link.peer_id) is link.pc:
            self.media_stats.remove_peer(link.peer_id)
        if self._shown.get(link.peer_id) is link:
            del self._shown[link.peer_id]
        for task in link.consumers:  # the peer's sinks go on with its next connection
            task.cancel()
        for track in link.tracks:
            track.stop()  # the source stops feeding this connection
        await engine.close_peer_connection(link.pc)  # bounded: a dead relay never answers

    async def snapshot(self) -> dict[str, Any]:
        return await self.media_stats.snapshot()

    # --- conferences through the SFU (see hotline.sfu.conference) -------------------------------

    async def join_conference(self, spec: ConferenceSpec, members: Iterable[str]) -> None:
        """Publish to the call's SFU room and subscribe to every member's feed (the same
        frame crypto and keys as a mesh: the topology does not touch the key session)."""
        if self.conference is not None:
            return
        conference = SfuConference(
            self_id=spec.self_id,
            url=spec.url,
            room=spec.room,
            secret=spec.secret,
            crypto=self.crypto,
            source=self._source,
            members=members,
            tls_fingerprint=spec.tls_fingerprint,
            ice=self._media.ice,
            frame_stats=self.frame_stats,
            sinks_of=self.sinks_of,  # what shows a member goes on across the move
        )

        def shown(down: Downstream) -> None:
            video, audio = conference.sinks_of(down.member)
            self.media_stats.add_peer(down.member, down.pc, video, audio)

        def closed(down: Downstream) -> None:
            if self.media_stats.peer_connection(down.member) is down.pc:
                self.media_stats.remove_peer(down.member)

        conference.on_downstream, conference.on_downstream_closed = shown, closed
        await self._enter_conference(conference, spec.publishers)

    def received(self, peer_id: str) -> Received:
        if self.conference is not None and peer_id in self.conference.members:
            return self.conference.received(peer_id)
        sinks = self._sinks.get(peer_id)
        if sinks is None:
            return Received()
        video, audio = sinks
        link = self._shown.get(peer_id)
        packets = link.audio_packets() if link is not None else None
        vs = video.to_dict()
        return Received(
            video_frames=video.frames,
            audio_packets=audio.frames if packets is None else packets,
            corrupt_shown=int(vs.get("corrupt_shown") or 0),
            longest_freeze_ms=int(vs.get("longest_freeze_ms") or 0),
        )

    async def path_quality(self, link: MediaLink, now: float) -> dict[str, dict[str, float]]:
        assert isinstance(link, PeerLink)
        report = await link.pc.getStats()
        sampler = self._samplers.setdefault(link.peer_id, RtcStatsSampler())
        digest: dict[str, dict[str, float]] = sampler.digest(report.values(), now)
        return digest

    async def peer_left(self, peer_id: str) -> None:
        self._samplers.pop(peer_id, None)
        for sink in self._sinks.pop(peer_id, ()):
            await sink.stop()

    def crypto_stats(self) -> MediaStats:
        return self.crypto.stats()

    def take_frame_hashes(self) -> FrameHashes:
        return self.crypto.take_frame_hashes()

    async def close(self) -> None:
        await self.leave_conference()
        for peer_id in list(self._sinks):
            await self.peer_left(peer_id)


def aiortc_engine_factory(
    media: MediaSettings, source: MediaSource, call_id: str = ""
) -> EngineFactory:
    """An :data:`~hotline.call.media_engine.EngineFactory` for aiortc engines."""

    def make(suite: str, on_frame_event: Callable[[FrameEvent], None]) -> AiortcEngine:
        return AiortcEngine(
            media=media,
            source=source,
            suite=suite,
            on_frame_event=on_frame_event,
            call_id=call_id,
        )

    return make
