"""The one module that touches aiortc's (and aioice's) internals.

aiortc 1.16 has no API for encoded-frame transforms, so every encoded frame is protected
inside the codec seam, after encoding and before RTP packetization, and checked after
depacketization and before decoding. What is patched (see ``docs/media.md``):

1. ``aiortc.rtcrtpsender.get_encoder`` (the name as imported by the sender) returns an
   encoder that protects each frame: VP8 through an override of ``Vp8Encoder._packetize``
   (one override covers ``encode()`` and the pre-encoded ``pack()`` path), Opus by protecting
   each payload of ``encode()``/``pack()``. Any other codec raises :class:`CodecRefused`.
2. ``aiortc.rtcrtpreceiver.get_decoder`` (called in the receiver's decoder thread) returns a
   decoder that calls ``unprotect`` first. A refused frame is counted, dropped and turned into
   an ``av.error.InvalidDataError`` (:class:`FrameRejected`): the only exception aiortc's
   ``decoder_worker`` survives, and the one that makes the receiver send a PLI (key frame).
3. ``RTCRtpSender.send`` / ``RTCRtpReceiver.receive`` / ``rtcrtpreceiver.decoder_worker`` are
   wrapped only to find *which peer connection* a sender or receiver belongs to, so that the
   crypto is bound per :class:`RTCPeerConnection` (several calls and terminals share a process).
4. ``aioice.ice.get_host_addresses``: the set of local addresses ICE gathers on
   (:func:`set_host_addresses`); aioice skips 127.0.0.1 by default.

Fail closed: a sender or receiver whose peer connection has no crypto bound sends and shows
nothing (counted as ``unbound``); an exception inside the crypto drops the frame.

The version pin and every internal relied on are checked by :func:`check_internals`, which
:func:`install` runs first; ``tests/media/test_aiortc_internals.py`` fails loudly if they move.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import ipaddress
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aioice
import aioice.ice
import aiortc
import aiortc.codecs
import aiortc.rtcpeerconnection
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.sdp
import av.error
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket, RtpPacket
from av.frame import Frame
from av.packet import Packet

from hotline.errors import (
    AiortcIncompatible,
    CodecRefused,
    HotlineError,
    StateError,
    UsageError,
)
from hotline.media.audio_path import AudioReceivePath, AudioSteps, FecOpusEncoder, LossFeedback
from hotline.media.stats import RECV, SEND, FrameEvent, MediaCryptoStats
from hotline.media.video_guard import (
    CAPACITY,
    AssembledFrame,
    FrameDecision,
    PacketOutcome,
    VideoPacket,
    VideoReceiveGuard,
    is_vp8_keyframe,
    parse_vp8_descriptor,
)

logger = logging.getLogger("hotline.media")

#: the aiortc/aioice versions whose internals this module was written against
AIORTC_VERSION = "1.16.0"
AIOICE_VERSION = "0.13.0"

VIDEO = "video"
AUDIO = "audio"

#: the only codecs that carry E2EE frames (their packetizers never read payload bytes)
E2EE_CODECS = {"video/vp8": VIDEO, "audio/opus": AUDIO, "audio/red": AUDIO}

#: RED (RFC 2198) over Opus, offered after Opus by a peer connection with Hotline's audio path
#: (its blocks are SFrame-protected Opus frames, :mod:`hotline.media.red`) and sent whenever
#: the far end accepted it; Chromium's number. Offered second because Chromium picks its send
#: codec from the offer's order whatever its own codec preferences: listed first, a page that
#: answers with Opus alone would still send RED.
RED_PAYLOAD_TYPE = 63

#: the Opus fmtp every Hotline offer and answer carries: FEC is sent and used (also by browsers)
OPUS_FMTP: dict[str, int] = {"minptime": 10, "useinbandfec": 1}

#: a refused video frame asks for a key frame at most this often (aiortc does not throttle PLIs)
KEYFRAME_REQUEST_INTERVAL_S = 0.2

#: FFmpeg's AVERROR_INVALIDDATA, the errno carried by :class:`FrameRejected`
AVERROR_INVALIDDATA = -1094995529

#: reasons counted by the seam itself (the crypto's own reasons come from its HotlineErrors)
REASON_UNBOUND = "unbound"
REASON_INTERNAL = "crypto_internal_error"
REASON_CODEC = "codec_refused"


class FrameCrypto(Protocol):
    """What the seam needs from the frame protection (``hotline.e2ee.media.MediaCrypto``).

    ``kind`` is ``"video"`` (``frame`` = one whole encoded VP8 frame, as libvpx produced it,
    without the RTP VP8 payload descriptor) or ``"audio"`` (one Opus packet). Both methods
    are called from worker threads and must be thread-safe. Refusals raise ``HotlineError``
    subclasses (``SFrameError`` for received frames); their ``reason`` is what gets counted.
    """

    def protect(self, kind: str, frame: bytes) -> bytes: ...

    def unprotect(self, kind: str, data: bytes) -> bytes: ...


class FrameRejected(av.error.InvalidDataError):
    """A received frame that failed ``unprotect``, raised to aiortc's ``decoder_worker``.

    It is an ``av.FFmpegError``, the only exception type the decoder thread survives; aiortc
    then logs it, drops the frame and sends a PLI so that the sender produces a key frame.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(AVERROR_INVALIDDATA, f"hotline refused {kind} frame: {reason}")
        self.kind = kind
        self.reason = reason


# --- binding registry -------------------------------------------------------------------


