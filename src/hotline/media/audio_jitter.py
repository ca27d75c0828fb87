"""The audio jitter buffer: plays Opus frames out by RTP timestamp (pure, ``now`` passed in).

aiortc 1.16's audio ``JitterBuffer(capacity=16, prefetch=4)`` throws away the ~4 good frames
waiting behind every lost packet and conceals nothing: 2 % packet loss became 10 % missing
audio. This buffer never drops a frame that arrives in time. The event loop hands it each
*decrypted* packet (:meth:`AudioJitterBuffer.push`) and, on a timer, asks which frames are
due (:meth:`AudioJitterBuffer.pull`); each answer is one :class:`Playout` step of one frame
duration, for the decoder thread to turn into samples:

- ``PLAY``: the frame is here, decode it.
- ``FEC``: the frame is missing but the next one is here: decode the next packet's in-band
  FEC data (Opus LBRR) for it.
- ``PLC``: nothing usable: Opus packet-loss concealment (the decoder extrapolates).
- ``SILENCE``: a long outage (more than :data:`PLC_LIMIT` frames in a row): zeros.
- ``MERGE``: the buffer holds more than it needs: two frames are decoded and cross-faded
  into one, which shortens the delay by one frame without a gap. It waits for two quiet
  frames (small VBR packets: a pause in speech) unless the delay is three frames too long.

The playout delay adapts to the measured jitter. Every packet's relative transit
``arrival - timestamp / rate`` is kept for a window; the smallest is the fastest path, and
how much later a packet came than that is its jitter. The target is a high quantile of the
jitter plus a margin, plus one frame while packets are being lost (so that the next packet,
which carries the FEC for a lost one, is usually already here), bounded by ``min_delay`` and
``max_delay``. Spikes above the target are remembered for :data:`PEAK_HOLD_S`; once two
have happened, the target covers the highest (a busy host stalls again). The delay the
next frame actually gets is ``D = play time - fastest arrival``;
it grows only when nothing is there to play (an underrun, waited on for
:data:`UNDERRUN_GRACE_S` first: concealed frames are inserted and the missing frame is
still waited for, up to the target, or once if the delay is at the target already) and shrinks
by skipping missing frames that could only be concealed by PLC, or by a ``MERGE`` (at most
every :data:`MERGE_INTERVAL_S`). A reordered packet that still comes before its play time is
played in order; one that comes later (or a duplicate) is counted and ignored.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

RATE = 48000
#: samples of one 20 ms Opus frame at 48 kHz (the default until a packet says otherwise)
FRAME_SAMPLES = 960
#: quantile of the jitter window the target covers, and what is added to it
JITTER_QUANTILE = 0.97
MARGIN_S = 0.005
#: delay bounds (seconds): a clean link plays within ``min_delay`` of the fastest arrival
MIN_DELAY_S = 0.02
MAX_DELAY_S = 0.25
#: the target before any jitter has been measured
INITIAL_DELAY_S = 0.04
#: packets in the jitter window (about 4 s at 20 ms)
WINDOW = 200
#: a loss in the last this many frames keeps one frame of FEC lookahead in the target
LOSS_MEMORY_FRAMES = 250
#: frames of lookahead the target keeps while packets are being lost: the next packet's FEC;
#: with RED redundancy one more, so that after a burst the first packet's copy of the frame
#: before it (and that copy's FEC) is here in time
FEC_LOOKAHEAD_FRAMES = 1
#: the extra lookahead RED earns: one frame. Offline (real speech, libopus, bursty loss, RED
#: distance 2, 16 copies) a second extra frame (60 ms instead of 40 under loss) scored the
#: same: median 3.80 both, mean paired difference 0.01
MAX_RED_LOOKAHEAD_BLOCKS = 1
#: RED redundancy seen in the last this many packets keeps its lookahead
RED_MEMORY_PACKETS = 500
#: after this many concealed frames in a row, play silence (Opus PLC fades out anyway)
PLC_LIMIT = 10
#: at most one MERGE (a delay cut of one frame with two good frames) this often
MERGE_INTERVAL_S = 0.2
#: a MERGE waits for two quiet frames (Opus VBR: a packet at most this fraction of the 90th
#: percentile of recent sizes: a pause), unless the delay is this many frames too long
QUIET_FRACTION = 0.5
MERGE_ANYWAY_FRAMES = 3
#: ... or once a frame too much has lasted this long without a pause to shed it in (a
#: continuous signal: the delay the start-up left would otherwise stay for the whole call;
#: measured on the clean 60 ± 10 ms link with the tone: 25 ms above the target for good)
MERGE_PERSISTENT_S = 2.0
#: jitter spikes above the target (a run of late packets is one spike) are remembered this
#: long; from the second one on, the target covers the highest (NetEq's peak detector)
PEAK_HOLD_S = 20.0
PEAK_GAP_S = 0.2
#: an underrun waits this long past the play time before concealing: packets that arrived
#: while the event loop was busy may still be on their way through aiortc's tasks
UNDERRUN_GRACE_S = 0.02
#: a timestamp this far (seconds of media) from the play position is a new stream: restart
RESTART_S = 10.0
#: the playout clock is restarted when a pull comes this late (a stalled event loop)
STALL_S = 0.5


class Action(enum.Enum):
    PLAY = "play"
    FEC = "fec"
    PLC = "plc"
    SILENCE = "silence"
    MERGE = "merge"


@dataclass(frozen=True)
class AudioPacket:
    """One received (already decrypted) Opus packet."""

    seq: int
    timestamp: int  #: the RTP timestamp (32 bits, wraps)
    data: bytes  #: the Opus packet
    samples: int = FRAME_SAMPLES  #: its duration in 48 kHz samples (:func:`opus_samples`)


@dataclass(frozen=True)
class Playout:
    """One frame duration of output. ``data`` is the packet to decode (``PLAY``, the first
    of a ``MERGE``), ``next_data`` the next packet (its FEC for ``FEC``; the second frame of a
    ``MERGE``). ``timestamp`` is the media position (extended RTP timestamp)."""

    action: Action
    timestamp: int
    samples: int
    data: bytes | None = None
    next_data: bytes | None = None


def opus_samples(packet: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples from its TOC byte (RFC 6716 3.1).

    Raises ``ValueError`` for an empty or malformed packet."""
    if not packet:
        raise ValueError("empty Opus packet")
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config % 4]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            raise ValueError("Opus code 3 packet without a frame count")
        count = packet[1] & 0x3F
        if count == 0:
            raise ValueError("Opus code 3 packet with no frames")
    samples = frame * count
    if samples > 5760:  # 120 ms is the most a packet may hold
        raise ValueError("Opus packet longer than 120 ms")
    return samples


