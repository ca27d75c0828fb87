"""Hotline's audio path around aiortc: jitter buffer, FEC/PLC decoding, FEC encoding.

The aiortc side (which private attributes are swapped, which methods wrapped) lives in
:mod:`hotline.media.aiortc_patch`; this module holds what runs there, using only aiortc's
public types:

- :class:`AudioReceivePath`, one per bound audio receiver. On the event loop,
  :meth:`~AudioReceivePath.on_packet` **decrypts** each RTP payload (SFrame, through the
  peer connection's frame crypto) and pushes the clear Opus packet into an
  :class:`~hotline.media.audio_jitter.AudioJitterBuffer`; a playout task asks the buffer on a
  timer which frames are due and queues those steps for aiortc's decoder thread, where
  :meth:`~AudioReceivePath.decode` turns them into samples with libopus: normal decode, FEC
  from the next packet, PLC, silence, or a cross-faded merge. FEC data lives inside the Opus
  packet, so decryption always comes first: the buffer only ever holds authenticated
  plaintext, and a refused packet is a missing packet (concealed, never decoded).
- :class:`FecOpusEncoder`: aiortc's ``OpusEncoder`` interface on libopus, mono, in-band FEC
  on, with the expected loss following what the receiver reports in RTCP
  (:class:`LossFeedback`, fed from the sender's receiver reports).
- :class:`PlayoutTap`: lets a caller see every frame played out (the WAV capture).
"""

from __future__ import annotations

import array
import fractions
import logging
import threading
from collections.abc import Callable
from typing import Any

import av
from aiortc.codecs.opus import OpusEncoder as AiortcOpusEncoder
from av.frame import Frame
from av.packet import Packet

from hotline.errors import HotlineError, OpusDecodeError
from hotline.media import opus, red
from hotline.media.audio_jitter import (
    Action,
    AudioJitterBuffer,
    AudioPacket,
    Playout,
    opus_samples,
)

logger = logging.getLogger("hotline.media")

RATE = 48000
TIME_BASE = fractions.Fraction(1, RATE)
#: what the encoder sends: mono at 64 kbit/s, FEC on (PESQ-WB of real speech through libopus
#: 1.3.1, no network: 4.26 at 32 kbit/s, 4.47 at 48, 4.52 at 64; 5 % loss: 4.04, 4.32, 4.44)
BITRATE = 64000
#: with RED redundancy on (two earlier frames in every packet) the Opus bitrate is lowered:
#: the three copies of each frame come to ~126 kbit/s of payload while the link is lossy
#: (no loss: 4.47 at 48 kbit/s, 4.52 at 64, PESQ-WB through libopus 1.3.1)
RED_BITRATE = 48000
#: earlier frames in each RED packet: a copy of frame n-2 also carries n-3's FEC, so after a
#: burst of four the first packet brings back three frames (offline, real libopus and this
#: jitter buffer, bursty loss, 16 copies of real speech: FEC alone 3.65, distance 1 at 64
#: kbit/s 3.79, distance 2 at 48 kbit/s 3.80, at 40 kbit/s 3.75; paired gain over FEC alone
#: +0.15 for distance 1, +0.30 for distance 2)
RED_DISTANCE = 2
#: redundancy is sent while the smoothed reported loss is at least this (a clean link gets
#: plain FEC at the full bitrate; the initial estimate, before any report, is above it)
RED_MIN_LOSS = 0.01
#: the expected loss the encoder starts with (before any receiver report) and its floor
INITIAL_LOSS_PERCENT = 5
MIN_LOSS_PERCENT = 2
#: the expected loss set is the reported loss (smoothed) times this, capped
LOSS_HEADROOM = 1.5
MAX_LOSS_PERCENT = 40

Unprotect = Callable[[bytes], bytes]  # raises HotlineError to refuse
#: ``(pcm s16 stereo interleaved, samples, action)`` for every frame played out
PlayoutTap = Callable[[bytes, int, str], None]