class _Binding:
    """The crypto and counters of one peer connection, used from any thread."""

    def __init__(self, crypto: FrameCrypto, stats: MediaCryptoStats) -> None:
        self.crypto = crypto
        self.stats = stats
        self.active = True
        self._log_lock = threading.Lock()
        self._logged: Counter[tuple[str, str, str]] = Counter()

    def protect(self, kind: str, frame: bytes, loop: asyncio.AbstractEventLoop | None) -> bytes:
        """Protect one frame; raises ``HotlineError`` (already counted and surfaced)."""
        if not self.active:
            raise self._refuse(FrameEvent(SEND, kind, REASON_UNBOUND, len(frame)), loop)
        start = time.thread_time_ns()
        try:
            out = self.crypto.protect(kind, frame)
        except HotlineError as exc:
            raise self._refuse(FrameEvent(SEND, kind, exc.reason, len(frame)), loop) from exc
        except Exception as exc:
            raise self._refuse(
                FrameEvent(SEND, kind, REASON_INTERNAL, len(frame)), loop, exc
            ) from exc
        self.stats.count_protected(kind, len(out), time.thread_time_ns() - start)
        return out

    def unprotect(self, kind: str, data: bytes, loop: asyncio.AbstractEventLoop | None) -> bytes:
        """Check and decrypt one frame; raises ``HotlineError`` (already counted)."""
        self.stats.count_received(kind)
        if not self.active:
            raise self._refuse(FrameEvent(RECV, kind, REASON_UNBOUND, len(data)), loop)
        start = time.thread_time_ns()
        try:
            out = self.crypto.unprotect(kind, data)
        except HotlineError as exc:
            raise self._refuse(FrameEvent(RECV, kind, exc.reason, len(data)), loop) from exc
        except Exception as exc:
            raise self._refuse(
                FrameEvent(RECV, kind, REASON_INTERNAL, len(data)), loop, exc
            ) from exc
        self.stats.count_decrypted(kind, time.thread_time_ns() - start)
        return out

    def _refuse(
        self,
        event: FrameEvent,
        loop: asyncio.AbstractEventLoop | None,
        unexpected: BaseException | None = None,
    ) -> HotlineError:
        if event.direction == SEND:
            self.stats.count_protect_failure(event.kind, event.reason)
        else:
            self.stats.count_rejected(event.kind, event.reason)
        self._log(event, unexpected)
        _notify(self.stats, event, loop)
        return HotlineError(
            f"{event.kind} frame refused on {event.direction}: {event.reason}", reason=event.reason
        )

    def _log(self, event: FrameEvent, exc: BaseException | None) -> None:
        # first occurrence of each (direction, kind, reason), then every 100th: never bytes
        with self._log_lock:
            key = (event.direction, event.kind, event.reason)
            self._logged[key] += 1
            n = self._logged[key]
        if n == 1 or n % 100 == 0:
            extra = f" ({type(exc).__name__})" if exc is not None else ""
            logger.warning(
                "media %s: %s frame of %d bytes refused: %s%s [#%d]",
                event.direction,
                event.kind,
                event.size,
                event.reason,
                extra,
                n,
            )


def _notify(
    stats: MediaCryptoStats, event: FrameEvent, loop: asyncio.AbstractEventLoop | None
) -> None:
    callback = stats.on_event
    if callback is None:
        return
    if loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(callback, event)
            return
        except RuntimeError:  # loop closed between the check and the call
            return
    try:
        callback(event)
    except Exception:
        logger.exception("media event callback failed")


@dataclass(frozen=True)
class RtpView:
    """An outgoing RTP packet as a :func:`tap_outgoing_rtp` hook sees it, before SRTP.

    ``payload_offset`` is where the codec payload (VP8 descriptor + protected frame bytes,
    or one protected Opus packet) starts in ``data``.
    """

    data: bytes
    payload_type: int
    marker: bool
    sequence_number: int
    timestamp: int
    ssrc: int
    payload_offset: int


RtpTap = Callable[[RtpView], bytes | None]


class _PeerEntry:
    def __init__(self) -> None:
        self.binding: _Binding | None = None
        self.tap: RtpTap | None = None
        self.video_guard = True
        self.audio_path = True
        self.audio_receivers: list[AudioReceivePath] = []


_lock = threading.RLock()
_peers: weakref.WeakKeyDictionary[RTCPeerConnection, _PeerEntry] = weakref.WeakKeyDictionary()
#: receiver track queue -> binding resolved at ``receive()``, read by the decoder thread
_queue_bindings: weakref.WeakKeyDictionary[asyncio.Queue[Any], _Binding | None] = (
    weakref.WeakKeyDictionary()
)
#: receiver track queue -> its video guard, read by the decoder thread
_queue_guards: weakref.WeakKeyDictionary[asyncio.Queue[Any], _VideoGuard] = (
    weakref.WeakKeyDictionary()
)
#: receiver track queue -> its audio receive path, read by the decoder thread
_queue_audio: weakref.WeakKeyDictionary[asyncio.Queue[Any], AudioReceivePath] = (
    weakref.WeakKeyDictionary()
)
#: the loss feedback of the sender whose ``_run_rtp`` task is running (like the binding)
_sender_feedback: contextvars.ContextVar[LossFeedback | None] = contextvars.ContextVar(
    "hotline_sender_feedback"
)
#: frames refused because their peer connection had no crypto bound (process-wide)
_unbound_stats = MediaCryptoStats()

#: the binding of the sender whose ``_run_rtp`` task is running (set by the ``send`` wrapper;
#: the task copies the context at creation, so ``get_encoder`` inside it sees its own sender)
_sender_binding: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar(
    "hotline_sender_binding"
)
_decoder_context = threading.local()


def bind(pc: RTCPeerConnection, crypto: FrameCrypto, stats: MediaCryptoStats) -> None:
    """Make every sender and receiver of ``pc`` protect/check its frames with ``crypto``.

    Call it right after creating the peer connection, before any description is applied
    (senders and receivers look their binding up when media starts). Installs the patches.
    Several peer connections may share one ``crypto`` and ``stats`` (a mesh call).
    """
    install()
    if pc.connectionState != "new":
        raise StateError("bind the frame crypto before the peer connection starts connecting")
    with _lock:
        entry = _peers.setdefault(pc, _PeerEntry())
        if entry.binding is not None:
            raise StateError("this peer connection already has frame crypto bound")
        entry.binding = _Binding(crypto, stats)


def unbind(pc: RTCPeerConnection) -> None:
    """Stop all media of ``pc`` from now on: every later frame is refused as ``unbound``."""
    with _lock:
        entry = _peers.get(pc)
        if entry is not None and entry.binding is not None:
            entry.binding.active = False


def is_bound(pc: RTCPeerConnection) -> bool:
    with _lock:
        entry = _peers.get(pc)
        return entry is not None and entry.binding is not None and entry.binding.active


def unbound_stats() -> MediaCryptoStats:
    """Process-wide counters of frames dropped because their peer connection was not bound."""
    return _unbound_stats


