"""Receive-side video guard: never decode a frame whose reference is missing (pure).

aiortc's own video receive path hands the decoder every frame its jitter buffer completes,
including delta frames whose reference frame was lost: VP8 then shows corrupt pictures, and
SFrame cannot catch them because they authenticate. This module decides, packet by packet and
frame by frame, what reaches the decoder. ``now`` (seconds, monotonic) is always passed in;
nothing here does I/O or imports aiortc. ``aiortc_patch`` wires it into aiortc's receiver.

Three parts, one per concern, combined by :class:`VideoReceiveGuard`:

:class:`FrameAssembler` (replaces aiortc's 512-packet video jitter buffer)
    Joins the packets of a frame (VP8 payload descriptor: S bit and partition 0 on the first
    packet, RTP marker on the last) and releases each frame as soon as it is complete and
    *continuous*: its first sequence number follows the last packet of the frame released
    before it. A hole is waited for at most ``wait_s`` (see :func:`hole_wait_s`, 100-350 ms
    from the measured round trip: time for one NACK retry), or not at all once the packets
    behind it are more than :data:`STALE_GAP_S` of media time newer (an outage: what was lost
    is too old to show). Then the hole is abandoned, everything before the next frame start
    is dropped, and the next released frame is flagged ``discontinuous``. Once the first
    retransmission is overdue (:func:`early_keyframe_s`) a key frame is asked for while the
    hole is still waited for, so that a second loss costs no extra round trip; and as soon as
    a key frame's first packet is behind the hole (its VP8 header is in clear), the hole is
    skipped to it: nothing older is needed.
:class:`NackScheduler` (replaces aiortc's ``NackGenerator``, which asks once per gap)
    Asks for each missing packet again every ``max(20 ms, 1.1 x RTT + 10 ms)``, at most
    :data:`NACK_MAX_TRIES` times, and never for packets lost in an outage (a gap spanning more
    than :data:`STALE_GAP_S` of media time, or more than :data:`NACK_MAX_GAP` packets). It
    measures the round trip from NACKs answered on their first try (Karn's rule).
:class:`KeyframeGate` (in the decoder thread, after SFrame authenticated the frame)
    After a discontinuity or a refused frame, withholds every delta frame (freeze on the last
    good picture) and asks for a key frame, at most every :data:`KEYFRAME_REQUEST_INTERVAL_S`,
    until one arrives; the key-frame bit is read from the decrypted, authenticated VP8 frame.

Why sequence numbers and not PictureIDs: aiortc's VP8 encoder advances its PictureID even
when libvpx outputs nothing for a frame, so a PictureID gap is not a loss; an RTP sequence
gap between two frames always is. The PictureID is kept on each frame for diagnostics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

#: at most one key-frame request (PLI) per this many seconds: one round trip at 60 ms each
#: way plus a key frame's encode and send time, so a lost key frame is asked for again soon
KEYFRAME_REQUEST_INTERVAL_S = 0.25
#: how long a hole may hold frames back: 2.2 x RTT + 40 ms, clamped to these bounds
HOLE_WAIT_MIN_S = 0.10
HOLE_WAIT_MAX_S = 0.35
#: frames behind a hole whose media time is this much newer than the hole: abandon at once
STALE_GAP_S = 0.40
#: NACK retries: every max(NACK_RETRY_MIN_S, 1.1 x RTT + 10 ms), this many requests per packet
NACK_RETRY_MIN_S = 0.02
NACK_MAX_TRIES = 4
#: a gap of more packets than this is an outage, not loss: no NACK, the hole is abandoned
NACK_MAX_GAP = 256
#: round-trip estimate before the first measurement
INITIAL_RTT_S = 0.10
#: packets held at most (aiortc's video jitter buffer held 512)
CAPACITY = 512
#: RTP clock rate of video
VIDEO_CLOCK_RATE = 90_000
#: a sequence number this far behind what was released, or this far ahead, restarts the stream
RESET_BACK = 3000
RESET_AHEAD = 16384

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


@dataclass(frozen=True)
class Vp8Descriptor:
    """The RTP VP8 payload descriptor (RFC 7741 §4.2), which stays in clear under SFrame."""

    start: bool  #: S: first packet of a VP8 partition
    partition: int  #: PID
    picture_id: int | None  #: 7- or 15-bit PictureID, if present
    size: int  #: descriptor length in bytes

    @property
    def frame_start(self) -> bool:
        return self.start and self.partition == 0


def parse_vp8_descriptor(payload: bytes) -> Vp8Descriptor:
    """Parse the descriptor at the start of a VP8 RTP payload; ``ValueError`` if truncated."""
    if len(payload) < 1:
        raise ValueError("empty VP8 payload")
    first = payload[0]
    pos = 1
    picture_id = None
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            raise ValueError("truncated VP8 descriptor")
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: PictureID
            if len(payload) < pos + 1:
                raise ValueError("truncated VP8 PictureID")
            if payload[pos] & 0x80:  # M: 15-bit
                if len(payload) < pos + 2:
                    raise ValueError("truncated VP8 PictureID")
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                pos += 2
            else:
                picture_id = payload[pos] & 0x7F
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            pos += 1
        if len(payload) < pos:
            raise ValueError("truncated VP8 descriptor")
    return Vp8Descriptor(
        start=bool(first & 0x10), partition=first & 0x0F, picture_id=picture_id, size=pos
    )


def is_vp8_keyframe(frame: bytes) -> bool:
    """Whether a whole VP8 frame (RFC 6386 §9.1) is a key frame: P bit 0 and the start code."""
    return len(frame) >= 10 and not frame[0] & 0x01 and frame[3:6] == b"\x9d\x01\x2a"


def hole_wait_s(rtt_s: float) -> float:
    """How long a hole may hold frames back: long enough for one NACK retry to arrive."""
    return min(HOLE_WAIT_MAX_S, max(HOLE_WAIT_MIN_S, 2.2 * rtt_s + 0.04))


def early_keyframe_s(rtt_s: float) -> float:
    """After this long a hole's first retransmission is overdue: ask for a key frame too."""
    return 1.2 * rtt_s + 0.02


