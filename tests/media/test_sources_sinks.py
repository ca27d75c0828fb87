"""Sources and sinks without a network: synthetic tracks, Opus round trip, files, devices."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from hotline.errors import MediaDeviceError, UsageError
from hotline.media import sources
from hotline.media.frame_id import FrameId, monotonic_ms
from hotline.media.sinks import AudioChirpSink, VideoFrameIdSink
from hotline.media.sources import (
    AUDIO_RATE,
    AUDIO_SAMPLES,
    SyntheticAudioTrack,
    SyntheticVideoTrack,
    open_source,
    synthetic_second,
)


async def test_video_track_is_paced_and_carries_ids_and_send_times() -> None:
    track = SyntheticVideoTrack("sochi", 320, 180, 20)
    sink = VideoFrameIdSink()
    start = time.monotonic()
    for _ in range(6):
        frame = await track.recv()
        assert (frame.width, frame.height, frame.format.name) == (320, 180, "yuv420p")
        sink.on_frame(frame, monotonic_ms())
    elapsed = time.monotonic() - start
    assert elapsed >= 0.2  # 5 intervals of 50 ms: paced, not as fast as possible
    assert frame.time_base == Fraction(1, 90000) and frame.pts == 5 * 4500
    assert (sink.readable, sink.first_counter, sink.last_counter, sink.missing) == (6, 0, 5, 0)
    assert sink.latency.p(95) is not None and sink.latency.p(95) < 100
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_video_sink_counts_gaps_reordering_and_freezes() -> None:
    track_frames = []
    pattern = SyntheticVideoTrack("x", 320, 180, 30).pattern
    for n in (0, 1, 2, 5, 4, 6):
        y, u, v = pattern.render(n, FrameId(n, 1000 + n), "t")
        frame = av.VideoFrame(320, 180, "yuv420p")
        for plane, data in zip(frame.planes, (y, u, v), strict=True):
            plane.update(data)
        track_frames.append(frame)
    sink = VideoFrameIdSink(freeze_ms=250)
    times = [1010, 1040, 1070, 1400, 1430, 1460]
    for frame, now in zip(track_frames, times, strict=True):
        sink.on_frame(frame, now)
    d = sink.to_dict()
    assert d["missing"] == 2 and d["out_of_order"] == 1 and d["last_id"] == 6
    assert d["freezes"] == 1 and d["max_gap_ms"] == 330
    # 4 after 5 cannot be a real frame (receivers never reorder): corrupt, not fresh
    assert d["shown"] == 6 and d["corrupt_shown"] == 1 and d["fresh"] == 5
    assert d["longest_freeze_ms"] == 330
    assert sink.latency.samples == [10, 39, 68, 395, 454]


def _frame_with_id(frame_id: FrameId | None) -> av.VideoFrame:
    pattern = SyntheticVideoTrack("x", 320, 180, 30).pattern
    y, u, v = pattern.render(1, frame_id or FrameId(1, 1), "t")
    if frame_id is None:
        y = bytearray(y)
        for row in range(8, 24):  # scribble over the id blocks: CRC-8 fails
            y[row * 320 + 8 : row * 320 + 200] = bytes(range(192))
    frame = av.VideoFrame(320, 180, "yuv420p")
    for plane, data in zip(frame.planes, (y, u, v), strict=True):
        plane.update(bytes(data))
    return frame


def test_video_sink_counts_corrupt_frames_and_the_longest_freeze() -> None:
    sink = VideoFrameIdSink()
    shown = [
        (FrameId(10, 5000), 5060),
        (FrameId(11, 5033), 5093),
        (None, 5126),  # unreadable: corrupt
        (FrameId(4_000_000, 5100), 5160),  # a CRC-valid id that jumps implausibly: corrupt
        (FrameId(9, 5000), 5190),  # backwards: corrupt
        (FrameId(13, 9_000_000), 5220),  # sent "in the future" (shared clock): corrupt
        (FrameId(40, 5990), 6050),  # 29 frames on after ~1 s: a freeze, then fresh
        (FrameId(41, 6023), 6083),
    ]
    for frame_id, now in shown:
        sink.on_frame(_frame_with_id(frame_id), now)
    d = sink.to_dict()
    assert d["shown"] == 8 and d["corrupt_shown"] == 4 and d["fresh"] == 4
    assert d["longest_freeze_ms"] == 6050 - 5093
    assert sink.clock_shared is True
    assert sink.latency.samples == [60, 60, 60, 60]
    assert d["latency_p50_ms"] == 60 and d["latency_p95_ms"] == 60
    assert sink.fresh_since(5990) == [(6050, 5990), (6083, 6023)]


class _QueueTrack(MediaStreamTrack):
    """A remote track whose frames the test hands over one by one (None: it ends)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue()

    async def recv(self) -> av.VideoFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


