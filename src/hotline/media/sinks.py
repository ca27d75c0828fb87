"""Media sinks: consume a remote track and measure what arrived.

- :class:`VideoFrameIdSink` reads the frame id of every decoded video frame
  (:mod:`~hotline.media.frame_id`) and counts what a person would see: frames shown, *corrupt*
  frames shown, the longest freeze between fresh frames, and the one-way latency
  ``now - send time`` (valid when both ends share ``CLOCK_MONOTONIC``, i.e. run on one host;
  detected from the first id).

  A shown frame is **corrupt** when its id is unreadable (CRC-8 fails) or implausible: the
  id goes backwards or repeats, advances by more frames than the sender could have made in
  the time since the last fresh frame (at most :data:`MAX_FPS`, plus slack), or (shared
  clock) was sent in the future or more than 30 s ago. VP8 artefacts from a missing
  reference garble the id blocks, which change every frame; CRC-8 alone lets ~1/256 of
  garbled ids through, and the bounds catch nearly all of those. Every other shown frame
  is **fresh**. The count is a lower bound: a frame corrupt only outside its id is missed.
- :class:`AudioChirpSink` counts decoded audio frames and finds the once-a-second chirp of
  :class:`~hotline.media.sources.SyntheticAudioTrack`; the spacing of the chirps reveals lost
  or concealed audio.

Each sink has a pure ``on_frame(frame, now_ms)`` and a small asyncio driver (:meth:`start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import wave
from array import array
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from hotline.media.frame_id import COUNTER_MOD, FrameId, FrameIdLayout, latency_ms, monotonic_ms
from hotline.media.stats import LatencyRecorder

logger = logging.getLogger("hotline.media")

#: a gap between two displayed video frames longer than this is a freeze
FREEZE_MS = 250
#: no sender makes more frames per second than this (bounds a plausible id jump)
MAX_FPS = 120
#: receive-time slack for a plausible id jump (frames delayed, then released together)
ID_JUMP_SLACK_MS = 1000
#: fresh frames kept for :attr:`VideoFrameIdSink.fresh_log`
FRESH_LOG = 100_000
#: latencies above this mean the two ends do not share a clock: not recorded
MAX_PLAUSIBLE_LATENCY_MS = 30_000
#: a chirp is where the first channel exceeds half of full scale
CHIRP_THRESHOLD = 16384
#: after a chirp, ignore the next 0.5 s (its own tail)
CHIRP_REFRACTORY_S = 0.5


class CountingTrack(MediaStreamTrack):
    """Passes a remote track's frames through, counting them (liveness per transport)."""

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self._inner = inner
        self.frames = 0

    async def recv(self) -> Any:
        frame = await self._inner.recv()
        self.frames += 1
        return frame