class SeqUnwrapper:
    """Extends 16-bit RTP sequence numbers to integers (the same input twice gives the same)."""

    def __init__(self) -> None:
        self._highest: int | None = None

    def extend(self, seq: int) -> int:
        if self._highest is None:
            self._highest = seq
            return seq
        delta = (seq - self._highest) % SEQ_MOD
        ext = self._highest + delta if delta < SEQ_MOD // 2 else self._highest + delta - SEQ_MOD
        self._highest = max(self._highest, ext)
        return ext

    def reset(self) -> None:
        self._highest = None


@dataclass(frozen=True)
class VideoPacket:
    """One received video RTP packet, as the guard sees it."""

    seq: int  #: 16-bit RTP sequence number
    timestamp: int
    marker: bool
    descriptor: Vp8Descriptor | None  #: ``None``: a padding packet (no payload)
    data: bytes  #: the payload without its VP8 descriptor

    @property
    def keyframe_hint(self) -> bool:
        """The first packet of a key frame, by the VP8 header the frame crypto leaves in clear.

        Unauthenticated: used only to stop waiting for older packets. Whether the frame is
        shown as a key frame is decided on the decrypted frame (:class:`KeyframeGate`); a
        forged bit costs a freeze and a key-frame request, no more.
        """
        d = self.descriptor
        return d is not None and d.frame_start and is_vp8_keyframe(self.data[:10])


@dataclass(frozen=True)
class AssembledFrame:
    """A complete frame: the depayloaded packets of one RTP timestamp, in order."""

    data: bytes
    timestamp: int
    first_seq: int
    last_seq: int
    picture_id: int | None
    #: packets or frames before this one were lost: it may reference a missing frame
    discontinuous: bool


@dataclass(frozen=True)
class _Packet:
    timestamp: int
    marker: bool
    start: bool
    key: bool
    picture_id: int | None
    data: bytes
    padding: bool