def tap_outgoing_rtp(pc: RTCPeerConnection, tap: RtpTap) -> None:
    """Test hook: pass every outgoing RTP packet of ``pc`` through ``tap`` before SRTP.

    ``tap`` returns the bytes to send (possibly altered) or ``None`` to drop the packet. It
    models what an attacker on the media path (a relay, an SFU) can do to protected frames.
    Set it before the connection starts. RTCP does not pass through it.
    """
    install()
    with _lock:
        _peers.setdefault(pc, _PeerEntry()).tap = tap


def set_video_guard(pc: RTCPeerConnection, enabled: bool) -> None:
    """Switch the receive-side video guard (on by default) for ``pc``'s video receivers.

    Off, aiortc's own jitter buffer and NACK generator run unchanged (the baseline of
    ``bench/bench_video_loss.py``). Set it before the connection starts.
    """
    with _lock:
        _peers.setdefault(pc, _PeerEntry()).video_guard = enabled


def set_audio_path(pc: RTCPeerConnection, enabled: bool) -> None:
    """Switch Hotline's audio path (on by default) for ``pc``: its jitter buffer, FEC and
    concealment on receive, the libopus FEC encoder on send (``media.audio_path``).

    Off, aiortc's own audio jitter buffer, PyAV decoder and encoder run (the baseline of
    ``bench/bench_audio_loss.py``); E2EE is the same. Set it before the connection starts.
    """
    with _lock:
        _peers.setdefault(pc, _PeerEntry()).audio_path = enabled


def audio_receivers(pc: RTCPeerConnection) -> list[AudioReceivePath]:
    """The audio receive paths of ``pc`` (one per bound audio receiver once media started)."""
    with _lock:
        entry = _peers.get(pc)
        return list(entry.audio_receivers) if entry is not None else []


#: ``fate(now) -> delay in seconds, or None to lose the datagram`` (``media.link_model``)
IngressFate = Callable[[float], float | None]


def impair_ingress(pc: RTCPeerConnection, fate: IngressFate) -> int:
    """Test hook: pass every UDP datagram ``pc`` receives (STUN, DTLS, SRTP) through ``fate``.

    Models an impaired link in process, on the receiver's ingress: a lost datagram is never
    seen, a delayed one is handed to aioice later on the event loop. Call it after
    ``setLocalDescription`` (the sockets exist once candidates are gathered); returns how
    many sockets were wrapped.
    """
    loop = asyncio.get_running_loop()
    protocols: list[Any] = []
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        protocols += [p for p in connection._protocols if p not in protocols]
    for protocol in protocols:
        if getattr(protocol, "_hotline_fate", None) is not None:
            raise StateError("this peer connection's ingress is impaired already")
        original: Callable[[bytes, Any], None] = protocol.datagram_received

        def received(
            data: bytes, addr: Any, original: Callable[[bytes, Any], None] = original
        ) -> None:
            now = loop.time()  # the loop's monotonic clock, so that call_at keeps FIFO order
            delay = fate(now)
            if delay is None:
                return
            if delay <= 0:
                original(data, addr)
            else:
                loop.call_at(now + delay, original, data, addr)

        protocol.datagram_received = received
        protocol._hotline_fate = fate
    return len(protocols)


def _entry_of(member: RTCRtpSender | RTCRtpReceiver) -> _PeerEntry | None:
    with _lock:
        for pc, entry in list(_peers.items()):
            for transceiver in pc.getTransceivers():
                if transceiver.sender is member or transceiver.receiver is member:
                    return entry
    return None


# --- encoders ---------------------------------------------------------------------------


def _mime_kind(codec: RTCRtpCodecParameters) -> str:
    return codec.mimeType.split("/")[0].lower()


def _kind_of(codec: RTCRtpCodecParameters) -> str:
    kind = E2EE_CODECS.get(codec.mimeType.lower())
    if kind is None:
        raise CodecRefused(
            f"{codec.mimeType} cannot carry per-frame end-to-end encryption; "
            "only VP8 and Opus are allowed"
        )
    return kind


