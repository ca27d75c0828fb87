"""Media sources: synthetic (the default), a file, and real camera/microphone devices.

The synthetic sources make a call measurable on a machine without devices:

- :class:`SyntheticVideoTrack` draws :class:`~hotline.media.pattern.TestPattern` (moving bands,
  the terminal's name, a clock and a :mod:`~hotline.media.frame_id` frame id carrying the
  send time), paced at ``fps``;
- :class:`SyntheticAudioTrack` plays a quiet 440 Hz tone or a speech-like signal, with a
  loud 30 ms chirp (600→3000 Hz) at the start of every second, which a receiver finds
  (:class:`~hotline.media.sinks.AudioChirpSink`).

:func:`open_source` turns a ``--source`` style spec into a :class:`MediaSource`.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import av
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from hotline.errors import MediaDeviceError, UsageError
from hotline.media.fanout import FanoutTrack, TrackFanout
from hotline.media.frame_id import COUNTER_MOD, FrameId, monotonic_ms
from hotline.media.pattern import TestPattern

DEFAULT_WIDTH = 640
DEFAULT_HEIGHT = 360
DEFAULT_FPS = 30

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

AUDIO_RATE = 48000
AUDIO_PTIME = 0.020
AUDIO_SAMPLES = int(AUDIO_RATE * AUDIO_PTIME)  # 960 per 20 ms frame
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)

CHIRP_MS = 30
CHIRP_F0 = 600.0
CHIRP_F1 = 3000.0
CHIRP_AMPLITUDE = 0.8  #: of full scale; the background stays below 0.25
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.1
SIGNALS = ("tone", "speech", "silence")

#: re-anchor the pacing clock when a source falls this many frame intervals behind
LATE_FRAMES_RESET = 2


class _Pacer:
    """Paces frames at a fixed rate on the monotonic clock, without bursts after a stall."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._start: float | None = None
        self._slot = 0
        self.late_resets = 0

    async def wait(self) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return
        self._slot += 1
        due = self._start + self._slot * self.interval
        if now - due > LATE_FRAMES_RESET * self.interval:
            self.late_resets += 1
            self._start, self._slot = now, 0
            return
        if due > now:
            await asyncio.sleep(due - now)


def _fill_plane(plane: av.video.plane.VideoPlane, data: bytes, width: int, height: int) -> None:
    if plane.line_size == width:
        plane.update(data)
        return
    pad = bytes(plane.line_size - width)
    plane.update(b"".join(data[r * width : (r + 1) * width] + pad for r in range(height)))