class LossFeedback:
    """The loss a sender's receiver reports (RTCP RR ``fraction_lost``), smoothed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fraction = INITIAL_LOSS_PERCENT / 100 / LOSS_HEADROOM
        self.reports = 0

    def on_report(self, fraction_lost: int) -> None:
        """``fraction_lost`` as RTCP carries it (0..255 = 0..100 %)."""
        with self._lock:
            value = fraction_lost / 256
            # rise fast, fall slowly: one clean interval should not switch FEC off
            weight = 0.5 if value > self.fraction else 0.15
            self.fraction += weight * (value - self.fraction)
            self.reports += 1

    def lossy(self) -> bool:
        """Whether RED redundancy is worth its bits (see :data:`RED_MIN_LOSS`)."""
        with self._lock:
            return self.fraction >= RED_MIN_LOSS

    def expected_loss_percent(self) -> int:
        with self._lock:
            percent = round(self.fraction * 100 * LOSS_HEADROOM)
        return max(MIN_LOSS_PERCENT, min(MAX_LOSS_PERCENT, percent))


class FecOpusEncoder(AiortcOpusEncoder):
    """aiortc's Opus encoder interface, on libopus: mono, in-band FEC, live expected loss.

    ``protect`` turns each Opus packet into the payload sent (the SFrame seam); it raises a
    ``HotlineError`` to drop the batch. With ``red_opus_pt`` (the negotiated RED codec's primary
    payload type: Opus) every payload is a RED packet (RFC 2198, :mod:`hotline.media.red`):
    while the link is lossy it carries the previous protected frame before the primary, and
    the Opus bitrate drops to :data:`RED_BITRATE`; otherwise the primary alone.
    """

    def __init__(
        self,
        feedback: LossFeedback,
        protect: Callable[[bytes], bytes],
        red_opus_pt: int | None = None,
    ) -> None:
        # not calling AiortcOpusEncoder.__init__: it opens PyAV's encoder, unused here
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE, frame_size=960)
        self.first_packet_pts: int | None = None
        self._opus = opus.OpusEncoder(channels=1, bitrate=BITRATE, fec=True)
        self._feedback = feedback
        self._protect = protect
        self._loss = -1
        self._red_opus_pt = red_opus_pt
        self._bitrate = BITRATE
        # the last protected frames, newest last, with their timestamps (RED blocks)
        self._previous: list[tuple[bytes, int]] = []
        self.red_blocks_sent = 0

    def _red(self, protected: bytes, pts: int, redundant: bool) -> bytes:
        assert self._red_opus_pt is not None
        blocks: list[red.RedBlock] = []
        if redundant:
            # offsets from the frames' own timestamps (a gap in the source stays a gap);
            # one that does not fit RED's 14 bits is left out by red.build
            blocks = [
                red.RedBlock(self._red_opus_pt, pts - before, data)
                for data, before in self._previous
                if before < pts
            ]
            self.red_blocks_sent += len(blocks)
        self._previous = [*self._previous, (protected, pts)][-RED_DISTANCE:]
        return red.build(self._red_opus_pt, protected, blocks)

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.AudioFrame)
        loss = self._feedback.expected_loss_percent()
        if loss != self._loss:
            self._opus.set_packet_loss(loss)
            self._loss = loss
        redundant = self._red_opus_pt is not None and self._feedback.lossy()
        bitrate = RED_BITRATE if redundant else BITRATE
        if bitrate != self._bitrate:
            self._opus.set_bitrate(bitrate)
            self._bitrate = bitrate
        payloads: list[bytes] = []
        stamps: list[int] = []
        first_pts: int | None = None
        for chunk in self.resampler.resample(frame):
            if first_pts is None:
                first_pts = chunk.pts
            payloads.append(
                self._opus.encode(bytes(chunk.planes[0])[: chunk.samples * 2], chunk.samples)
            )
            stamps.append(chunk.pts or 0)
        if not payloads or first_pts is None:
            return [], 0
        if self.first_packet_pts is None:
            self.first_packet_pts = first_pts
        try:
            protected = [self._protect(p) for p in payloads]
        except HotlineError:
            self._previous = []
            return [], 0  # drop the whole batch: partial batches would shift timestamps
        if self._red_opus_pt is not None:
            protected = [self._red(p, t, redundant) for p, t in zip(protected, stamps, strict=True)]
        return protected, first_pts - self.first_packet_pts

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        payloads, timestamp = super().pack(packet)
        try:
            protected = [self._protect(p) for p in payloads]
        except HotlineError:
            return [], 0
        if self._red_opus_pt is not None:  # relayed frames: the primary alone
            self._previous = []
            protected = [red.build(self._red_opus_pt, p, []) for p in protected]
        return protected, timestamp


class AudioSteps:
    """The playout steps one timer tick produced: one item on aiortc's decoder queue."""

    def __init__(self, steps: list[Playout]) -> None:
        self.steps = steps
        self.data = b""
        self.timestamp = steps[0].timestamp


def _crossfade(a: bytes, b: bytes) -> bytes:
    """One frame out of two of equal length: ``a`` fading out while ``b`` fades in."""
    x, y = array.array("h", a), array.array("h", b)
    n = min(len(x), len(y))
    out = array.array("h", bytes(2 * n))
    for i in range(n):
        w = i / n
        out[i] = int(x[i] * (1 - w) + y[i] * w)
    return out.tobytes()


