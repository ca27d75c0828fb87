"""The receive-side video guard, driven with packet sequences (pure, simulated time)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiortc.codecs.vpx import Vp8Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.media import video_guard as vg
from hotline.media.video_guard import (
    FrameAssembler,
    KeyframeGate,
    NackScheduler,
    SeqUnwrapper,
    VideoPacket,
    VideoReceiveGuard,
    parse_vp8_descriptor,
)

TS_STEP = 6000  # 15 fps at 90 kHz
KEY = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\x68\x01" + b"k" * 20
DELTA = b"\x31\x02\x00" + b"d" * 20


@dataclass
class Sent:
    frame: int
    packets: list[VideoPacket]


def stream(frames: int, per_frame: int = 2, seq0: int = 100, picture0: int = 7) -> list[Sent]:
    """What aiortc's sender puts on the wire: ``per_frame`` packets per frame, marker last."""
    out = []
    seq = seq0
    for i in range(frames):
        payloads = Vp8Encoder._packetize(bytes([i % 256]) * 1300 * per_frame, picture0 + i)
        payloads = payloads[:per_frame]
        packets = []
        for j, p in enumerate(payloads):
            d = parse_vp8_descriptor(p)
            packets.append(
                VideoPacket(
                    seq=seq % 65536,
                    timestamp=(i * TS_STEP) % (1 << 32),
                    marker=j == len(payloads) - 1,
                    descriptor=d,
                    data=p[d.size :],
                )
            )
            seq += 1
        out.append(Sent(i, packets))
    return out


def feed(asm: FrameAssembler, packets: list[VideoPacket], now: float, unwrap: SeqUnwrapper):
    frames = []
    for p in packets:
        frames += asm.add(unwrap.extend(p.seq), p, now)
    return frames


def test_descriptor_of_aiortc_packets() -> None:
    payloads = Vp8Encoder._packetize(b"x" * 3000, 1234)
    first, second = (parse_vp8_descriptor(p) for p in payloads[:2])
    assert first.frame_start and first.picture_id == 1234 and first.size == 4
    assert not second.start and second.picture_id == 1234
    short = parse_vp8_descriptor(bytes([0x90, 0x80, 0x05]) + b"z")  # 7-bit PictureID
    assert short.picture_id == 5 and short.size == 3 and short.frame_start
    assert parse_vp8_descriptor(b"\x10abc") == vg.Vp8Descriptor(True, 0, None, 1)
    with pytest.raises(ValueError):
        parse_vp8_descriptor(b"\x90\x80\x80")


def test_keyframe_bit_and_start_code() -> None:
    assert vg.is_vp8_keyframe(KEY)
    assert not vg.is_vp8_keyframe(DELTA)
    assert not vg.is_vp8_keyframe(b"\x10\x02\x00" + b"\x00" * 20)  # P=0 without start code


def test_sequence_numbers_unwrap_and_repeat() -> None:
    u = SeqUnwrapper()
    assert [u.extend(s) for s in (65534, 65535, 0, 65535, 1)] == [65534, 65535, 65536, 65535, 65537]


def test_clean_stream_releases_each_frame_on_its_marker() -> None:
    asm, u = FrameAssembler(), SeqUnwrapper()
    sent = stream(5, per_frame=3, seq0=65530)  # wraps
    for s in sent:
        assert feed(asm, s.packets[:-1], 0.0, u) == []
        (frame,) = feed(asm, s.packets[-1:], 0.0, u)  # no waiting for the next frame
        assert frame.data == b"".join(p.data for p in s.packets)
        assert not frame.discontinuous and frame.picture_id == 7 + s.frame


def test_reordered_and_retransmitted_packets_fill_the_hole_in_time() -> None:
    asm, u = FrameAssembler(), SeqUnwrapper()
    f = stream(4)
    assert len(feed(asm, f[0].packets, 0.0, u)) == 1
    lost = f[1].packets[1]
    out = feed(asm, [f[1].packets[0], *f[2].packets, *f[3].packets], 0.01, u)
    assert out == []  # held back: frames 2 and 3 would reference frame 1
    out = feed(asm, [lost], 0.05, u)  # the retransmission, within the wait
    assert [fr.timestamp for fr in out] == [TS_STEP, 2 * TS_STEP, 3 * TS_STEP]
    assert not any(fr.discontinuous for fr in out)