async def test_two_paths_to_one_sink_show_one_and_hand_over_without_a_repeat() -> None:
    """A call moving between mesh and SFU receives a member on both paths for a moment:
    the sink shows the first path until it ends, drops what the second delivers meanwhile,
    then shows the second from the first picture the first had not shown (no repeat, no
    corrupt frame); a path silent for longer than the handover time gives way as well."""
    now = [10_000]
    sink = VideoFrameIdSink(clock=lambda: now[0])
    mesh, sfu = _QueueTrack(), _QueueTrack()
    frames = {c: _frame_with_id(FrameId(c, 10_000 + 33 * c)) for c in range(1, 12)}

    async def deliver(track: _QueueTrack, counter: int | None) -> None:
        await track.queue.put(None if counter is None else frames[counter])
        for _ in range(5):
            await asyncio.sleep(0)

    tasks = [sink.start(mesh), sink.start(sfu)]
    for c in (1, 2, 3):
        now[0] += 33
        await deliver(mesh, c)
    await deliver(sfu, 2)  # the second path lags the first: shown already, dropped
    await deliver(sfu, 3)
    assert (sink.frames, sink.standby_frames, sink.handovers) == (3, 2, 0)
    await deliver(mesh, None)  # the mesh connection closes
    now[0] += 33
    await deliver(sfu, 3)  # the picture the mesh showed last: not shown twice
    await deliver(sfu, 4)
    now[0] += 33
    await deliver(sfu, 5)
    d = sink.to_dict()
    assert (d["shown"], d["fresh"], d["corrupt_shown"]) == (5, 5, 0), d
    assert (d["handovers"], d["handover_repeats"], d["out_of_order"]) == (1, 1, 0), d
    assert d["last_id"] == 5 and d["missing"] == 0
    # a third path delivering while the shown one is silent: it waits the handover time
    other = _QueueTrack()
    tasks.append(sink.start(other))
    now[0] += sink.handover_ms - 100
    await deliver(other, 6)
    assert sink.frames == 5 and sink.standby_frames == 3
    now[0] += 200  # the shown path has delivered nothing for longer than handover_ms
    await deliver(other, 7)
    assert sink.frames == 6 and sink.handovers == 2 and sink.corrupt == 0
    await sink.stop()
    assert all(t.done() for t in tasks)


def test_video_sink_without_a_shared_clock_still_counts_corrupt_frames() -> None:
    sink = VideoFrameIdSink()
    for counter, now in ((1, 100), (2, 133), (5_000_000, 166), (3, 200)):
        sink.on_frame(_frame_with_id(FrameId(counter, 3_000_000_000 + counter)), now)
    assert sink.clock_shared is False and sink.latency.count == 0
    assert (sink.fresh, sink.corrupt) == (3, 1)