class _TrackConsumer:
    """Runs ``on_frame`` for every frame of its tracks until they end or :meth:`stop`.

    A sink may consume several tracks one after another, or at once: a call's transport to
    a peer can be rebuilt, and a call moving between mesh and SFU receives a member on both
    paths for a moment (make before break). What the person sees of that peer (frames,
    gaps, freezes, latency) goes on in the same sink across both. One track at a time is
    *shown*: the first to deliver; another takes over once the shown one has ended (its
    transport closed) or delivered nothing for :attr:`handover_ms`. Frames of the others
    are read and dropped (:attr:`standby_frames`), so their decoders stay current and a
    takeover shows a picture at once.
    """

    #: the shown track gives way to another that delivers after this long without a frame
    handover_ms = 500

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.ended = False
        self._shown: asyncio.Task[None] | None = None
        self._shown_ms: int | None = None
        #: frames read from a track that was not the one shown (dropped)
        self.standby_frames = 0
        #: times another track took over from the shown one
        self.handovers = 0

    def on_handover(self) -> None:
        """Another track is shown from the next frame on (after the first)."""

    def on_frame(self, frame: Any, now_ms: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self, track: MediaStreamTrack) -> asyncio.Task[None]:
        """Consume ``track`` (cancel the returned task to stop consuming this one only)."""
        self.ended = False
        task = asyncio.ensure_future(self._run(track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, track: MediaStreamTrack) -> None:
        me = asyncio.current_task()
        try:
            while True:
                frame = await track.recv()
                now = self._clock()
                if self._shown is not me:
                    shown, last = self._shown, self._shown_ms
                    if (
                        shown is not None
                        and not shown.done()
                        and last is not None
                        and (now - last) % (1 << 32) <= self.handover_ms
                    ):
                        self.standby_frames += 1
                        continue
                    if shown is not None or last is not None:
                        self.handovers += 1
                        self.on_handover()
                    self._shown = me
                self._shown_ms = now
                self.on_frame(frame, now)
        except MediaStreamError:
            pass
        finally:
            if self._shown is me:
                self._shown = None  # the next frame of another track is shown at once
            self.ended = not self._tasks - {me}

    async def stop(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class VideoFrameIdSink(_TrackConsumer):
    """Decodes frame ids from displayed frames: counts, gaps, freezes, one-way latency."""

    def __init__(self, clock: Callable[[], int] = monotonic_ms, freeze_ms: int = FREEZE_MS):
        super().__init__(clock)
        self.freeze_ms = freeze_ms
        self.frames = 0
        self.readable = 0
        self.unreadable = 0
        self.missing = 0
        self.out_of_order = 0
        self.freezes = 0
        self.freeze_total_ms = 0
        self.max_gap_ms = 0
        self.latency = LatencyRecorder()
        self.implausible_latency = 0
        self.first_counter: int | None = None
        self.last_counter: int | None = None
        self.first_frame_ms: int | None = None
        self.corrupt = 0
        self.fresh = 0
        self.longest_freeze_ms = 0
        self.clock_shared: bool | None = None
        #: (receive ms, send ms) of recent fresh frames, oldest first
        self.fresh_log: deque[tuple[int, int]] = deque(maxlen=FRESH_LOG)
        self._last_fresh: tuple[int, FrameId] | None = None  # (receive ms, id)
        self._last_frame_ms: int | None = None
        self._layout: tuple[int, int, FrameIdLayout] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: frames of a track that took over, already shown from the one before (dropped)
        self.handover_repeats = 0
        self._after_handover = False

    def _layout_for(self, width: int, height: int) -> FrameIdLayout:
        if self._layout is None or self._layout[:2] != (width, height):
            self._layout = (width, height, FrameIdLayout.for_size(width, height))
        return self._layout[2]

    def on_handover(self) -> None:
        self._after_handover = True

    def on_frame(self, frame: av.VideoFrame, now_ms: int) -> None:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        plane = frame.planes[0]
        try:
            frame_id = self._layout_for(frame.width, frame.height).read(
                bytes(plane), plane.line_size
            )
        except ValueError:  # a frame too small to hold an id
            frame_id = None
        if self._after_handover and frame_id is not None and self._last_fresh is not None:
            # the track shown now may lag the one before: the same pictures, already shown
            step = (frame_id.counter - self._last_fresh[1].counter) % COUNTER_MOD
            if step == 0 or step > COUNTER_MOD // 2:
                self.handover_repeats += 1
                return
            self._after_handover = False
        self.frames += 1
        if self.first_frame_ms is None:
            self.first_frame_ms = now_ms
        if self._last_frame_ms is not None:
            gap = (now_ms - self._last_frame_ms) % (1 << 32)
            self.max_gap_ms = max(self.max_gap_ms, gap)
            if gap > self.freeze_ms:
                self.freezes += 1
                self.freeze_total_ms += gap
        self._last_frame_ms = now_ms
        if frame_id is None:
            self.unreadable += 1
            self.corrupt += 1
        else:
            self.readable += 1
            self._track_counter(frame_id.counter)
            latency = latency_ms(frame_id.send_ms, now_ms)
            if self.clock_shared is None:
                self.clock_shared = latency <= MAX_PLAUSIBLE_LATENCY_MS
            if latency > MAX_PLAUSIBLE_LATENCY_MS:
                self.implausible_latency += 1
            if self._plausible(frame_id, latency, now_ms):
                self._fresh(frame_id, latency, now_ms)
            else:
                self.corrupt += 1
        self._wake()

    def _plausible(self, frame_id: FrameId, latency: int, now_ms: int) -> bool:
        if self.clock_shared and latency > MAX_PLAUSIBLE_LATENCY_MS:
            return False
        if self._last_fresh is None:
            return True
        last_ms, last = self._last_fresh
        step = (frame_id.counter - last.counter) % COUNTER_MOD
        elapsed = (now_ms - last_ms) % (1 << 32)
        return 0 < step <= (elapsed + ID_JUMP_SLACK_MS) * MAX_FPS // 1000 + 2

    def _fresh(self, frame_id: FrameId, latency: int, now_ms: int) -> None:
        self.fresh += 1
        if self._last_fresh is not None:
            gap = (now_ms - self._last_fresh[0]) % (1 << 32)
            self.longest_freeze_ms = max(self.longest_freeze_ms, gap)
        self._last_fresh = (now_ms, frame_id)
        self.fresh_log.append((now_ms, frame_id.send_ms))
        if self.clock_shared:
            self.latency.add(latency)

    def _track_counter(self, counter: int) -> None:
        if self.first_counter is None:
            self.first_counter = counter
        last = self.last_counter
        if last is not None:
            if counter > last + 1:
                self.missing += counter - last - 1
            elif counter <= last:
                self.out_of_order += 1
                return
        self.last_counter = counter

    def _wake(self) -> None:
        for entry in list(self._waiters):
            count, fut = entry
            if self.readable >= count and not fut.done():
                fut.set_result(None)
                self._waiters.remove(entry)

    async def wait_for(self, readable: int, timeout: float) -> bool:
        """Wait until ``readable`` frame ids were read; ``False`` on timeout."""
        if self.readable >= readable:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((readable, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "ids_read": self.readable,
            "ids_unreadable": self.unreadable,
            "first_id": self.first_counter,
            "last_id": self.last_counter,
            "missing": self.missing,
            "out_of_order": self.out_of_order,
            "freezes": self.freezes,
            "freeze_total_ms": self.freeze_total_ms,
            "max_gap_ms": self.max_gap_ms,
            "latency": self.latency.to_dict(),
            "implausible_latency": self.implausible_latency,
            "shown": self.frames,
            "fresh": self.fresh,
            "corrupt_shown": self.corrupt,
            "longest_freeze_ms": self.longest_freeze_ms,
            "latency_p50_ms": self.latency.to_dict()["p50_ms"],
            "latency_p95_ms": self.latency.to_dict()["p95_ms"],
            "handovers": self.handovers,
            "standby_frames": self.standby_frames,
            "handover_repeats": self.handover_repeats,
        }

    def fresh_since(self, send_ms: int) -> list[tuple[int, int]]:
        """Fresh frames sent at or after ``send_ms`` (same clock): (receive ms, send ms)."""
        return [e for e in self.fresh_log if (e[1] - send_ms) % (1 << 32) < 1 << 31]


class PcmCapture:
    """Keeps the audio a sink played out: the first channel, 16-bit, in order of play.

    With ``path``, also writes it to a mono 16-bit WAV as it comes (``close`` finishes the
    file). With ``by_pts``, frames are placed at their timestamps: a gap between two frames
    (audio the receive path never produced) is written as silence, as a timestamp-driven
    player would play it. Only for synthetic or check media, or when the charter allows
    recording.
    """

    #: the longest gap ``by_pts`` fills with silence (longer: a new stream, not filled)
    MAX_GAP = 48000 * 10

    #: the most a capture holds or writes by default: two hours (a sender's timestamps
    #: jumping ahead would otherwise have it fill memory or the disk with silence)
    DEFAULT_LIMIT = 48000 * 7200

    def __init__(
        self,
        path: str | None = None,
        rate: int = 48000,
        keep: bool = True,
        by_pts: bool = False,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.rate = rate
        self.pcm = array("h")
        self.by_pts = by_pts
        self.gap_samples = 0
        #: at most this many samples are kept and written; what comes after is counted
        self.limit = limit
        self.samples = 0
        self.dropped = 0
        self._next_pts: int | None = None
        self._keep = keep
        self._wav: wave.Wave_write | None = None
        if path is not None:
            self._wav = wave.open(path, "wb")  # noqa: SIM115 - closed by close()
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(rate)

    def write(self, mono: array[int], pts: int | None = None) -> None:
        if self.by_pts and pts is not None:
            if self._next_pts is not None:
                gap = pts - self._next_pts
                if 0 < gap <= self.MAX_GAP:
                    self.gap_samples += gap
                    self._append(array("h", bytes(2 * gap)))
                elif -len(mono) < gap < 0:
                    mono = mono[-gap:]  # overlaps what was already written
                elif gap <= -len(mono):
                    return
            self._next_pts = (
                pts + len(mono) if self._next_pts is None else max(self._next_pts, pts + len(mono))
            )
        self._append(mono)

    def _append(self, mono: array[int]) -> None:
        room = self.limit - self.samples
        if len(mono) > room:
            self.dropped += len(mono) - max(room, 0)
            if room <= 0:
                return
            mono = mono[:room]
        self.samples += len(mono)
        if self._keep:
            self.pcm.extend(mono)
        if self._wav is not None:
            self._wav.writeframes(mono.tobytes())

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None


class CaptureFiles:
    """Where a terminal's ``--capture-audio FILE`` goes: the first remote audio track it
    plays out to ``FILE``, the next ones to ``STEM-2.wav``, ``STEM-3.wav``, ..."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._count = 0
        self._lock = threading.Lock()

    def next_path(self) -> Path:
        with self._lock:
            self._count += 1
            n = self._count
        if n == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{n}{self.path.suffix or '.wav'}")


class AudioChirpSink(_TrackConsumer):
    """Counts decoded audio frames and finds the once-a-second chirps in them."""

    handover_ms = 200  #: ten frames of 20 ms

    def __init__(
        self, clock: Callable[[], int] = monotonic_ms, capture: PcmCapture | None = None
    ) -> None:
        super().__init__(clock)
        self.capture = capture
        #: a second capture of what is played out, while something measures it (a check's
        #: looped-back speech), beside the WAV ``capture``
        self.measure: PcmCapture | None = None
        self.frames = 0
        self.samples = 0
        self.sample_rate: int | None = None
        self.chirps: list[int] = []  #: sample position of each chirp onset
        self.chirp_times_ms: list[int] = []
        self.first_frame_ms: int | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._resampler: av.AudioResampler | None = None

    def on_frame(self, frame: av.AudioFrame, now_ms: int) -> None:
        self.frames += 1
        if self.first_frame_ms is None:
            self.first_frame_ms = now_ms
        self.sample_rate = frame.sample_rate
        channels = len(frame.layout.channels)
        step = 1 if frame.format.is_planar else channels
        if frame.format.name not in ("s16", "s16p"):
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="s16p", layout=frame.layout)
            converted = self._resampler.resample(frame)
            if not converted:
                return
            frame, step = converted[0], 1
        pcm = array("h", bytes(frame.planes[0])[: 2 * frame.samples * step])
        first = pcm[::step] if step > 1 else pcm
        if self.capture is not None:
            self.capture.write(first, frame.pts)
        if self.measure is not None:
            self.measure.write(first, frame.pts)
        start = self.samples
        self.samples += len(first)
        if max(first, default=0) < CHIRP_THRESHOLD and -min(first, default=0) < CHIRP_THRESHOLD:
            return
        refractory = int(CHIRP_REFRACTORY_S * (frame.sample_rate or 48000))
        for i, value in enumerate(first):
            if abs(value) >= CHIRP_THRESHOLD:
                position = start + i
                if self.chirps and position - self.chirps[-1] < refractory:
                    return
                self.chirps.append(position)
                self.chirp_times_ms.append(now_ms)
                self._wake()
                return

    def _wake(self) -> None:
        for entry in list(self._waiters):
            count, fut = entry
            if len(self.chirps) >= count and not fut.done():
                fut.set_result(None)
                self._waiters.remove(entry)

    async def wait_for(self, chirps: int, timeout: float) -> bool:
        """Wait until ``chirps`` chirps were found; ``False`` on timeout."""
        if len(self.chirps) >= chirps:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((chirps, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        await super().stop()
        if self.capture is not None:
            self.capture.close()

    def interval_errors_ms(self) -> list[float]:
        """How far each chirp-to-chirp spacing is from one second, in ms (audio lost/added)."""
        rate = self.sample_rate or 48000
        return [
            ((b - a) - rate) * 1000 / rate
            for a, b in zip(self.chirps, self.chirps[1:], strict=False)
        ]

    def to_dict(self) -> dict[str, Any]:
        errors = self.interval_errors_ms()
        return {
            "frames": self.frames,
            "seconds": round(self.samples / (self.sample_rate or 48000), 2),
            "chirps": len(self.chirps),
            "chirp_spacing_ok": sum(1 for e in errors if abs(e) <= 1.0),
            "max_chirp_spacing_error_ms": round(max((abs(e) for e in errors), default=0.0), 2),
            "handovers": self.handovers,
            "standby_frames": self.standby_frames,
        }