class AudioReceivePath:
    """One audio receiver's jitter buffer (event loop) and libopus decoding (decoder thread)."""

    def __init__(self, unprotect: Unprotect, now: Callable[[], float]) -> None:
        self._unprotect = unprotect
        self._now = now
        self.buffer = AudioJitterBuffer()
        self._decoder: opus.OpusDecoder | None = None
        self._pts = 0
        self._lock = threading.Lock()
        self.taps: list[PlayoutTap] = []
        self.codec: Any = None
        self.counters: dict[str, int] = {
            "refused": 0,
            "malformed": 0,
            "decode_errors": 0,
            "red_recovered": 0,
            "red_refused": 0,
            "red_malformed": 0,
        }

    # --- event loop -----------------------------------------------------------------------

    def on_packet(self, seq: int, timestamp: int, payload: bytes, codec: Any) -> None:
        """One received RTP payload: decrypt, then buffer (a refusal is a missing frame)."""
        self.codec = codec
        try:
            plain = self._unprotect(payload)
        except HotlineError:
            self.counters["refused"] += 1  # counted and surfaced by the seam too
            return
        try:
            samples = opus_samples(plain)
        except ValueError:
            self.counters["malformed"] += 1
            n = self.counters["malformed"]
            if n == 1 or n % 100 == 0:
                logger.warning("media recv: malformed Opus packet after decryption [#%d]", n)
            return
        with self._lock:
            self.buffer.push(AudioPacket(seq, timestamp, plain, samples), self._now())

    def on_red(self, seq: int, timestamp: int, payload: bytes, codec: Any, opus_pt: int) -> None:
        """One received RED payload (RFC 2198): each block is an SFrame-protected Opus frame.

        The primary is handled as :meth:`on_packet`. A redundant block is decrypted only if
        its frame is still wanted (missing and not yet due), so each frame is decrypted at
        most once; one that fails authentication is counted (``red_refused``) and dropped,
        never played. A malformed RED payload, or a block of any payload type but Opus, is
        refused whole (``red_malformed``)."""
        try:
            blocks, primary = red.parse(payload)
            if primary.payload_type != opus_pt or any(b.payload_type != opus_pt for b in blocks):
                raise red.RedMalformed("RED block of another payload type than Opus")
        except red.RedMalformed:
            self.counters["red_malformed"] += 1
            n = self.counters["red_malformed"]
            if n == 1 or n % 100 == 0:
                logger.warning("media recv: malformed RED payload refused [#%d]", n)
            return
        self.codec = codec
        with self._lock:
            self.buffer.red_seen(len(blocks))
        for block in blocks:
            ts = (timestamp - block.offset) & 0xFFFFFFFF
            with self._lock:
                wanted = bool(block.data) and self.buffer.wants(ts)
            if not wanted:
                continue
            try:
                plain = self._unprotect(block.data)
                samples = opus_samples(plain)
            except HotlineError:
                self.counters["red_refused"] += 1  # counted and surfaced by the seam too
                continue
            except ValueError:
                self.counters["malformed"] += 1
                continue
            with self._lock:
                if self.buffer.push(AudioPacket(-1, ts, plain, samples), self._now(), True):
                    self.counters["red_recovered"] += 1
        self.on_packet(seq, timestamp, primary.data, codec)

    def pull(self) -> list[Playout]:
        with self._lock:
            return self.buffer.pull(self._now())

    def next_due(self) -> float | None:
        with self._lock:
            return self.buffer.next_due()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self.buffer.counters)
            out["target_delay_ms"] = round(self.buffer.target_delay() * 1000, 1)
            delay = self.buffer.delay()
            out["delay_ms"] = None if delay is None else round(delay * 1000, 1)
        out.update(self.counters)
        return out

    # --- decoder thread -------------------------------------------------------------------

    def decode(self, item: AudioSteps) -> list[Frame]:
        if self._decoder is None:
            self._decoder = opus.OpusDecoder(channels=2)
        frames: list[Frame] = []
        for step in item.steps:
            pcm = self._decode_step(self._decoder, step)
            samples = len(pcm) // 4
            for tap in list(self.taps):
                tap(pcm, samples, step.action.value)
            frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
            frame.planes[0].update(pcm)
            frame.sample_rate = RATE
            frame.pts = self._pts
            frame.time_base = TIME_BASE
            self._pts += samples
            frames.append(frame)
        return frames

    def _decode_step(self, dec: opus.OpusDecoder, step: Playout) -> bytes:
        n = step.samples
        try:
            if step.action is Action.PLAY:
                assert step.data is not None
                return self._fit(dec.decode(step.data), n)
            if step.action is Action.FEC:
                assert step.next_data is not None
                return self._fit(dec.decode_fec(step.next_data, n), n)
            if step.action is Action.PLC:
                return self._fit(dec.conceal(n), n)
            if step.action is Action.MERGE:
                assert step.data is not None and step.next_data is not None
                a = self._fit(dec.decode(step.data), n)
                b = self._fit(dec.decode(step.next_data), n)
                return _crossfade(a, b)
        except OpusDecodeError:
            self.counters["decode_errors"] += 1
            try:
                return self._fit(dec.conceal(n), n)
            except OpusDecodeError:
                pass
        return bytes(4 * n)  # SILENCE

    @staticmethod
    def _fit(pcm: bytes, samples: int) -> bytes:
        size = 4 * samples
        return pcm[:size] if len(pcm) >= size else pcm + bytes(size - len(pcm))