class SyntheticVideoTrack(MediaStreamTrack):
    """A moving test pattern with the terminal's name, a clock and a frame id."""

    kind = "video"

    def __init__(
        self,
        name: str = "hotline",
        width: int = DEFAULT_WIDTH,
        height: int = DEFAULT_HEIGHT,
        fps: float = DEFAULT_FPS,
    ) -> None:
        super().__init__()
        if not 1 <= fps <= 60:
            raise UsageError(f"frame rate must be between 1 and 60, not {fps}")
        self.width = width
        self.height = height
        self.fps = fps
        self.pattern = TestPattern(width, height, name)
        self._pacer = _Pacer(1.0 / fps)
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        index = self.frames_sent
        frame_id = FrameId(index % COUNTER_MOD, monotonic_ms())
        now = time.time()
        clock = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 10) % 10}"
        y, u, v = self.pattern.render(index, frame_id, clock)
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        _fill_plane(frame.planes[0], y, self.width, self.height)
        _fill_plane(frame.planes[1], u, self.width // 2, self.height // 2)
        _fill_plane(frame.planes[2], v, self.width // 2, self.height // 2)
        frame.pts = round(index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame


def chirp_samples(rate: int = AUDIO_RATE) -> list[float]:
    """The 30 ms linear chirp (600→3000 Hz), in [-1, 1], with 1 ms raised-cosine edges."""
    n = rate * CHIRP_MS // 1000
    edge = rate // 1000
    out = []
    duration = n / rate
    k = (CHIRP_F1 - CHIRP_F0) / duration
    for i in range(n):
        t = i / rate
        gain = 1.0
        if i < edge:
            gain = 0.5 - 0.5 * math.cos(math.pi * i / edge)
        elif i >= n - edge:
            gain = 0.5 - 0.5 * math.cos(math.pi * (n - 1 - i) / edge)
        out.append(gain * math.sin(2 * math.pi * (CHIRP_F0 * t + 0.5 * k * t * t)))
    return out


def _background(signal: str, rate: int) -> list[float]:
    if signal == "silence":
        return [0.0] * rate
    if signal == "tone":
        return [TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * i / rate) for i in range(rate)]
    # speech-like: a 125 Hz glottal series through two formants, 4 syllables a second
    harmonics = [
        (h, 1.0 / h * (1.6 if 4 <= h <= 6 else 1.0) * (1.3 if 10 <= h <= 13 else 1.0))
        for h in range(1, 25)
    ]
    norm = sum(a for _, a in harmonics)
    out = []
    for i in range(rate):
        t = i / rate
        syllable = max(0.0, math.sin(2 * math.pi * 4 * t)) ** 2
        value = sum(a * math.sin(2 * math.pi * 125 * h * t) for h, a in harmonics) / norm
        out.append(0.2 * syllable * value)
    return out


def synthetic_second(signal: str = "tone", chirp: bool = True, rate: int = AUDIO_RATE) -> bytes:
    """One second of signed 16-bit mono audio; the chirp (if any) starts at sample 0."""
    if signal not in SIGNALS:
        raise UsageError(f"unknown audio signal {signal!r} (choose from {', '.join(SIGNALS)})")
    samples = _background(signal, rate)
    if chirp:
        for i, c in enumerate(chirp_samples(rate)):
            samples[i] += CHIRP_AMPLITUDE * c
    pcm = array("h", (max(-32767, min(32767, round(s * 32767))) for s in samples))
    return pcm.tobytes()


class SyntheticAudioTrack(MediaStreamTrack):
    """A quiet tone or speech-like signal with a loud 30 ms chirp once a second (48 kHz)."""

    kind = "audio"

    def __init__(self, signal: str = "tone", chirp: bool = True) -> None:
        super().__init__()
        self.signal = signal
        self._second = synthetic_second(signal, chirp)
        self._pacer = _Pacer(AUDIO_PTIME)
        self.frames_sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        offset = (self.frames_sent * AUDIO_SAMPLES) % AUDIO_RATE
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(self._second[2 * offset : 2 * (offset + AUDIO_SAMPLES)])
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.frames_sent * AUDIO_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        self.frames_sent += 1
        return frame


class ClipAudioTrack(MediaStreamTrack):
    """Loops a 48 kHz mono clip (a whole number of 20 ms frames) in real time, noting on the
    monotonic clock when each frame holding one of ``marks`` (sample offsets of chirps in
    the clip) is sent: a readiness check's reference speech."""

    kind = "audio"

    def __init__(self, clip: array[int], marks: list[int], sent_ms: list[int]) -> None:
        super().__init__()
        if not clip or len(clip) % AUDIO_SAMPLES:
            raise UsageError("a looped clip must be a whole number of 20 ms frames")
        self._clip = clip.tobytes()
        self._frames = len(clip) // AUDIO_SAMPLES
        self._marked = {m // AUDIO_SAMPLES for m in marks}
        self._sent_ms = sent_ms
        self._pacer = _Pacer(AUDIO_PTIME)
        self.frames_sent = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        index = self.frames_sent % self._frames
        if index in self._marked:
            self._sent_ms.append(monotonic_ms())
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(
            self._clip[2 * index * AUDIO_SAMPLES : 2 * (index + 1) * AUDIO_SAMPLES]
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.frames_sent * AUDIO_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        self.frames_sent += 1
        return frame


# --- files and devices ------------------------------------------------------------------


@dataclass
class MediaSource:
    """The tracks a terminal sends, opened once and shared by every call of the terminal.

    Peer connections never take ``audio``/``video`` directly: each takes its own
    :meth:`subscribe` views and stops them when it closes (see :mod:`hotline.media.fanout`).
    """

    audio: MediaStreamTrack | None
    video: MediaStreamTrack | None
    description: str
    _players: list[object] = field(default_factory=list)
    _fanouts: dict[str, TrackFanout] = field(default_factory=dict)

    def subscribe(self) -> list[FanoutTrack]:
        """One view of each track for one peer connection; stop them when it closes."""
        views = []
        for track in (self.video, self.audio):
            if track is None:
                continue
            fanout = self._fanouts.get(track.kind)
            if fanout is None:
                fanout = self._fanouts[track.kind] = TrackFanout(track)
            views.append(fanout.subscribe())
        return views

    def fanout(self, kind: str) -> TrackFanout | None:
        return self._fanouts.get(kind)

    def stop(self) -> None:
        for fanout in self._fanouts.values():
            for view in list(fanout._subscribers):
                view.stop()
        for track in (self.audio, self.video):
            if track is not None:
                track.stop()


def _player(file: str, fmt: str | None, options: dict[str, str] | None, loop: bool) -> object:
    try:
        return MediaPlayer(file, format=fmt, options=options, loop=loop)
    except (av.FFmpegError, OSError) as exc:
        raise MediaDeviceError(f"cannot open {file}: {exc}") from None


def open_file(path: Path, loop: bool = True) -> MediaSource:
    """Play a media file (any container/codec PyAV reads), looping by default."""
    if not path.is_file():
        raise MediaDeviceError(f"media file not found: {path}")
    player = _player(str(path), None, None, loop)
    audio = getattr(player, "audio", None)
    video = getattr(player, "video", None)
    if audio is None and video is None:
        raise MediaDeviceError(f"{path} has neither audio nor video")
    return MediaSource(audio, video, f"file {path}", [player])


def _camera_format() -> str:
    for name in ("v4l2", "video4linux2"):
        if name in av.formats_available:
            return name
    raise MediaDeviceError("this PyAV build has no video4linux2 input: no camera support")


def open_camera(
    device: str = "/dev/video0",
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    fps: int = DEFAULT_FPS,
) -> MediaStreamTrack:
    """A V4L2 camera through PyAV. Raises :class:`MediaDeviceError` when absent."""
    if not os.path.exists(device):
        raise MediaDeviceError(f"no camera at {device} (use the synthetic source)")
    options = {"video_size": f"{width}x{height}", "framerate": str(fps)}
    track = getattr(_player(device, _camera_format(), options, False), "video", None)
    if track is None:
        raise MediaDeviceError(f"{device} gives no video")
    return track  # type: ignore[no-any-return]


def open_microphone(device: str = "default", backend: str = "pulse") -> MediaStreamTrack:
    """A microphone through PyAV's ``pulse`` or ``alsa`` input. Raises when absent."""
    if backend not in ("pulse", "alsa"):
        raise UsageError(f"microphone backend must be pulse or alsa, not {backend!r}")
    if backend not in av.formats_available:
        raise MediaDeviceError(f"this PyAV build has no {backend} input: no microphone support")
    if backend == "alsa" and not os.path.exists("/dev/snd"):
        raise MediaDeviceError("no sound devices (/dev/snd missing): use the synthetic source")
    track = getattr(_player(device, backend, None, False), "audio", None)
    if track is None:
        raise MediaDeviceError(f"{backend}:{device} gives no audio")
    return track  # type: ignore[no-any-return]


def detect_devices() -> dict[str, list[str]]:
    """What real media inputs this machine and PyAV build offer (for ``--source device``)."""
    cameras: list[str] = []
    if any(name in av.formats_available for name in ("v4l2", "video4linux2")):
        cameras = sorted(str(p) for p in Path("/dev").glob("video*"))
    backends: list[str] = [b for b in ("pulse", "alsa") if b in av.formats_available]
    if "alsa" in backends and not os.path.exists("/dev/snd"):
        backends.remove("alsa")
    return {"cameras": cameras, "microphone_backends": backends}


SOURCE_HELP = (
    "synthetic[:tone|speech|silence] (default), file:PATH, "
    "device[:CAMERA[,MIC]] (e.g. device:/dev/video0,default)"
)


def open_source(
    spec: str = "synthetic",
    *,
    name: str = "hotline",
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    fps: int = DEFAULT_FPS,
) -> MediaSource:
    """Build the tracks described by ``spec`` (see :data:`SOURCE_HELP`)."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        signal = arg or "tone"
        return MediaSource(
            SyntheticAudioTrack(signal),
            SyntheticVideoTrack(name, width, height, fps),
            f"synthetic {width}x{height}@{fps} + {signal}",
        )
    if kind == "file":
        if not arg:
            raise UsageError("file source needs a path: file:PATH")
        return open_file(Path(arg))
    if kind == "device":
        camera, _, mic = (arg or "/dev/video0").partition(",")
        video = open_camera(camera or "/dev/video0", width, height, fps)
        try:
            audio = open_microphone(mic or "default")
        except MediaDeviceError:
            video.stop()
            raise
        return MediaSource(audio, video, f"camera {camera} + microphone {mic or 'default'}")
    raise UsageError(f"unknown media source {spec!r}: {SOURCE_HELP}")
