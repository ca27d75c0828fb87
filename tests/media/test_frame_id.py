"""The frame id: CRC-8 vector, round trips, and survival through aiortc's own VP8 codec."""

from __future__ import annotations

import pytest
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from hypothesis import given
from hypothesis import strategies as st

from hotline.errors import UsageError
from hotline.media.frame_id import (
    COUNTER_MOD,
    TIME_MOD,
    FrameId,
    FrameIdLayout,
    crc8,
    latency_ms,
)
from hotline.media.pattern import TestPattern, render_text
from hotline.media.sources import SyntheticVideoTrack


def test_crc8_check_value() -> None:
    # CRC-8/SMBUS check value from the CRC catalogue (reveng.sourceforge.io/crc-catalogue)
    assert crc8(b"123456789") == 0xF4
    assert crc8(b"") == 0


@given(st.integers(0, COUNTER_MOD - 1), st.integers(0, TIME_MOD - 1))
def test_bits_round_trip(counter: int, send_ms: int) -> None:
    fid = FrameId(counter, send_ms)
    assert FrameId.from_bits(fid.to_bits()) == fid


@given(st.integers(0, COUNTER_MOD - 1), st.integers(0, TIME_MOD - 1), st.integers(0, 63))
def test_any_single_bit_error_is_detected(counter: int, send_ms: int, bit: int) -> None:
    assert FrameId.from_bits(FrameId(counter, send_ms).to_bits() ^ (1 << bit)) is None


def test_latency_wraps_with_the_32_bit_clock() -> None:
    assert latency_ms(100, 145) == 45
    assert latency_ms(TIME_MOD - 10, 30) == 40


@pytest.mark.parametrize(
    ("width", "height", "block"), [(640, 360, 16), (1280, 720, 16), (320, 180, 8)]
)
def test_drawn_id_reads_back(width: int, height: int, block: int) -> None:
    pattern = TestPattern(width, height, "situation-room")
    assert pattern.layout.block == block
    for index in (0, 1, 77, COUNTER_MOD + 5):
        fid = FrameId(index % COUNTER_MOD, 4_000_000_000 + index)
        y, u, v = pattern.render(index, fid, "12:34:56.7")
        assert len(y) == width * height and len(u) == len(v) == width * height // 4
        assert pattern.layout.read(y, width) == fid


def test_unreadable_when_blocks_are_damaged() -> None:
    pattern = TestPattern(640, 360, "sochi")
    y = bytearray(pattern.render(5, FrameId(5, 99), "00:00:00.0")[0])
    layout = pattern.layout
    # paint one block the opposite colour
    for row in range(layout.y0, layout.y0 + layout.block):
        start = row * 640 + layout.x0
        y[start : start + layout.block] = bytes(255 - b for b in y[start : start + layout.block])
    assert layout.read(bytes(y), 640) is None


def test_too_small_for_an_id() -> None:
    with pytest.raises(UsageError):
        FrameIdLayout.for_size(200, 100)
    with pytest.raises(UsageError):
        TestPattern(641, 360, "odd")


def test_text_renders_known_and_unknown_characters() -> None:
    w, h, px = render_text("Sochi 12:00", 2)
    w2, h2, px2 = render_text("SOCHI 12:00", 2)
    assert (w, h, px) == (w2, h2, px2)  # case-insensitive
    assert len(px) == w * h and max(px) > 200 and min(px) < 20
    assert render_text("é", 1)[2] == render_text("?", 1)[2]


async def test_ids_survive_aiortc_vp8_at_its_lowest_bitrate() -> None:
    track = SyntheticVideoTrack("situation-room", 640, 360, 60)
    encoder, decoder = Vp8Encoder(), Vp8Decoder()
    encoder.target_bitrate = 250_000  # aiortc's floor
    layout = FrameIdLayout.for_size(640, 360)
    read = []
    for i in range(60):
        frame = await track.recv()
        payloads, timestamp = encoder.encode(frame, force_keyframe=i == 0)
        data = b"".join(vp8_depayload(p) for p in payloads)
        for out in decoder.decode(JitterFrame(data, timestamp)):
            plane = out.planes[0]
            read.append(layout.read(bytes(plane), plane.line_size))
    track.stop()
    assert [r.counter if r else None for r in read] == list(range(60))
