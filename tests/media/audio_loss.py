"""An E2EE audio call over an impaired in-process link, and what B played out of A's audio.

Shared by ``tests/media/test_audio_loss.py`` and ``bench/bench_audio_loss.py``. Two peer
connections in one process on 127.0.0.1, SFrame on, audio only, each end's ingress impaired
by its own seeded :class:`~hotline.media.link_model.LinkModel` (so RTCP is impaired too). A
sends a looped clip (or the synthetic tone); B's sink captures every frame it played out.
``audio_path=False`` runs aiortc's own audio path (its jitter buffer, PyAV's Opus) with the
same E2EE: the baseline.
"""

from __future__ import annotations

import asyncio
import fractions
from array import array
from typing import Any

import av
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from hotline.media import aiortc_patch, engine
from hotline.media.frame_id import monotonic_ms
from hotline.media.link_model import LinkSpec
from hotline.media.sinks import PcmCapture
from hotline.media.sources import SyntheticAudioTrack
from tests.media.harness import Side, close, impair, make_side, sframe_pair

RATE = 48000
SAMPLES = 960


class ClipTrack(MediaStreamTrack):
    """Loops a 48 kHz mono s16 clip in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, pcm: array[int]) -> None:
        super().__init__()
        usable = len(pcm) - len(pcm) % SAMPLES
        self.pcm = pcm[:usable]
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self.sent * SAMPLES / RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        offset = (self.sent * SAMPLES) % len(self.pcm)
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES)
        frame.planes[0].update(self.pcm[offset : offset + SAMPLES].tobytes())
        frame.sample_rate = RATE
        frame.pts = self.sent * SAMPLES
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += 1
        return frame


class ChirpTimedTrack(SyntheticAudioTrack):
    """The synthetic tone, noting when each chirp (sample 0 of every second) is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.chirps_sent_ms: list[int] = []

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        if ((self.frames_sent - 1) * SAMPLES) % RATE == 0:
            self.chirps_sent_ms.append(monotonic_ms())
        return frame


def chirp_latencies_ms(sent: list[int], received: list[int]) -> list[int]:
    """One-way latency of each chirp played out: its play time minus the latest chirp sent
    before it (chirps are 1 s apart; both ends share the monotonic clock)."""
    out = []
    for r in received:
        before = [s for s in sent if s <= r]
        if before and r - before[-1] < 900:
            out.append(r - before[-1])
    return out


async def _connect_audio(a: Side, b: Side, track_a: MediaStreamTrack) -> None:
    a.pc.addTrack(track_a)
    a.tracks.append(track_a)
    engine.force_e2ee_codecs(a.pc)
    await a.pc.setLocalDescription(await a.pc.createOffer())
    offer = a.pc.localDescription
    await b.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type))
    back = SyntheticAudioTrack()
    b.pc.addTrack(back)
    b.tracks.append(back)
    engine.force_e2ee_codecs(b.pc)
    await b.pc.setLocalDescription(await b.pc.createAnswer())
    answer = b.pc.localDescription
    await a.pc.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))


async def run_call(
    spec: LinkSpec,
    *,
    audio_path: bool,
    seconds: float,
    seed: int = 1,
    clip: array[int] | None = None,
    warmup: float = 2.0,
    capture_path: str | None = None,
    copies: int | None = None,
) -> dict[str, Any]:
    """One call: ``warmup`` s, then ``seconds`` s captured at B (with ``copies`` and a clip:
    long enough to hold that many whole copies of it). Frames are placed at their
    timestamps (gaps become silence). Returns the capture and stats."""
    ca, cb = sframe_pair()
    a = make_side("a", ca, audio_path=audio_path)
    b = make_side("b", cb, audio_path=audio_path)
    capture = PcmCapture(capture_path, by_pts=True)
    try:
        track = ClipTrack(clip) if clip is not None else ChirpTimedTrack()
        await _connect_audio(a, b, track)
        link_b = impair(b, spec, seed)
        link_a = impair(a, spec, seed + 1000)
        for _ in range(200):
            if b.audio_sink.frames >= 10:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no audio at all: {b.audio_sink.to_dict()}")
        await asyncio.sleep(warmup)
        packets0, lost0 = link_b.packets, link_b.lost
        sent0 = track.sent if isinstance(track, ClipTrack) else 0
        chirps0 = len(b.audio_sink.chirp_times_ms)
        if copies is not None and clip is not None:
            to_next = (len(clip) - (sent0 * SAMPLES) % len(clip)) % len(clip)
            seconds = (to_next + copies * len(clip)) / RATE + 0.8
        b.audio_sink.capture = capture
        await asyncio.sleep(seconds)
        b.audio_sink.capture = None
        paths = aiortc_patch.audio_receivers(b.pc)
        return {
            "mode": "hotline" if audio_path else "aiortc",
            "seed": seed,
            "pcm": capture.pcm,
            "clip_offset": (sent0 * SAMPLES) % len(clip) if clip is not None else 0,
            "loss": round((link_b.lost - lost0) / max(1, link_b.packets - packets0), 4),
            "loss_to_a": round(link_a.lost / max(1, link_a.packets), 4),
            "path": paths[0].stats() if paths else None,
            "gap_ms": round(capture.gap_samples * 1000 / RATE),
            "sent_fec_loss": _sender_loss(a),
            "latency_ms": chirp_latencies_ms(
                getattr(track, "chirps_sent_ms", []), b.audio_sink.chirp_times_ms[chirps0:]
            ),
        }
    finally:
        capture.close()
        await close(a, b)


def _sender_loss(side: Side) -> int | None:
    for transceiver in side.pc.getTransceivers():
        feedback = getattr(transceiver.sender, "_hotline_loss", None)
        if feedback is not None:
            return int(feedback.expected_loss_percent())
    return None


def silent_ms(pcm: array[int], threshold: int, window: int = 480) -> float:
    """How much of ``pcm`` is in ``window``-sample blocks whose peak stays under ``threshold``."""
    blocks = 0
    for i in range(0, len(pcm) - window + 1, window):
        block = pcm[i : i + window]
        if max(block) < threshold and -min(block) < threshold:
            blocks += 1
    return blocks * window * 1000 / RATE


def longest_silence_ms(pcm: array[int], threshold: int, window: int = 480) -> float:
    """The longest run of ``window``-sample blocks whose peak stays under ``threshold``."""
    run = best = 0
    for i in range(0, len(pcm) - window + 1, window):
        block = pcm[i : i + window]
        if max(block) < threshold and -min(block) < threshold:
            run += 1
            best = max(best, run)
        else:
            run = 0
    return best * window * 1000 / RATE