class FrameAssembler:
    """The video jitter buffer: complete, continuous frames out; bounded waits for holes."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.wait_s = hole_wait_s(INITIAL_RTT_S)
        self.early_s = early_keyframe_s(INITIAL_RTT_S)
        #: set when a hole waited past ``early_s``: the caller asks for a key frame, clears it
        self.want_keyframe = False
        self._asked_early = False
        self._packets: dict[int, _Packet] = {}
        self._next: int | None = None  # first sequence number not yet released
        self._last_ts: int | None = None  # timestamp of the last frame released
        self._newest_ts: int | None = None
        self._blocked_since: float | None = None
        self._discontinuity = False
        self.counters: Counter[str] = Counter()

    @property
    def next_seq(self) -> int | None:
        return self._next

    def add(self, seq: int, packet: VideoPacket, now: float) -> list[AssembledFrame]:
        """Take one packet (``seq``: its extended number, see :class:`SeqUnwrapper`)."""
        if self._next is not None and not -RESET_BACK <= seq - self._next <= RESET_AHEAD:
            self._restart()
        if seq in self._packets or (self._next is not None and seq < self._next):
            self.counters["late_packets"] += 1  # a duplicate, or behind an abandoned hole
            return []
        timestamp = packet.timestamp
        d = packet.descriptor
        self._packets[seq] = _Packet(
            timestamp,
            packet.marker,
            d is not None and d.frame_start,
            packet.keyframe_hint,
            d.picture_id if d is not None else None,
            packet.data,
            padding=d is None,
        )
        if d is None:
            self.counters["padding_packets"] += 1
            return self.poll(now)  # a sequence number to fill, never a frame
        if self._newest_ts is None or 0 < (timestamp - self._newest_ts) % TS_MOD < TS_MOD // 2:
            self._newest_ts = timestamp
        return self.poll(now)

    def poll(self, now: float) -> list[AssembledFrame]:
        """Release what is ready and abandon holes that waited too long."""
        out: list[AssembledFrame] = []
        while self._packets:
            if self._next is None:
                starts = [s for s, p in self._packets.items() if p.start]
                if not starts:
                    break
                self._drop_before(min(starts))
                self._next = min(starts)
            first = self._packets.get(self._next)
            if first is not None and first.padding:
                del self._packets[self._next]  # between frames: fills its sequence number
                self._next += 1
                continue
            if first is not None and not first.start:
                # a frame's tail whose head was lost or abandoned: it can never be shown
                self._drop_before(self._next + 1)
                self._next += 1
                self._discontinuity = True
                continue
            blocked_ts: int | None
            if first is not None:
                frame = self._complete_frame(self._next, first)
                if frame is not None:
                    out.append(frame)
                    continue
                blocked_ts = first.timestamp
            else:
                blocked_ts = self._last_ts
            if max(self._packets) <= self._hole_end():
                break  # nothing known to be missing yet: the frame is still arriving
            if self._blocked_since is None:
                self._blocked_since = now
                self._asked_early = False
            if not self._asked_early and now - self._blocked_since >= self.early_s:
                self._asked_early = True
                self.want_keyframe = True
                self.counters["keyframes_asked_early"] += 1
            hole = self._hole_end() + 1
            if any(p.key for s, p in self._packets.items() if s > hole):
                self._abandon("holes_skipped_to_keyframe", key=True)  # nothing older matters
                continue
            stale = blocked_ts is not None and self._media_gap_s(blocked_ts) > STALE_GAP_S
            if not (
                stale
                or now - self._blocked_since >= self.wait_s
                or len(self._packets) > self.capacity
            ):
                break
            self._abandon("stale_holes_skipped" if stale else "holes_abandoned")
        return out

    def _hole_end(self) -> int:
        """The highest sequence number contiguous from ``_next`` (``_next - 1`` if absent)."""
        assert self._next is not None
        seq = self._next
        while seq in self._packets:
            seq += 1
        return seq - 1

    def _media_gap_s(self, timestamp: int) -> float:
        assert self._newest_ts is not None
        gap = (self._newest_ts - timestamp) % TS_MOD
        return 0.0 if gap >= TS_MOD // 2 else gap / VIDEO_CLOCK_RATE

    def _complete_frame(self, start: int, first: _Packet) -> AssembledFrame | None:
        seq = start
        parts: list[bytes] = []
        while True:
            p = self._packets.get(seq)
            if p is None:
                return None
            if p.timestamp != first.timestamp:
                if not p.start:
                    return None  # a packet of another frame without a start: malformed
                seq -= 1  # the frame ended without a marker: the next one has begun
                break
            parts.append(p.data)
            if p.marker:
                break
            seq += 1
        for s in range(start, seq + 1):
            del self._packets[s]
        self._next = seq + 1
        self._last_ts = first.timestamp
        self._blocked_since = None
        frame = AssembledFrame(
            data=b"".join(parts),
            timestamp=first.timestamp,
            first_seq=start,
            last_seq=seq,
            picture_id=first.picture_id,
            discontinuous=self._discontinuity,
        )
        self._discontinuity = False
        self.counters["frames"] += 1
        return frame

    def _abandon(self, reason: str, key: bool = False) -> None:
        """Give up on the hole at ``_next``: skip to the next frame (or key frame) start."""
        assert self._next is not None
        hole = self._hole_end() + 1
        starts = [
            s for s, p in self._packets.items() if p.start and s > hole and (p.key or not key)
        ]
        self.counters[reason] += 1
        self._discontinuity = True
        self._blocked_since = None
        if starts:
            self._drop_before(min(starts))
            self._next = min(starts)
        else:
            self._drop_before(max(self._packets) + 1)
            self._next = None

    def _drop_before(self, seq: int) -> None:
        for s in [s for s in self._packets if s < seq]:
            del self._packets[s]
            self.counters["packets_dropped"] += 1

    def _restart(self) -> None:
        self.counters["restarts"] += 1
        self.counters["packets_dropped"] += len(self._packets)
        self._packets.clear()
        self._next = None
        self._newest_ts = None
        self._blocked_since = None
        self._discontinuity = True


@dataclass
class _Missing:
    since: float
    tries: int = 0
    last: float = 0.0


class NackScheduler:
    """Which lost packets to ask for again now (RFC 4585 generic NACK), with retries."""

    def __init__(self) -> None:
        self.rtt_s = INITIAL_RTT_S
        self._measured = False
        self._highest: int | None = None
        self._highest_ts: int | None = None
        self._missing: dict[int, _Missing] = {}
        self.counters: Counter[str] = Counter()

    @property
    def retry_s(self) -> float:
        return max(NACK_RETRY_MIN_S, 1.1 * self.rtt_s + 0.01)

    def on_packet(self, seq: int, timestamp: int, now: float) -> None:
        """A packet arrived (``seq`` extended, after RTX unwrapping)."""
        if self._highest is None or seq > self._highest + RESET_AHEAD:
            self._highest, self._highest_ts = seq, timestamp
            self._missing.clear()
            return
        if seq > self._highest:
            gap = seq - self._highest - 1
            assert self._highest_ts is not None
            media_gap = ((timestamp - self._highest_ts) % TS_MOD) / VIDEO_CLOCK_RATE
            if gap > NACK_MAX_GAP or media_gap > STALE_GAP_S:
                self.counters["outage_gaps_not_requested"] += 1
            else:
                for s in range(self._highest + 1, seq):
                    self._missing[s] = _Missing(since=now)
            self._highest, self._highest_ts = seq, timestamp
            return
        entry = self._missing.pop(seq, None)
        if entry is not None and entry.tries > 0:
            self.counters["recovered"] += 1
            if entry.tries == 1:  # Karn: only unambiguous samples
                sample = max(0.0, now - entry.last)
                self.rtt_s = sample if not self._measured else 0.875 * self.rtt_s + 0.125 * sample
                self._measured = True

    def forget_before(self, seq: int) -> None:
        """The jitter buffer no longer wants packets before ``seq``."""
        for s in [s for s in self._missing if s < seq]:
            del self._missing[s]

    def due(self, now: float) -> list[int]:
        """Sequence numbers to put in a NACK now (marks them as asked)."""
        out = []
        for seq, m in self._missing.items():
            if m.tries >= NACK_MAX_TRIES:
                continue
            if m.tries == 0 or now - m.last >= self.retry_s:
                if m.tries:
                    self.counters["nack_retries"] += 1
                m.tries += 1
                m.last = now
                out.append(seq)
        if out:
            self.counters["nacked_packets"] += len(out)
        for seq in [s for s, m in self._missing.items() if m.tries >= NACK_MAX_TRIES]:
            if now - self._missing[seq].last >= self.retry_s:
                del self._missing[seq]
                self.counters["nack_gave_up"] += 1
        return sorted(out)


@dataclass(frozen=True)
class FrameDecision:
    show: bool  #: decode and render this frame
    request_keyframe: bool  #: send a PLI now


class KeyframeGate:
    """Freeze on the last good frame until a key frame repairs a missing reference."""

    def __init__(self, interval_s: float = KEYFRAME_REQUEST_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.waiting = True  # a stream starts with a key frame
        self._seen = False
        self._loss_pending = False
        self._last_request: float | None = None
        self.counters: Counter[str] = Counter()

    def _request(self, now: float) -> bool:
        if self._last_request is not None and now - self._last_request < self.interval_s:
            return False
        self._last_request = now
        self.counters["keyframe_requests"] += 1
        return True

    def on_loss(self, now: float) -> bool:
        """The jitter buffer abandoned a hole: ask early (frames before it still decode)."""
        self._loss_pending = True
        return self._request(now)

    def on_frame(self, key: bool, discontinuous: bool, now: float) -> FrameDecision:
        """An authenticated frame in decode order."""
        self._seen = True
        if discontinuous:
            self.waiting = True
        if key:
            if self.waiting and self.counters["frames_withheld"]:
                self.counters["resumed_on_keyframe"] += 1
            self.waiting = False
            self._loss_pending = False
            self.counters["frames_passed"] += 1
            return FrameDecision(True, False)
        if self.waiting:
            self.counters["frames_withheld"] += 1
            return FrameDecision(False, self._request(now))
        self.counters["frames_passed"] += 1
        return FrameDecision(True, False)

    def on_refused(self, now: float) -> bool:
        """A frame failed authentication or decoding: what follows lacks its reference."""
        self._seen = True
        self.waiting = True
        return self._request(now)

    def poll(self, now: float) -> bool:
        """Ask again while frozen (the key frame itself may be lost)."""
        if (self.waiting and self._seen) or self._loss_pending:
            return self._request(now)
        return False


@dataclass(frozen=True)
class PacketOutcome:
    frames: list[AssembledFrame]
    request_keyframe: bool


class VideoReceiveGuard:
    """One video receiver's assembler, NACK scheduler and key-frame gate (not thread-safe)."""

    def __init__(self) -> None:
        self.seq = SeqUnwrapper()
        self.assembler = FrameAssembler()
        self.nack = NackScheduler()
        self.gate = KeyframeGate()

    def on_nack_point(self, seq16: int, timestamp: int, now: float) -> list[int]:
        """Called first for every packet (after RTX unwrapping): sequence numbers to NACK."""
        self.nack.on_packet(self.seq.extend(seq16), timestamp, now)
        return [s % SEQ_MOD for s in self.nack.due(now)]

    def on_packet(self, packet: VideoPacket, now: float) -> PacketOutcome:
        """Then for the same packet, depayloaded: frames for the decoder, PLI or not."""
        a = self.assembler
        abandoned = a.counters["holes_abandoned"] + a.counters["stale_holes_skipped"]
        a.wait_s = hole_wait_s(self.nack.rtt_s)
        a.early_s = early_keyframe_s(self.nack.rtt_s)
        frames = a.add(self.seq.extend(packet.seq), packet, now)
        if a.next_seq is not None:
            self.nack.forget_before(a.next_seq)
        lost = a.counters["holes_abandoned"] + a.counters["stale_holes_skipped"] > abandoned
        lost |= a.want_keyframe
        a.want_keyframe = False
        request = self.gate.on_loss(now) if lost else self.gate.poll(now)
        return PacketOutcome(frames, request)

    def counters(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for part in (self.assembler.counters, self.nack.counters, self.gate.counters):
            out.update(part)
        return dict(out)