def _quantile(values: list[float], q: float) -> float:
    data = sorted(values)
    pos = (len(data) - 1) * q
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


class AudioJitterBuffer:
    def __init__(
        self,
        *,
        rate: int = RATE,
        min_delay: float = MIN_DELAY_S,
        max_delay: float = MAX_DELAY_S,
        initial_delay: float = INITIAL_DELAY_S,
        window: int = WINDOW,
    ) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        self.rate = rate
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.initial_delay = min(max(initial_delay, min_delay), max_delay)
        self._window = window
        self._packets: dict[int, AudioPacket] = {}  # extended timestamp -> packet
        self._transits: deque[float] = deque(maxlen=window)
        self._sizes: deque[int] = deque(maxlen=window)
        self._peaks: deque[tuple[float, float]] = deque()  # (last seen, height) per spike
        self._quiet_below: float | None = None
        self._last_ext: int | None = None  # extended timestamp of the newest packet pushed
        self._next_ts: int | None = None  # extended timestamp of the next frame to play
        self._play_at = 0.0  # when the next frame is due
        self._frame = FRAME_SAMPLES
        self._concealed_run = 0
        self._held = False  # the next frame was already waited for once (underrun)
        self._last_merge = -1e9
        self._excess_since: float | None = None  # a frame too much of delay since then
        self._frames_since_loss = LOSS_MEMORY_FRAMES
        self._packets_since_red = RED_MEMORY_PACKETS
        self._red_blocks = 0  # redundant blocks per packet lately (0: none)
        self._target_cache: float | None = None
        self._base_cache: float | None = None
        self.counters: dict[str, int] = {
            "packets": 0,
            "played": 0,
            "fec": 0,
            "plc": 0,
            "silence": 0,
            "merged": 0,
            "stretched": 0,
            "skipped": 0,
            "flushed": 0,
            "late": 0,
            "duplicates": 0,
            "restarts": 0,
            "stalls": 0,
            "redundant": 0,
        }

    # --- input ----------------------------------------------------------------------------

    def _extend(self, timestamp: int) -> int:
        if self._last_ext is None:
            return timestamp
        diff = (timestamp - self._last_ext) & 0xFFFFFFFF
        if diff >= 0x80000000:
            diff -= 0x100000000
        return self._last_ext + diff

    def wants(self, timestamp: int) -> bool:
        """Whether the frame at ``timestamp`` is missing and not yet due (a redundant copy
        of it would be used)."""
        if self._next_ts is None:
            return False
        ext = self._extend(timestamp)
        return ext >= self._next_ts and ext not in self._packets

    def red_seen(self, blocks: int) -> None:
        """A RED packet arrived with ``blocks`` earlier frames in it."""
        self._target_cache = None
        if blocks > 0:
            self._red_blocks = min(blocks, MAX_RED_LOOKAHEAD_BLOCKS)
            self._packets_since_red = 0
        else:
            self._packets_since_red += 1
            if self._packets_since_red >= RED_MEMORY_PACKETS:
                self._red_blocks = 0

    def push(self, packet: AudioPacket, now: float, redundant: bool = False) -> bool:
        """Take one decrypted packet; returns False if it came too late or twice.

        ``redundant``: a frame recovered from a later packet's RED block. It fills a hole
        but says nothing about the link's timing (it is not a packet of its own)."""
        if redundant:
            ext = self._extend(packet.timestamp)
            if self._next_ts is None or ext < self._next_ts or ext in self._packets:
                return False
            self._packets[ext] = packet
            self.counters["redundant"] += 1
            self._frames_since_loss = 0  # a hole was filled: the link is losing packets
            self._target_cache = None
            return True
        self.counters["packets"] += 1
        ext = self._extend(packet.timestamp)
        if self._next_ts is not None and abs(ext - self._next_ts) > RESTART_S * self.rate:
            self._restart()
            ext = packet.timestamp
        if self._last_ext is None or ext > self._last_ext:
            self._last_ext = ext
        transit = now - ext / self.rate
        self._note_peak(transit - min(self._transits, default=transit), now)
        self._transits.append(transit)
        self._sizes.append(len(packet.data))
        self._quiet_below = None
        self._target_cache = None
        self._base_cache = None
        if packet.samples > 0:
            self._frame = packet.samples
        if self._next_ts is None:  # the first packet: start playing after the initial delay
            self._next_ts = ext
            self._play_at = now + self.initial_delay
        if ext < self._next_ts:
            self.counters["late"] += 1
            return False
        if ext in self._packets:
            self.counters["duplicates"] += 1
            return False
        self._packets[ext] = packet
        return True

    def _note_peak(self, jitter: float, now: float) -> None:
        while self._peaks and now - self._peaks[0][0] > PEAK_HOLD_S:
            self._peaks.popleft()
        if len(self._transits) < 10 or jitter <= self._base_jitter() + MARGIN_S:
            return
        if self._peaks and now - self._peaks[-1][0] <= PEAK_GAP_S:
            self._peaks[-1] = (now, max(self._peaks[-1][1], jitter))  # the same spike
        else:
            self._peaks.append((now, jitter))

    def _restart(self) -> None:
        self.counters["restarts"] += 1
        self._packets.clear()
        self._transits.clear()
        self._peaks.clear()
        self._base_cache = None
        self._last_ext = None
        self._next_ts = None
        self._held = False
        self._concealed_run = 0

    # --- delay ----------------------------------------------------------------------------

    def target_delay(self) -> float:
        """The delay the buffer aims for (seconds beyond the fastest arrival)."""
        if self._target_cache is not None:
            return self._target_cache
        if len(self._transits) < 10:
            target = self.initial_delay
        else:
            jitter = self._base_jitter()
            if len(self._peaks) >= 2:  # repeated spikes: cover them
                jitter = max(jitter, *(height for _, height in self._peaks))
            target = jitter + MARGIN_S
        if self._frames_since_loss < LOSS_MEMORY_FRAMES:
            # the next packet (its FEC; with RED, the one after it too) is usually here
            target += self.lookahead_frames() * self._frame / self.rate
        self._target_cache = min(max(target, self.min_delay), self.max_delay)
        return self._target_cache

    def lookahead_frames(self) -> int:
        """Frames the target adds while packets are being lost (see :meth:`red_seen`)."""
        return FEC_LOOKAHEAD_FRAMES + self._red_blocks

    def _base_jitter(self) -> float:
        """The jitter quantile of the window (without the spikes held)."""
        if self._base_cache is None:
            fastest = min(self._transits)
            self._base_cache = _quantile([t - fastest for t in self._transits], JITTER_QUANTILE)
        return self._base_cache

    def delay(self) -> float | None:
        """The delay the next frame gets: its play time minus its fastest arrival."""
        if self._next_ts is None or not self._transits:
            return None
        return self._play_at - (self._next_ts / self.rate + min(self._transits))

    def _quiet(self, packet: AudioPacket) -> bool:
        """A pause (a small VBR packet): where shedding delay is not heard."""
        if self._quiet_below is None:
            if len(self._sizes) < 10:
                return False
            self._quiet_below = QUIET_FRACTION * _quantile(list(self._sizes), 0.9)
        return len(packet.data) <= self._quiet_below

    def buffered(self) -> int:
        return len(self._packets)

    def next_due(self) -> float | None:
        """When :meth:`pull` has something to say next (None: nothing received yet)."""
        return None if self._next_ts is None else self._play_at

    # --- output ---------------------------------------------------------------------------

    def pull(self, now: float) -> list[Playout]:
        """Every frame whose play time has come, in order (usually zero or one)."""
        out: list[Playout] = []
        if self._next_ts is None:
            return out
        if now - self._play_at > STALL_S:
            self.counters["stalls"] += 1
            self._play_at = now
        while self._play_at <= now + 1e-9:
            if now - self._play_at < UNDERRUN_GRACE_S and self._nothing_to_play():
                break  # wait a moment: it may be in the event loop's queue
            out.append(self._step())
            self._play_at += out[-1].samples / self.rate
        return out

    def _nothing_to_play(self) -> bool:
        assert self._next_ts is not None
        x = self._next_ts
        return x not in self._packets and not any(t > x for t in self._packets)

    def _step(self) -> Playout:
        assert self._next_ts is not None
        target = self.target_delay()
        frame = self._frame
        while True:
            x = self._next_ts
            packet = self._packets.get(x)
            excess = (self.delay() or 0.0) - target
            if packet is not None:
                break
            later = [t for t in self._packets if t > x]
            if not later:
                return self._underrun(excess, frame)
            following = self._packets.get(x + frame)
            if excess < -frame / self.rate / 2:
                # well below the target (it just rose: a spike): the frame may be late, not
                # lost, so wait for it as for an underrun
                self.counters["stretched"] += 1
                return self._conceal(x, frame)
            limit = (1 if following is None else 2) * frame / self.rate
            if excess >= limit:
                # more delay than needed, and this frame could only be concealed (or the
                # delay is two frames too long): leave it out instead
                self._next_ts = x + frame
                self._held = False
                self.counters["skipped"] += 1
                continue
            self._next_ts = x + frame
            self._held = False
            self._frames_since_loss = 0
            self._target_cache = None
            if following is not None:
                self._concealed_run = 0
                self.counters["fec"] += 1
                return Playout(Action.FEC, x, frame, next_data=following.data)
            return self._conceal(x, frame)
        # the frame is here
        self._held = False
        self._concealed_run = 0
        self._frames_since_loss += 1
        if excess > self.max_delay - target + packet.samples / self.rate:
            # far beyond the bound (a backlog): drop the oldest frame rather than grow
            del self._packets[x]
            self._next_ts = x + packet.samples
            self.counters["flushed"] += 1
            return self._step()
        del self._packets[x]
        self._next_ts = x + packet.samples
        second = self._packets.get(self._next_ts)
        frame_s = packet.samples / self.rate
        if excess < frame_s:
            self._excess_since = None
        elif self._excess_since is None:
            self._excess_since = self._play_at
        persistent = (
            self._excess_since is not None
            and self._play_at - self._excess_since >= MERGE_PERSISTENT_S
        )
        if (
            second is not None
            and excess >= frame_s
            and self._play_at - self._last_merge >= MERGE_INTERVAL_S
            and (
                (self._quiet(packet) and self._quiet(second))
                or excess >= MERGE_ANYWAY_FRAMES * frame_s
                or persistent
            )
        ):
            del self._packets[self._next_ts]
            self._next_ts += second.samples
            self._last_merge = self._play_at
            self._excess_since = None
            self.counters["merged"] += 1
            return Playout(Action.MERGE, x, packet.samples, packet.data, second.data)
        self.counters["played"] += 1
        return Playout(Action.PLAY, x, packet.samples, packet.data)

    def _underrun(self, excess: float, frame: int) -> Playout:
        """Nothing at or after the next frame: conceal one frame, and maybe wait for it."""
        assert self._next_ts is not None
        x = self._next_ts
        # (not counted as a loss for the FEC lookahead: only a frame missing while later
        # ones are here is known lost; an underrun may be lateness, e.g. at the start)
        if excess < 0 or (not self._held and excess < frame / self.rate):
            # still worth waiting for: conceal one frame without moving on (the delay grows
            # by a frame, up to the target, or once one frame beyond it: the frame, or the
            # next packet with its FEC, may yet come)
            self._held = True
            self.counters["stretched"] += 1
            return self._conceal(x, frame)
        self._held = False
        self._next_ts = x + frame
        return self._conceal(x, frame)

    def _conceal(self, x: int, frame: int) -> Playout:
        self._concealed_run += 1
        if self._concealed_run > PLC_LIMIT:
            self.counters["silence"] += 1
            return Playout(Action.SILENCE, x, frame)
        self.counters["plc"] += 1
        return Playout(Action.PLC, x, frame)