class _ProtectedVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder with every whole frame protected before packetization."""

    def __init__(self, binding: _Binding, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__()
        self._hl_binding = binding
        self._hl_loop = loop
        self._hl_need_keyframe = False

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if self._hl_need_keyframe:
            # the last frame was dropped: the receiver cannot decode deltas on top of it
            self._hl_need_keyframe = False
            force_keyframe = True
            self._hl_binding.stats.count_forced_keyframe(VIDEO)
        return super().encode(frame, force_keyframe)

    def _packetize(self, buffer: bytes, picture_id: int) -> list[bytes]:  # type: ignore[override]
        if not buffer:
            return []
        try:
            protected = self._hl_binding.protect(VIDEO, buffer, self._hl_loop)
        except HotlineError:
            self._hl_need_keyframe = True
            return []
        return Vp8Encoder._packetize(protected, picture_id)


class _ProtectedOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder with every Opus packet protected (one per RTP payload)."""

    def __init__(self, binding: _Binding, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__()
        self._hl_binding = binding
        self._hl_loop = loop

    def _hl_protect(self, payloads: list[bytes]) -> list[bytes]:
        out = []
        for payload in payloads:
            try:
                out.append(self._hl_binding.protect(AUDIO, payload, self._hl_loop))
            except HotlineError:
                return []  # drop the whole batch: partial batches would shift timestamps
        return out

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        payloads, timestamp = super().encode(frame, force_keyframe)
        return self._hl_protect(payloads), timestamp

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        payloads, timestamp = super().pack(packet)
        return self._hl_protect(payloads), timestamp


class _UnboundEncoder(Encoder):
    """The encoder of a sender with no crypto bound: consumes frames, sends nothing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._logged = False

    def _drop(self) -> tuple[list[bytes], int]:
        _unbound_stats.count_protect_failure(self.kind, REASON_UNBOUND)
        if not self._logged:
            self._logged = True
            logger.warning(
                "media send: %s sender has no frame crypto bound; sending nothing", self.kind
            )
        return [], 0

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        return self._drop()

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        return self._drop()


def protected_encoder(codec: RTCRtpCodecParameters) -> Encoder:
    """Replacement for ``aiortc.rtcrtpsender.get_encoder``: called on the sender's task."""
    binding = _sender_binding.get(None)
    stats = binding.stats if binding is not None else _unbound_stats
    try:
        kind = _kind_of(codec)
    except CodecRefused:
        stats.count_protect_failure(_mime_kind(codec), REASON_CODEC)
        logger.warning("media send: codec %s refused (fail closed)", codec.mimeType)
        raise
    if binding is None:
        return _UnboundEncoder(kind)
    loop = asyncio.get_running_loop()
    if kind == VIDEO:
        return _ProtectedVp8Encoder(binding, loop)
    feedback = _sender_feedback.get(None)
    red_opus_pt = _red_primary(codec)
    if codec.mimeType.lower() == "audio/red" and (feedback is None or red_opus_pt is None):
        # only Hotline's audio path builds RED (aiortc's own would send Opus under RED's
        # payload type); never negotiated for such a sender, refused if it were
        stats.count_protect_failure(AUDIO, REASON_CODEC)
        logger.warning("media send: RED without Hotline's audio path refused (fail closed)")
        raise CodecRefused("RED needs Hotline's audio path and an Opus primary")
    if feedback is not None:
        return FecOpusEncoder(feedback, lambda p: binding.protect(AUDIO, p, loop), red_opus_pt)
    return _ProtectedOpusEncoder(binding, loop)


def _red_primary(codec: RTCRtpCodecParameters) -> int | None:
    """The payload type a RED codec's fmtp (``96/96``) names for its blocks, if one."""
    if codec.mimeType.lower() != "audio/red":
        return None
    for key in codec.parameters:
        parts = str(key).split("/")
        if parts and all(p.isdigit() for p in parts) and len(set(parts)) == 1:
            return int(parts[0])
    return None


# --- decoders ---------------------------------------------------------------------------


class _ProtectedDecoder(Decoder):
    """Checks and decrypts each reassembled frame, then hands it to aiortc's decoder.

    Never lets anything but an ``av.FFmpegError`` escape: any other exception would end the
    receiver's decoder thread and freeze the track silently.
    """

    def __init__(
        self,
        kind: str,
        inner: Decoder | None,
        binding: _Binding | None,
        loop: asyncio.AbstractEventLoop | None,
        refusal: str | None = None,
    ) -> None:
        self._kind = kind
        self._inner = inner
        self._binding = binding
        self._loop = loop
        self._refusal = refusal
        self._last_request = -1e9
        self._guard: _VideoGuard | None = getattr(_decoder_context, "guard", None)
        self._decode_error: threading.Event | None = getattr(_decoder_context, "decode_error", None)
        self._audio: AudioReceivePath | None = getattr(_decoder_context, "audio", None)

    def _stats(self) -> MediaCryptoStats:
        return self._binding.stats if self._binding is not None else _unbound_stats

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        if isinstance(encoded_frame, _GuardedFrames) and self._guard is not None:
            return self._decode_guarded(encoded_frame.frames, self._guard)
        if isinstance(encoded_frame, AudioSteps) and self._audio is not None:
            return self._decode_audio(encoded_frame, self._audio)
        if self._binding is None or self._inner is None:
            reason = self._refusal or REASON_UNBOUND
            stats = self._stats()
            stats.count_received(self._kind)
            stats.count_rejected(self._kind, reason)
            return []  # nothing to ask of the sender: no key frame would help
        try:
            plain = self._binding.unprotect(self._kind, encoded_frame.data, self._loop)
        except HotlineError as exc:
            return self._rejected(exc.reason)
        try:
            frames = self._inner.decode(JitterFrame(data=plain, timestamp=encoded_frame.timestamp))
        except av.error.FFmpegError:
            self._binding.stats.count_decode_error(self._kind)
            raise
        except Exception as exc:
            self._binding.stats.count_decode_error(self._kind)
            raise FrameRejected(self._kind, f"decoder failed: {type(exc).__name__}") from exc
        self._binding.stats.count_decoded(self._kind, len(frames))
        return frames

    def _decode_guarded(self, parts: list[AssembledFrame], guard: _VideoGuard) -> list[Frame]:
        """Decode only frames whose references are all there (``media.video_guard``)."""
        if self._binding is None or self._inner is None:
            return self.decode(JitterFrame(b"", 0))  # counted as refused, shows nothing
        out: list[Frame] = []
        request = False
        for part in parts:
            try:
                plain = self._binding.unprotect(self._kind, part.data, self._loop)
            except HotlineError:
                request |= guard.on_refused()
                continue
            decision = guard.on_frame(is_vp8_keyframe(plain), part.discontinuous)
            request |= decision.request_keyframe
            if not decision.show:
                continue
            try:
                frames = self._inner.decode(JitterFrame(data=plain, timestamp=part.timestamp))
            except Exception:  # no exception may end the decoder thread
                self._binding.stats.count_decode_error(self._kind)
                request |= guard.on_refused()
                continue
            self._binding.stats.count_decoded(self._kind, len(frames))
            out.extend(frames)
        if request:
            self._stats().count_keyframe_request(self._kind)
            if self._decode_error is not None:
                self._decode_error.set()  # aiortc sends a PLI with the next RTP packet
        return out

    def _decode_audio(self, item: AudioSteps, path: AudioReceivePath) -> list[Frame]:
        """Playout steps of the audio path: already decrypted when they were buffered."""
        try:
            frames = path.decode(item)
        except Exception:  # no exception may end the decoder thread
            logger.exception("audio playout decoding failed")
            self._stats().count_decode_error(AUDIO)
            return []
        self._stats().count_decoded(AUDIO, len(frames))
        return frames

    def _rejected(self, reason: str) -> list[Frame]:
        if self._kind != VIDEO:
            return []  # audio has no key frames: drop quietly (counted, surfaced)
        now = time.monotonic()
        if now - self._last_request < KEYFRAME_REQUEST_INTERVAL_S:
            return []  # dropped; a key frame was asked for a moment ago
        self._last_request = now
        self._stats().count_keyframe_request(self._kind)
        raise FrameRejected(self._kind, reason)


def protected_decoder(codec: RTCRtpCodecParameters) -> Decoder:
    """Replacement for ``aiortc.rtcrtpreceiver.get_decoder``: called in the decoder thread."""
    binding: _Binding | None = getattr(_decoder_context, "binding", None)
    loop: asyncio.AbstractEventLoop | None = getattr(_decoder_context, "loop", None)
    kind = E2EE_CODECS.get(codec.mimeType.lower())
    if kind is None:
        logger.warning("media recv: codec %s refused (fail closed)", codec.mimeType)
        return _ProtectedDecoder(_mime_kind(codec), None, binding, loop, refusal=REASON_CODEC)
    if binding is None:
        logger.warning("media recv: %s receiver has no frame crypto bound; showing nothing", kind)
        return _ProtectedDecoder(kind, None, None, loop)
    return _ProtectedDecoder(kind, _ORIGINAL["get_decoder"](codec), binding, loop)


# --- the wrappers that find a sender's or receiver's peer connection --------------------


async def _send(self: RTCRtpSender, parameters: Any) -> None:
    entry = _entry_of(self)
    binding = entry.binding if entry is not None else None
    if entry is not None and entry.tap is not None:
        _wrap_transport(self.transport, entry.tap)
    feedback = None
    if binding is not None and entry is not None and entry.audio_path and self.kind == AUDIO:
        feedback = LossFeedback()
        self._hotline_loss = feedback  # type: ignore[attr-defined]
        # RED when negotiated (aiortc sends the first codec), its blocks of the negotiated
        # Opus payload type (an answer copies the local fmtp, which names the local one)
        codecs = list(parameters.codecs)
        others = [c for c in codecs if c.mimeType.lower() != "audio/red"]
        opus = next((c for c in others if c.mimeType.lower() == "audio/opus"), None)
        reds = []
        if opus is not None:
            for c in codecs:
                if c.mimeType.lower() == "audio/red":
                    mine = copy.deepcopy(c)
                    mine.parameters = {f"{opus.payloadType}/{opus.payloadType}": None}
                    reds.append(mine)
        parameters.codecs = reds + others
    token = _sender_binding.set(binding)
    ftoken = _sender_feedback.set(feedback)
    try:
        await _ORIGINAL["send"](self, parameters)  # creates the _run_rtp task: copies context
    finally:
        _sender_feedback.reset(ftoken)
        _sender_binding.reset(token)


async def _handle_sender_rtcp(self: RTCRtpSender, packet: Any) -> None:
    feedback: LossFeedback | None = getattr(self, "_hotline_loss", None)
    if feedback is not None and isinstance(packet, RtcpRrPacket | RtcpSrPacket):
        for report in packet.reports:
            if report.ssrc == self._ssrc:
                feedback.on_report(report.fraction_lost)
    await _ORIGINAL["sender_rtcp"](self, packet)


async def _receive(self: RTCRtpReceiver, parameters: Any) -> None:
    entry = _entry_of(self)
    track = self._track
    if track is not None:
        with _lock:
            binding = entry.binding if entry is not None else None
            _queue_bindings[track._queue] = binding
            started = self._RTCRtpReceiver__started  # type: ignore[attr-defined]
            guarded = entry is not None and entry.video_guard and binding is not None
            if guarded and not started and self._RTCRtpReceiver__kind == VIDEO:  # type: ignore[attr-defined]
                assert binding is not None
                guard = _VideoGuard(binding.stats)
                _queue_guards[track._queue] = guard
                self._RTCRtpReceiver__jitter_buffer = _GuardJitterBuffer(guard)  # type: ignore[attr-defined]
                self._RTCRtpReceiver__nack_generator = _GuardNack(guard)  # type: ignore[attr-defined]
            audio = entry is not None and entry.audio_path and binding is not None
            if audio and not started and self._RTCRtpReceiver__kind == AUDIO:  # type: ignore[attr-defined]
                assert binding is not None and entry is not None
                path = _audio_path(binding)
                entry.audio_receivers.append(path)
                _queue_audio[track._queue] = path
                self._RTCRtpReceiver__jitter_buffer = _AudioJitterAdapter(path, self, binding)  # type: ignore[attr-defined]
    await _ORIGINAL["receive"](self, parameters)
    path_started = _queue_audio.get(track._queue) if track is not None else None
    if path_started is not None and getattr(self, "_hotline_playout", None) is None:
        self._hotline_playout = asyncio.ensure_future(_audio_playout(self, path_started))  # type: ignore[attr-defined]


def _audio_path(binding: _Binding) -> AudioReceivePath:
    loop = asyncio.get_running_loop()
    return AudioReceivePath(lambda data: binding.unprotect(AUDIO, data, loop), loop.time)


class _AudioJitterAdapter:
    """Stands in for aiortc's audio ``JitterBuffer``: every packet goes to the audio path
    (decrypted, buffered); the playout task queues the frames, so ``add`` returns none."""

    capacity = 16

    def __init__(self, path: AudioReceivePath, receiver: RTCRtpReceiver, binding: _Binding) -> None:
        self._path = path
        self._receiver = receiver
        self._binding = binding
        self._logged_codec = False

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        codecs = self._receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        codec = codecs.get(packet.payload_type)
        if codec is not None and codec.mimeType.lower() == "audio/red":
            # its blocks must be of the negotiated Opus payload type (checked per block)
            opus = [c for c in codecs.values() if c.mimeType.lower() == "audio/opus"]
            if len(opus) == 1:
                data = getattr(packet, "_data", packet.payload)
                if data:
                    self._path.on_red(
                        packet.sequence_number,
                        packet.timestamp,
                        data,
                        opus[0],
                        opus[0].payloadType,
                    )
                return False, None
            codec = None  # RED without one Opus to carry: refused as any other codec
        if codec is None or codec.mimeType.lower() != "audio/opus":
            # fail closed, as the decoder seam does for any other codec
            self._binding.stats.count_received(AUDIO)
            self._binding.stats.count_rejected(AUDIO, REASON_CODEC)
            if not self._logged_codec:
                self._logged_codec = True
                name = codec.mimeType if codec is not None else packet.payload_type
                logger.warning("media recv: audio codec %s refused (fail closed)", name)
            return False, None
        data = getattr(packet, "_data", packet.payload)
        if data:
            self._path.on_packet(packet.sequence_number, packet.timestamp, data, codec)
        return False, None


async def _audio_playout(receiver: RTCRtpReceiver, path: AudioReceivePath) -> None:
    """Queue the audio path's due frames for the receiver's decoder thread, on time."""
    loop = asyncio.get_running_loop()
    queue = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
    try:
        while receiver._RTCRtpReceiver__decoder_thread is not None:  # type: ignore[attr-defined]
            steps = path.pull()
            if steps and path.codec is not None:
                queue.put((path.codec, AudioSteps(steps)))
            due = path.next_due()
            wait = 0.02 if due is None else due - loop.time()
            await asyncio.sleep(min(0.02, max(0.001, wait)))
    except asyncio.CancelledError:
        pass


class _VideoGuard:
    """A :class:`VideoReceiveGuard` shared by the event loop (packets) and decoder thread."""

    def __init__(self, stats: MediaCryptoStats) -> None:
        self._lock = threading.Lock()
        self._guard = VideoReceiveGuard()
        self._stats = stats
        stats.add_video_guard(self)

    def on_nack_point(self, seq: int, timestamp: int) -> list[int]:
        with self._lock:
            return self._guard.on_nack_point(seq, timestamp, time.monotonic())

    def on_packet(self, packet: VideoPacket) -> PacketOutcome:
        with self._lock:
            out = self._guard.on_packet(packet, time.monotonic())
        if out.request_keyframe:
            self._stats.count_keyframe_request(VIDEO)
        return out

    def on_frame(self, key: bool, discontinuous: bool) -> FrameDecision:
        with self._lock:
            return self._guard.gate.on_frame(key, discontinuous, time.monotonic())

    def on_refused(self) -> bool:
        with self._lock:
            return self._guard.gate.on_refused(time.monotonic())

    def counters(self) -> dict[str, int]:
        with self._lock:
            return self._guard.counters()


class _GuardedFrames(JitterFrame):
    """The frames one packet completed, in order: one item on aiortc's decoder queue."""

    def __init__(self, frames: list[AssembledFrame]) -> None:
        super().__init__(data=b"", timestamp=frames[-1].timestamp)
        self.frames = frames


class _GuardJitterBuffer:
    """Stands in for aiortc's video ``JitterBuffer``: ``add(packet) -> (pli, frame)``."""

    capacity = CAPACITY

    def __init__(self, guard: _VideoGuard) -> None:
        self._guard = guard

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        descriptor = None
        if packet.payload:  # an empty payload is padding (bandwidth probes): it fills a gap
            try:
                descriptor = parse_vp8_descriptor(packet.payload)
            except ValueError:
                return False, None
        vp = VideoPacket(
            seq=packet.sequence_number,
            timestamp=packet.timestamp,
            marker=bool(packet.marker),
            descriptor=descriptor,
            data=packet.payload[descriptor.size :] if descriptor else b"",
        )
        out = self._guard.on_packet(vp)
        return out.request_keyframe, _GuardedFrames(out.frames) if out.frames else None


class _GuardNack:
    """Stands in for aiortc's ``NackGenerator``: ``add(packet)``, then ``missing``."""

    def __init__(self, guard: _VideoGuard) -> None:
        self._guard = guard
        self.missing: list[int] = []

    def add(self, packet: RtpPacket) -> bool:
        self.missing = self._guard.on_nack_point(packet.sequence_number, packet.timestamp)
        return bool(self.missing)


def _decoder_worker(
    loop: asyncio.AbstractEventLoop,
    input_q: Any,
    output_q: asyncio.Queue[Any],
    decode_error: threading.Event,
) -> None:
    with _lock:
        binding = _queue_bindings.get(output_q)
        guard = _queue_guards.get(output_q)
        audio = _queue_audio.get(output_q)
    _decoder_context.audio = audio
    _decoder_context.binding = binding
    _decoder_context.loop = loop
    _decoder_context.guard = guard
    _decoder_context.decode_error = decode_error
    try:
        _ORIGINAL["decoder_worker"](loop, input_q, output_q, decode_error)
    finally:
        _decoder_context.binding = None
        _decoder_context.loop = None
        _decoder_context.guard = None
        _decoder_context.audio = None
        _decoder_context.decode_error = None


def _parse_rtp(data: bytes) -> RtpView | None:
    if len(data) < 12 or data[0] >> 6 != 2 or 192 <= data[1] <= 208:
        return None  # not RTP (or RTCP)
    csrc_count = data[0] & 0x0F
    offset = 12 + 4 * csrc_count
    if data[0] & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    if offset > len(data):
        return None
    return RtpView(
        data=data,
        payload_type=data[1] & 0x7F,
        marker=bool(data[1] & 0x80),
        sequence_number=int.from_bytes(data[2:4], "big"),
        timestamp=int.from_bytes(data[4:8], "big"),
        ssrc=int.from_bytes(data[8:12], "big"),
        payload_offset=offset,
    )


def _wrap_transport(transport: Any, tap: RtpTap) -> None:
    if getattr(transport, "_hotline_tap", None) is tap:
        return
    original: Callable[[bytes], Awaitable[None]] = transport._send_rtp

    async def send_rtp(data: bytes) -> None:
        view = _parse_rtp(data)
        if view is not None:
            altered = tap(view)
            if altered is None:
                return
            data = altered
        await original(data)

    transport._send_rtp = send_rtp
    transport._hotline_tap = tap


# --- ICE host addresses -----------------------------------------------------------------

LOOPBACK = "loopback"
HOST = "host"

_host_policy: tuple[str, ...] = (LOOPBACK,)


def set_host_addresses(policy: Sequence[str]) -> None:
    """Choose the local addresses aioice gathers host candidates on (process-wide).

    ``("loopback",)`` (the default): 127.0.0.1 only, for tests and the demo.
    ``("host",)``: aioice's own choice (every non-loopback address of every interface).
    Otherwise: explicit IPv4/IPv6 addresses, which must exist on this machine.
    """
    values = tuple(policy)
    if not values:
        raise UsageError("no ICE host address given (use 'loopback', 'host' or addresses)")
    if values not in ((LOOPBACK,), (HOST,)):
        present = set(_ORIGINAL_HOST_ADDRESSES(use_ipv4=True, use_ipv6=True)) | {
            "127.0.0.1",
            "::1",
        }
        for value in values:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise UsageError(f"not an IP address: {value!r}") from None
            if value not in present:
                raise UsageError(f"address {value} is not on any local interface")
    global _host_policy  # noqa: PLW0603 - aioice reads a module-level function, so it is global
    with _lock:
        _host_policy = values
    install_host_addresses()


def host_addresses() -> tuple[str, ...]:
    """The current ICE host-address policy."""
    return _host_policy


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    policy = _host_policy
    if policy == (LOOPBACK,):
        return ["127.0.0.1"] if use_ipv4 else []
    if policy == (HOST,):
        return list(_ORIGINAL_HOST_ADDRESSES(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
    out = []
    for value in policy:
        version = ipaddress.ip_address(value).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            out.append(value)
    return out


# --- install and self-check -------------------------------------------------------------

_ORIGINAL: dict[str, Any] = {
    "get_encoder": aiortc.rtcrtpsender.get_encoder,  # type: ignore[attr-defined]
    "get_decoder": aiortc.rtcrtpreceiver.get_decoder,  # type: ignore[attr-defined]
    "send": RTCRtpSender.send,
    "receive": RTCRtpReceiver.receive,
    "decoder_worker": aiortc.rtcrtpreceiver.decoder_worker,
    "sender_rtcp": RTCRtpSender._handle_rtcp_packet,
}
_ORIGINAL_HOST_ADDRESSES: Callable[..., list[str]] = aioice.ice.get_host_addresses
_installed = False
_host_installed = False


def _opus_codec() -> RTCRtpCodecParameters:
    """aiortc's Opus entry in its codec table (the offer and answer copy its parameters)."""
    return next(c for c in aiortc.codecs.CODECS["audio"] if c.mimeType == "audio/opus")


def _install_red() -> None:
    """Put RED over Opus right after Opus in aiortc's audio codec table (a peer connection
    without Hotline's audio path leaves it out of its preferences: :func:`red_allowed`)."""
    audio = aiortc.codecs.CODECS["audio"]
    if any(c.mimeType.lower() == "audio/red" for c in audio):
        return
    pt = _opus_codec().payloadType
    audio.insert(
        audio.index(_opus_codec()) + 1,
        RTCRtpCodecParameters(
            mimeType="audio/red",
            clockRate=48000,
            channels=2,
            payloadType=RED_PAYLOAD_TYPE,
            parameters={f"{pt}/{pt}": None},
        ),
    )


def red_allowed(pc: RTCPeerConnection) -> bool:
    """Whether ``pc`` may negotiate RED: only with Hotline's audio path (the default)."""
    with _lock:
        entry = _peers.get(pc)
        return entry is None or entry.audio_path


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def check_internals() -> list[str]:
    """Everything this module relies on in aiortc/aioice; returns the problems found.

    Checks versions, presence and signatures of the patched names, and (in the source)
    that the sender creates its encoder through the module-level ``get_encoder`` inside the
    task started by ``send()``, that ``decoder_worker`` calls ``get_decoder`` and survives
    ``av.FFmpegError`` by flagging a decode error, and that the receiver turns that flag into
    a PLI.
    """
    problems: list[str] = []

    def expect(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    def source(func: Any) -> str:
        try:
            return inspect.getsource(func)
        except (OSError, TypeError):
            return ""

    expect(aiortc.__version__ == AIORTC_VERSION, f"aiortc {aiortc.__version__} != {AIORTC_VERSION}")
    expect(aioice.__version__ == AIOICE_VERSION, f"aioice {aioice.__version__} != {AIOICE_VERSION}")
    expect(
        _ORIGINAL["get_encoder"] is aiortc.codecs.get_encoder
        and _params(aiortc.codecs.get_encoder) == ["codec"],
        "aiortc.rtcrtpsender.get_encoder is not codecs.get_encoder(codec)",
    )
    expect(
        _ORIGINAL["get_decoder"] is aiortc.codecs.get_decoder
        and _params(aiortc.codecs.get_decoder) == ["codec"],
        "aiortc.rtcrtpreceiver.get_decoder is not codecs.get_decoder(codec)",
    )
    expect(
        _params(Vp8Encoder._packetize) == ["buffer", "picture_id"]
        and isinstance(inspect.getattr_static(Vp8Encoder, "_packetize"), classmethod),
        "Vp8Encoder._packetize(buffer, picture_id) classmethod changed",
    )
    expect(
        "self._packetize(" in source(Vp8Encoder.encode)
        and "self._packetize(" in source(Vp8Encoder.pack),
        "Vp8Encoder.encode/pack no longer packetize through self._packetize",
    )
    expect(
        _params(Vp8Encoder.encode) == ["self", "frame", "force_keyframe"]
        and _params(OpusEncoder.encode) == ["self", "frame", "force_keyframe"]
        and _params(OpusEncoder.pack) == ["self", "packet"],
        "encoder encode/pack signatures changed",
    )
    expect(_params(_ORIGINAL["send"]) == ["self", "parameters"], "RTCRtpSender.send signature")
    expect(
        "ensure_future(self._run_rtp(" in source(_ORIGINAL["send"]),
        "RTCRtpSender.send no longer starts the _run_rtp task",
    )
    next_frame = source(RTCRtpSender._next_encoded_frame)
    expect(
        "get_encoder(codec)" in next_frame and "self.__encoder.pack(data)" in next_frame,
        "RTCRtpSender._next_encoded_frame no longer uses get_encoder(codec) / pack()",
    )
    expect(
        "_next_encoded_frame(" in source(RTCRtpSender._run_rtp),
        "RTCRtpSender._run_rtp no longer calls _next_encoded_frame",
    )
    expect(_params(_ORIGINAL["receive"]) == ["self", "parameters"], "RTCRtpReceiver.receive")
    receive_src = source(_ORIGINAL["receive"])
    expect(
        "target=decoder_worker" in receive_src and "self._track._queue" in receive_src,
        "RTCRtpReceiver.receive no longer starts decoder_worker on self._track._queue",
    )
    worker = _ORIGINAL["decoder_worker"]
    expect(
        _params(worker) == ["loop", "input_q", "output_q", "decode_error"],
        "decoder_worker signature changed",
    )
    worker_src = source(worker)
    expect(
        "get_decoder(codec)" in worker_src
        and "except av.FFmpegError" in worker_src
        and "decode_error.set()" in worker_src
        and "continue" in worker_src,
        "decoder_worker no longer survives av.FFmpegError by flagging decode_error",
    )
    expect(
        "self.__decoder_error.is_set()" in source(RTCRtpReceiver._handle_rtp_packet),
        "RTCRtpReceiver no longer sends a PLI after a decode error",
    )
    expect(
        _params(_ORIGINAL_HOST_ADDRESSES) == ["use_ipv4", "use_ipv6"]
        and "get_host_addresses(" in source(aioice.ice.Connection.gather_candidates),
        "aioice host-address gathering changed",
    )
    expect(_params(JitterFrame.__init__) == ["self", "data", "timestamp"], "JitterFrame changed")
    # the video guard replaces the video receiver's jitter buffer and NACK generator
    init_src = source(RTCRtpReceiver.__init__)
    expect(
        "self.__jitter_buffer = JitterBuffer(capacity=512, is_video=True)" in init_src
        and "self.__nack_generator = NackGenerator()" in init_src
        and "self.__kind = kind" in init_src
        and "self.__started = False" in init_src,
        "RTCRtpReceiver no longer keeps __jitter_buffer/__nack_generator/__kind/__started",
    )
    handle = source(RTCRtpReceiver._handle_rtp_packet)
    expect(
        "self.__nack_generator.add(packet)" in handle
        and "sorted(self.__nack_generator.missing)" in handle
        and "pli_flag, encoded_frame = self.__jitter_buffer.add(packet)" in handle
        and "if pli_flag:" in handle
        and "self.__decoder_queue.put((codec, encoded_frame))" in handle
        and handle.index("unwrap_rtx(") < handle.index("self.__nack_generator.add(packet)"),
        "RTCRtpReceiver._handle_rtp_packet no longer drives NACKs and the jitter buffer so",
    )
    probe = RtpPacket(payload_type=96, marker=1, sequence_number=7, timestamp=9, payload=b"x")
    expect(
        (probe.marker, probe.sequence_number, probe.timestamp, probe.payload) == (1, 7, 9, b"x"),
        "RtpPacket fields changed",
    )
    # the audio path replaces the audio receiver's jitter buffer and feeds its decoder queue
    expect(
        "self.__jitter_buffer = JitterBuffer(capacity=16, prefetch=4)" in init_src
        and "self.__decoder_queue: queue.Queue = queue.Queue()" in init_src
        and "self.__codecs: dict[int, RTCRtpCodecParameters] = {}" in init_src
        and "self.__decoder_thread: Optional[threading.Thread] = None" in init_src,
        "RTCRtpReceiver no longer keeps the audio __jitter_buffer/__decoder_queue/__codecs",
    )
    expect(
        "packet._data = depayload(codec, packet.payload)" in handle
        and handle.index("depayload(codec") < handle.index("self.__jitter_buffer.add(packet)"),
        "RTCRtpReceiver._handle_rtp_packet no longer depayloads before the jitter buffer",
    )
    stop_src = source(getattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder", None))
    expect(
        "self.__decoder_queue.put(None)" in stop_src and "self.__decoder_thread = None" in stop_src,
        "RTCRtpReceiver.__stop_decoder no longer ends the decoder thread so",
    )
    expect(
        _params(_ORIGINAL["sender_rtcp"]) == ["self", "packet"]
        and "packet.reports" in source(_ORIGINAL["sender_rtcp"])
        and "x.ssrc == self._ssrc" in source(_ORIGINAL["sender_rtcp"]),
        "RTCRtpSender._handle_rtcp_packet no longer reads receiver reports for its SSRC",
    )
    opus_entries = [c for c in aiortc.codecs.CODECS["audio"] if c.mimeType == "audio/opus"]
    expect(
        len(opus_entries) == 1
        and "parameters_to_sdp(codec.parameters)" in source(aiortc.sdp.MediaDescription.__str__)
        and "codec = copy.deepcopy(codec)" in source(aiortc.rtcpeerconnection.find_common_codecs),
        "aiortc's Opus codec entry no longer carries the fmtp of offers and answers",
    )
    # impair_ingress: aiortc's gatherer holds an aioice Connection whose StunProtocols
    # receive every datagram through datagram_received
    expect(
        "self._connection = Connection(" in source(aiortc.RTCIceGatherer.__init__)
        and "self._protocols += host_protocols"
        in source(aioice.ice.Connection.get_component_candidates)
        and _params(aioice.ice.StunProtocol.datagram_received) == ["self", "data", "addr"],
        "aioice datagram path (RTCIceGatherer._connection._protocols) changed",
    )
    return problems


def install() -> None:
    """Patch aiortc's codec seams (and aioice's host addresses). Idempotent.

    Raises :class:`AiortcIncompatible` (and patches nothing) if the installed aiortc or aioice
    is not the version whose internals were checked.
    """
    global _installed  # noqa: PLW0603 - the patches are process-wide by nature
    with _lock:
        if _installed:
            return
        problems = check_internals()
        if problems:
            raise AiortcIncompatible(
                "aiortc internals differ from the checked version: " + "; ".join(problems)
            )
        aiortc.rtcrtpsender.get_encoder = protected_encoder  # type: ignore[attr-defined]
        aiortc.rtcrtpreceiver.get_decoder = protected_decoder  # type: ignore[attr-defined]
        aiortc.rtcrtpreceiver.decoder_worker = _decoder_worker
        RTCRtpSender.send = _send  # type: ignore[method-assign]
        RTCRtpReceiver.receive = _receive  # type: ignore[method-assign]
        RTCRtpSender._handle_rtcp_packet = _handle_sender_rtcp  # type: ignore[method-assign]
        _opus_codec().parameters.update(OPUS_FMTP)
        _install_red()
        _installed = True
        logger.debug("aiortc frame-crypto seams installed")
    install_host_addresses()


def install_host_addresses() -> None:
    """Patch only aioice's host-address gathering (see :func:`set_host_addresses`). Idempotent.

    Used alone by the bare-aiortc baseline benchmark, which must not carry the codec seams.
    """
    global _host_installed  # noqa: PLW0603 - aioice reads a module-level function
    with _lock:
        if _host_installed:
            return
        if _params(_ORIGINAL_HOST_ADDRESSES) != ["use_ipv4", "use_ipv6"]:
            raise AiortcIncompatible("aioice.ice.get_host_addresses signature changed")
        aioice.ice.get_host_addresses = _get_host_addresses
        _host_installed = True


def installed() -> bool:
    return _installed


def selected_path(pc: RTCPeerConnection) -> dict[str, str] | None:
    """Candidate types of the ICE pair a peer connection uses (``{"local": "relay",
    "remote": "host"}``), or None before one is nominated. aiortc has no public API for the
    selected pair: this reads aioice's nominated pair of component 1 (bundled media)."""
    for transceiver in pc.getTransceivers():
        ice = transceiver.sender.transport.transport
        pair = getattr(getattr(ice, "_connection", None), "_nominated", {}).get(1)
        if pair is not None:
            return {"local": pair.local_candidate.type, "remote": pair.remote_candidate.type}
    return None