def test_synthetic_second_has_one_chirp_at_the_start() -> None:
    for signal in ("tone", "speech", "silence"):
        pcm = synthetic_second(signal)
        assert len(pcm) == 2 * AUDIO_RATE
        sink = AudioChirpSink()
        for i in range(0, AUDIO_RATE, AUDIO_SAMPLES):
            frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
            frame.planes[0].update(pcm[2 * i : 2 * (i + AUDIO_SAMPLES)])
            frame.sample_rate = AUDIO_RATE
            sink.on_frame(frame, 0)
        assert len(sink.chirps) == 1 and sink.chirps[0] < 48  # within the first ms
    assert synthetic_second("tone", chirp=False) != synthetic_second("tone")
    with pytest.raises(UsageError):
        synthetic_second("noise")


async def test_chirps_are_found_through_aiortc_opus_one_second_apart() -> None:
    track = SyntheticAudioTrack("speech")
    track._pacer.interval = 0.0  # no real-time pacing for an offline codec check
    encoder, decoder = OpusEncoder(), OpusDecoder()
    sink = AudioChirpSink()
    for _ in range(3 * 50):
        payloads, timestamp = encoder.encode(await track.recv())
        for payload in payloads:
            for frame in decoder.decode(JitterFrame(payload, timestamp)):
                sink.on_frame(frame, 0)
    assert len(sink.chirps) == 3
    assert all(abs(e) <= 1.0 for e in sink.interval_errors_ms())  # sample-exact spacing
    assert sink.to_dict()["chirp_spacing_ok"] == 2


def test_source_specs() -> None:
    src = open_source("synthetic:speech", name="sochi", width=320, height=180, fps=15)
    assert isinstance(src.video, SyntheticVideoTrack) and src.video.fps == 15
    assert isinstance(src.audio, SyntheticAudioTrack) and src.audio.signal == "speech"
    src.stop()
    assert src.video.readyState == "ended"
    for bad in ("webcam", "file:", "synthetic:noise"):
        with pytest.raises(UsageError):
            open_source(bad)
    with pytest.raises(UsageError):
        SyntheticVideoTrack(fps=0)


def test_missing_file_and_devices_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MediaDeviceError, match="not found"):
        open_source(f"file:{tmp_path / 'nope.webm'}")
    (tmp_path / "junk.webm").write_bytes(b"not media at all")
    with pytest.raises(MediaDeviceError, match="cannot open"):
        open_source(f"file:{tmp_path / 'junk.webm'}")
    with pytest.raises(MediaDeviceError, match="no camera"):
        sources.open_camera(str(tmp_path / "video9"))
    with pytest.raises(UsageError):
        sources.open_microphone(backend="oss")
    found = sources.detect_devices()
    assert set(found) == {"cameras", "microphone_backends"}
    assert all(c.startswith("/dev/video") for c in found["cameras"])
    if not found["cameras"]:  # no camera here: asking for one fails with a clear error
        with pytest.raises(MediaDeviceError):
            open_source("device")


async def test_file_source_plays_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        video = SyntheticVideoTrack("file", 320, 180, 60)
        for _ in range(10):
            frame = await video.recv()
            frame.pts = None
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        video.stop()
    src = open_source(f"file:{path}")
    assert src.audio is None and src.video is not None
    frame = await src.video.recv()
    assert (frame.width, frame.height) == (320, 180)
    sink = VideoFrameIdSink()
    sink.on_frame(frame, monotonic_ms())
    assert sink.readable == 1 and sink.first_counter == 0
    src.stop()


def test_a_capture_holds_at_most_its_limit_whatever_the_timestamps_say() -> None:
    """A sender whose RTP timestamps jump ahead 10 s a packet would have a timestamp-driven
    capture fill memory (or the disk) with silence: it stops at its limit and counts."""
    from array import array

    from hotline.media.sinks import PcmCapture

    capture = PcmCapture(by_pts=True, limit=48000 * 3)
    frame = array("h", [100] * 960)
    for i in range(200):  # 200 packets, each 10 s after the one before
        capture.write(frame, pts=i * PcmCapture.MAX_GAP)
    assert len(capture.pcm) == capture.samples == 48000 * 3
    assert capture.dropped > 0 and capture.gap_samples > 0
    capture.write(frame, pts=10**12)  # nothing more is kept
    assert len(capture.pcm) == 48000 * 3