def test_a_hole_is_abandoned_after_the_wait_and_marked() -> None:
    asm, u = FrameAssembler(), SeqUnwrapper()
    asm.wait_s = 0.15
    f = stream(8)
    feed(asm, f[0].packets, 0.0, u)
    assert feed(asm, f[2].packets, 0.07, u) == []  # frame 1 lost entirely
    assert feed(asm, f[3].packets, 0.14, u) == []
    out = feed(asm, f[4].packets, 0.22, u)  # 150 ms after the hole was seen
    assert [fr.timestamp // TS_STEP for fr in out] == [2, 3, 4]
    assert out[0].discontinuous and not out[1].discontinuous
    assert asm.counters["holes_abandoned"] == 1
    # the retransmission that comes too late is ignored, counted
    assert feed(asm, f[1].packets, 0.3, u) == []
    assert asm.counters["late_packets"] == 2


def test_a_frame_with_its_first_packet_lost_is_dropped_whole() -> None:
    asm, u = FrameAssembler(), SeqUnwrapper()
    asm.wait_s = 0.1
    f = stream(5)
    feed(asm, f[0].packets, 0.0, u)
    feed(asm, [f[1].packets[1], *f[2].packets], 0.05, u)
    out = feed(asm, f[3].packets, 0.2, u)
    assert [fr.timestamp // TS_STEP for fr in out] == [2, 3]
    assert out[0].discontinuous


def test_after_an_outage_the_old_hole_is_skipped_at_once() -> None:
    asm, u = FrameAssembler(), SeqUnwrapper()
    f = stream(80)
    for s in f[:10]:
        feed(asm, s.packets, s.frame / 15, u)
    # 2 s of packets (frames 10..39) lost; the first packets after the outage
    out = feed(asm, f[40].packets, 40 / 15, u)
    assert [fr.timestamp // TS_STEP for fr in out] == [40]  # no waiting at all
    assert out[0].discontinuous
    assert asm.counters["stale_holes_skipped"] == 1


def test_capacity_bounds_what_is_held() -> None:
    asm, u = FrameAssembler(capacity=16), SeqUnwrapper()
    asm.wait_s = 10.0
    f = stream(20)
    feed(asm, f[0].packets, 0.0, u)
    out = []
    for s in f[2:12]:  # frame 1 lost; media gap stays under STALE_GAP_S for a while
        out += feed(asm, s.packets, 0.01, u)
    assert out and out[0].discontinuous  # released before 10 s: the buffer was full


def test_nack_retries_with_a_bound_and_learns_the_round_trip() -> None:
    n = NackScheduler()
    n.on_packet(10, 0, 0.0)
    n.on_packet(13, 3 * TS_STEP, 0.01)  # 11 and 12 lost
    assert n.due(0.01) == [11, 12]
    assert n.due(0.02) == []  # not before the retry interval
    n.on_packet(11, TS_STEP, 0.09)  # answered on the first try after 80 ms
    assert n.rtt_s == pytest.approx(0.08)
    retry = n.retry_s
    assert retry == pytest.approx(1.1 * 0.08 + 0.01)
    assert n.due(0.01 + retry) == [12]  # 12 asked again
    t = 0.01 + retry
    asked = 3  # 11 and 12, then 12 again
    for _ in range(10):
        t += retry
        asked += len(n.due(t))
    assert asked == vg.NACK_MAX_TRIES + 1  # 11 once, 12 NACK_MAX_TRIES times, then no more
    assert n.counters["nack_retries"] == vg.NACK_MAX_TRIES - 1
    assert n.counters["nack_gave_up"] == 1


def test_no_nack_for_packets_lost_in_an_outage() -> None:
    n = NackScheduler()
    n.on_packet(10, 0, 0.0)
    n.on_packet(70, 2 * 90000, 2.0)  # 2 s of media time later
    assert n.due(2.0) == []
    assert n.counters["outage_gaps_not_requested"] == 1
    n.on_packet(71, 2 * 90000 + TS_STEP, 2.07)
    n.on_packet(1000, 2 * 90000 + 2 * TS_STEP, 2.1)  # hundreds of packets: an outage
    assert n.due(2.1) == []


def test_gate_freezes_until_a_key_frame_and_throttles_requests() -> None:
    g = KeyframeGate(interval_s=0.25)
    assert g.on_frame(True, False, 0.0) == vg.FrameDecision(True, False)
    assert g.on_frame(False, False, 0.07).show
    d = g.on_frame(False, True, 0.13)  # a reference is missing
    assert d == vg.FrameDecision(False, True)
    assert g.on_frame(False, False, 0.2) == vg.FrameDecision(False, False)  # throttled
    assert g.poll(0.3) is False
    assert g.poll(0.39) is True  # the key frame did not come: ask again
    assert g.on_frame(True, False, 0.45).show  # resume on the key frame
    assert g.on_frame(False, False, 0.5).show
    assert g.counters["frames_withheld"] == 2 and g.counters["resumed_on_keyframe"] == 1
    assert g.counters["keyframe_requests"] == 2
    assert g.on_refused(0.7) is True  # an authentication failure: wait for a key frame
    assert not g.on_frame(False, False, 0.75).show


def test_gate_waits_for_the_first_key_frame_without_asking_early() -> None:
    g = KeyframeGate()
    assert g.poll(0.0) is False  # nothing seen yet: the sender starts with a key frame
    assert g.on_frame(False, False, 0.1) == vg.FrameDecision(False, True)


def test_guard_sequence_loss_then_recovery() -> None:
    """Packets in, decisions out: loss -> NACK -> abandoned -> PLI -> freeze -> key frame."""
    guard = VideoReceiveGuard()
    f = stream(12)
    shown: list[int] = []
    requests = 0
    nacks: list[int] = []

    keys = {0, 9}  # the frames the sender encoded as key frames

    def deliver(s: Sent, now: float) -> None:
        nonlocal requests
        for p in s.packets:
            nacks.extend(guard.on_nack_point(p.seq, p.timestamp, now))
            out = guard.on_packet(p, now)
            requests += out.request_keyframe
            for frame in out.frames:
                key = frame.timestamp // TS_STEP in keys
                decision = guard.gate.on_frame(key, frame.discontinuous, now)
                requests += decision.request_keyframe
                if decision.show:
                    shown.append(frame.timestamp // TS_STEP)

    deliver(f[0], 0.0)
    for s in f[1:4]:
        deliver(s, s.frame / 15)
    # frame 4 lost: 5, 6, 7, 8 arrive
    for s in f[5:9]:
        deliver(s, s.frame / 15)
    assert f[4].packets[0].seq in nacks and f[4].packets[1].seq in nacks
    assert shown == [0, 1, 2, 3]  # 5.. never shown: their reference (4) is missing
    assert requests >= 1
    deliver(f[9], 9 / 15)  # the key frame asked for
    deliver(f[10], 10 / 15)
    assert shown == [0, 1, 2, 3, 9, 10]
    c = guard.counters()
    assert c.get("holes_abandoned", 0) + c.get("stale_holes_skipped", 0) == 1
    assert c["frames_withheld"] >= 1 and c["nacked_packets"] >= 2


def test_an_overdue_retransmission_asks_for_a_key_frame_while_the_hole_waits() -> None:
    guard = VideoReceiveGuard()  # RTT 100 ms until measured: early after 140 ms
    f = stream(10, per_frame=1)
    for s in f[:2]:
        assert guard.on_packet(s.packets[0], s.frame / 30).frames
    requests = []
    for s in f[3:7]:  # frame 2 lost; later frames held
        out = guard.on_packet(s.packets[0], s.frame * 0.05)
        assert out.frames == []
        requests.append(out.request_keyframe)
    assert requests == [False, False, False, True]  # 140 ms after the hole was seen
    assert guard.assembler.counters["keyframes_asked_early"] == 1
    out = guard.on_packet(f[2].packets[0], 0.33)  # the retry got through after all
    assert [fr.timestamp // TS_STEP for fr in out.frames] == [2, 3, 4, 5, 6]
    assert not any(fr.discontinuous for fr in out.frames)


def test_a_key_frame_behind_a_hole_ends_the_wait_at_once() -> None:
    asm, u = FrameAssembler(), SeqUnwrapper()
    asm.wait_s = 10.0
    f = stream(6, per_frame=1)
    key_payload = Vp8Encoder._packetize(KEY, 12)[0]
    d = parse_vp8_descriptor(key_payload)
    key = VideoPacket(f[4].packets[0].seq, 4 * TS_STEP, True, d, key_payload[d.size :])
    assert key.keyframe_hint and not f[3].packets[0].keyframe_hint
    feed(asm, f[0].packets, 0.0, u)
    assert feed(asm, f[2].packets + f[3].packets, 0.1, u) == []  # frame 1 lost: waiting
    out = feed(asm, [key], 0.13, u)  # 30 ms later, far from any timeout
    assert [fr.timestamp // TS_STEP for fr in out] == [4]
    assert out[0].discontinuous and out[0].data == KEY
    assert asm.counters["holes_skipped_to_keyframe"] == 1


def test_padding_packets_fill_their_sequence_numbers() -> None:
    asm, u = FrameAssembler(), SeqUnwrapper()
    f = stream(3, per_frame=1, seq0=10)
    f1 = [VideoPacket(11, TS_STEP, False, None, b""), *f[1].packets]  # a probe between frames
    f1[1] = VideoPacket(12, TS_STEP, True, f[1].packets[0].descriptor, f[1].packets[0].data)
    f2 = VideoPacket(13, 2 * TS_STEP, True, f[2].packets[0].descriptor, f[2].packets[0].data)
    frames = feed(asm, [*f[0].packets, *f1, f2], 0.0, u)
    assert [fr.timestamp // TS_STEP for fr in frames] == [0, 1, 2]
    assert not any(fr.discontinuous for fr in frames)
    assert asm.counters["padding_packets"] == 1 and asm.counters["holes_abandoned"] == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.booleans(), min_size=60, max_size=60),  # lost or not, per packet
    st.lists(st.integers(0, 3), min_size=60, max_size=60),  # reordering distance
    st.lists(st.booleans(), min_size=60, max_size=60),  # duplicated or not
    st.integers(0, 65535),
)
def test_no_released_frame_is_mixed_or_falsely_continuous(
    lost: list[bool], shift: list[int], dup: list[bool], seq0: int
) -> None:
    """Whatever the network does, a frame marked continuous follows its real predecessor."""
    guard = VideoReceiveGuard()
    sent = stream(20, per_frame=3, seq0=seq0)
    by_ts = {s.frame * TS_STEP: b"".join(p.data for p in s.packets) for s in sent}
    wire = [p for s in sent for p in s.packets]
    order = sorted(range(len(wire)), key=lambda i: i + shift[i])
    arrivals = []
    for i in order:
        if not lost[i]:
            arrivals.append(wire[i])
            if dup[i]:
                arrivals.append(wire[i])
    released = []
    for k, p in enumerate(arrivals):
        released += guard.on_packet(p, k * 0.011).frames
    previous = None
    for frame in released:
        assert frame.data == by_ts[frame.timestamp]  # never a mix of packets
        index = frame.timestamp // TS_STEP
        if previous is not None:
            assert index > previous  # in order, each at most once
        if not frame.discontinuous and previous is not None:
            assert index == previous + 1  # continuous means: nothing lost in between
        previous = index
