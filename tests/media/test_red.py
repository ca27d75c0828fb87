"""RED (RFC 2198) over SFrame-protected Opus: the format, hostile payloads, burst recovery."""

from __future__ import annotations

import asyncio
import fractions
import math
from array import array

import av
import pytest

from hotline.errors import HotlineError
from hotline.media import engine, red
from hotline.media.audio_jitter import Action
from hotline.media.audio_path import (
    BITRATE,
    RED_BITRATE,
    RED_DISTANCE,
    AudioReceivePath,
    FecOpusEncoder,
    LossFeedback,
)
from tests.media.harness import sframe_pair

OPUS_PT = 96
N = 960


def test_build_parse_round_trip() -> None:
    blocks = [red.RedBlock(OPUS_PT, 1920, b"two before"), red.RedBlock(OPUS_PT, 960, b"one")]
    payload = red.build(OPUS_PT, b"primary", blocks)
    # RFC 2198 headers: F=1|PT, 14-bit offset, 10-bit length (twice), then F=0|PT
    assert payload[0] == 0x80 | OPUS_PT and payload[4] == 0x80 | OPUS_PT and payload[8] == OPUS_PT
    assert int.from_bytes(payload[1:4], "big") == (1920 << 10) | len(b"two before")
    parsed, primary = red.parse(payload)
    assert parsed == blocks
    assert primary == red.RedBlock(OPUS_PT, 0, b"primary")
    assert red.parse(red.build(OPUS_PT, b"alone", [])) == ([], red.RedBlock(OPUS_PT, 0, b"alone"))
    # a block that does not fit the header's fields is left out, not sent truncated
    big = red.RedBlock(OPUS_PT, 960, bytes(red.MAX_BLOCK + 1))
    assert red.parse(red.build(OPUS_PT, b"p", [big]))[0] == []


def _header(pt: int, offset: int, length: int) -> bytes:
    return bytes([0x80 | pt]) + ((offset << 10) | length).to_bytes(3, "big")


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing at all
        _header(OPUS_PT, 960, 3),  # the header chain runs off the end (no primary header)
        bytes([0x80 | OPUS_PT, 0x00]),  # a block header cut short
        _header(OPUS_PT, 960, 50) + bytes([OPUS_PT]) + b"short",  # block longer than payload
        _header(OPUS_PT, 960, 3) + bytes([OPUS_PT]) + b"abc",  # no primary left
        _header(OPUS_PT, 0, 1) + bytes([OPUS_PT]) + b"ap",  # a zero timestamp offset
        _header(OPUS_PT, 960, 1) + _header(OPUS_PT, 1920, 1) + bytes([OPUS_PT]) + b"abp",
        b"".join(_header(OPUS_PT, 960 * (9 - i), 0) for i in range(5)) + bytes([OPUS_PT]) + b"p",
    ],
)
def test_hostile_red_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(red.RedMalformed):
        red.parse(payload)


def _speech_frames(count: int) -> list[av.AudioFrame]:
    """A voiced, speech-like tone (so PLC and FEC have something to do), 20 ms frames."""
    out = []
    for i in range(count):
        pcm = array(
            "h",
            (
                int(8000 * math.sin(2 * math.pi * 180 * t / 48000) * (1 + math.sin(t / 4000)))
                for t in range(i * N, (i + 1) * N)
            ),
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=N)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = 48000
        frame.pts = i * N
        frame.time_base = fractions.Fraction(1, 48000)
        out.append(frame)
    return out


def _lossy_feedback() -> LossFeedback:
    feedback = LossFeedback()
    for _ in range(10):
        feedback.on_report(13)  # 5 % reported
    assert feedback.lossy()
    return feedback


def _run(
    lost: set[int],
    frames: int = 60,
    tamper: set[int] | None = None,
    redundancy: bool = True,
) -> tuple[AudioReceivePath, dict[int, Action], dict[str, int]]:
    """Frames through a real libopus encoder with RED and real SFrame, a seeded schedule of
    lost packets, a 60 ms link: the receive path's action per frame (the last one taken at
    its timestamp: a frame waited for is concealed first) and its counters."""
    a, b = sframe_pair()
    feedback = _lossy_feedback() if redundancy else LossFeedback()
    if not redundancy:
        for _ in range(40):
            feedback.on_report(0)
    encoder = FecOpusEncoder(feedback, lambda p: a.protect("audio", p), OPUS_PT)
    calls = {"unprotect": 0}

    def unprotect(data: bytes) -> bytes:
        calls["unprotect"] += 1
        return b.unprotect("audio", data)

    clock = [0.0]
    path = AudioReceivePath(unprotect, lambda: clock[0])
    arrivals = []
    for i, frame in enumerate(_speech_frames(frames)):
        payloads, _ = encoder.encode(frame)
        assert len(payloads) == 1
        payload = payloads[0]
        if tamper and i in tamper:  # a bit flipped in the oldest redundant block's ciphertext
            blocks, primary = red.parse(payload)
            first = blocks[0]
            broken = first.data[:-1] + bytes([first.data[-1] ^ 1])
            payload = red.build(
                OPUS_PT, primary.data, [red.RedBlock(OPUS_PT, first.offset, broken), *blocks[1:]]
            )
        if i not in lost:
            arrivals.append((i * 0.02 + 0.06, i, payload))
    actions: dict[int, Action] = {}
    k = 0
    t = 0.0
    while t < frames * 0.02 + 0.5:
        clock[0] = t
        while k < len(arrivals) and arrivals[k][0] <= t:
            _, i, payload = arrivals[k]
            path.on_red(i, i * N, payload, None, OPUS_PT)
            k += 1
        steps = path.pull()
        actions.update((step.timestamp // N, step.action) for step in steps)
        t += 0.001
    calls["red_blocks_sent"] = encoder.red_blocks_sent
    return path, actions, calls


def test_a_burst_of_four_is_mostly_rebuilt_from_redundancy() -> None:
    burst = {30, 31, 32, 33}
    path, actions, calls = _run(burst)
    stats = path.stats()
    # the first packet after the burst brings back 32 and 33 whole (RED distance 2), and
    # 32's copy carries 31's FEC: only 30 is left to concealment
    assert RED_DISTANCE == 2
    assert stats["red_recovered"] == 2
    assert [actions[i] for i in range(29, 35)] == [
        Action.PLAY,
        Action.PLC,
        Action.FEC,
        Action.PLAY,
        Action.PLAY,
        Action.PLAY,
    ]
    # every other frame is played (or merged into its neighbour to shed delay afterwards)
    concealed = (Action.PLC, Action.FEC, Action.SILENCE)
    assert not [i for i in range(10, 59) if i not in (30, 31) and actions.get(i) in concealed]
    assert stats["red_refused"] == stats["red_malformed"] == stats["refused"] == 0
    assert stats["late"] == 0
    # each frame decrypted once: redundant copies of frames already here are not opened
    assert calls["unprotect"] == 60 - len(burst) + 2
    assert calls["red_blocks_sent"] > 0


def test_without_reported_loss_no_redundancy_is_sent() -> None:
    burst = {30, 31, 32, 33}
    path, actions, calls = _run(burst, redundancy=False)
    stats = path.stats()
    assert calls["red_blocks_sent"] == 0
    assert stats["red_recovered"] == 0  # plain FEC only: 33 rebuilt, 30 to 32 concealed
    # (a concealed frame may also be left out to shed the delay the burst added)
    assert all(actions.get(i) in (Action.PLC, None) for i in (30, 31, 32))
    assert actions[33] is Action.FEC


def test_a_redundant_block_that_fails_authentication_is_dropped_and_counted() -> None:
    # packet 34's copy of 32 is tampered with: 32 is never played from it; the copy of 33
    # (authentic) still is, and 32 is rebuilt from 33's FEC instead
    path, actions, _ = _run({30, 31, 32, 33}, tamper={34})
    stats = path.stats()
    assert stats["red_refused"] == 1
    assert stats["red_recovered"] == 1
    assert [actions[i] for i in range(30, 34)] == [Action.PLC, Action.PLC, Action.FEC, Action.PLAY]
    assert stats["refused"] == 0


def test_red_of_another_payload_type_is_refused_whole() -> None:
    a, b = sframe_pair()
    path = AudioReceivePath(lambda d: b.unprotect("audio", d), lambda: 0.0)
    frame = _speech_frames(1)[0]
    encoder = FecOpusEncoder(_lossy_feedback(), lambda p: a.protect("audio", p), OPUS_PT)
    payload = encoder.encode(frame)[0][0]
    _, primary = red.parse(payload)
    path.on_red(1, 0, red.build(0, primary.data, []), None, OPUS_PT)  # PCMU's payload type
    path.on_red(2, 960, b"\x80\x00", None, OPUS_PT)
    stats = path.stats()
    assert stats["red_malformed"] == 2
    assert stats["packets"] == 0


def test_encoder_bitrate_follows_redundancy() -> None:
    a, _ = sframe_pair()
    lossy = FecOpusEncoder(_lossy_feedback(), lambda p: a.protect("audio", p), OPUS_PT)
    clean_feedback = LossFeedback()
    for _ in range(40):
        clean_feedback.on_report(0)
    clean = FecOpusEncoder(clean_feedback, lambda p: a.protect("audio", p), OPUS_PT)
    for frame in _speech_frames(5):
        blocks, _ = red.parse(lossy.encode(frame)[0][0])
        assert len(blocks) == min(frame.pts // N, RED_DISTANCE)
        assert red.parse(clean.encode(frame)[0][0])[0] == []
    assert lossy._opus.bitrate == RED_BITRATE < BITRATE == clean._opus.bitrate


def test_red_is_offered_after_opus_with_hotlines_path_and_never_without() -> None:
    from hotline.media import aiortc_patch
    from hotline.media.stats import MediaCryptoStats

    async def offer(audio_path: bool) -> str:
        pc = engine.create_peer_connection(sframe_pair()[0], MediaCryptoStats())
        aiortc_patch.set_audio_path(pc, audio_path)
        pc.addTransceiver("audio")
        engine.force_e2ee_codecs(pc)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        await pc.close()
        return sdp

    with_path = asyncio.run(offer(True))
    mline = next(line for line in with_path.splitlines() if line.startswith("m=audio"))
    # Opus first: a browser picks its send codec from the offer's order
    assert mline.split()[3:5] == [str(OPUS_PT), str(aiortc_patch.RED_PAYLOAD_TYPE)]
    assert f"a=rtpmap:{aiortc_patch.RED_PAYLOAD_TYPE} red/48000/2" in with_path
    assert f"a=fmtp:{aiortc_patch.RED_PAYLOAD_TYPE} {OPUS_PT}/{OPUS_PT}" in with_path
    assert "red/48000" not in asyncio.run(offer(False))


def test_hotline_error_is_the_base_of_red_refusals() -> None:
    assert issubclass(red.RedMalformed, HotlineError)


def test_a_redundant_copy_fills_a_hole_but_is_not_a_timing_sample() -> None:
    from hotline.media.audio_jitter import MARGIN_S, MIN_DELAY_S, AudioJitterBuffer, AudioPacket

    def packet(i: int) -> AudioPacket:
        return AudioPacket(i, i * N, bytes([0xF8]) + bytes(40))

    jb = AudioJitterBuffer()
    for i in range(20):
        jb.push(packet(i), 0.06 + i * 0.02)
        jb.pull(0.06 + i * 0.02)
    assert jb.target_delay() == MIN_DELAY_S  # no jitter at all: the floor
    # a copy of frame 20 comes inside packet 21, 20 ms "late": it fills the hole, does not
    # count as jitter, and marks the link as lossy: one frame of FEC lookahead, plus one
    # for RED redundancy
    jb.red_seen(2)
    assert jb.wants(20 * N) and not jb.wants(19 * N)
    assert jb.push(packet(20), 0.06 + 21 * 0.02, True)
    assert not jb.wants(20 * N)
    assert not jb.push(packet(20), 0.06 + 21 * 0.02, True)  # a second copy is ignored
    assert jb.counters["packets"] == 20 and jb.counters["redundant"] == 1
    assert jb.target_delay() == pytest.approx(MARGIN_S + 2 * 0.02)


def test_redundant_offsets_follow_the_frames_timestamps() -> None:
    a, _ = sframe_pair()
    encoder = FecOpusEncoder(_lossy_feedback(), lambda p: a.protect("audio", p), OPUS_PT)
    frames = _speech_frames(3)
    frames[2].pts = 5 * N  # the source skipped two frames: the copies say so
    payload = [encoder.encode(f)[0][0] for f in frames][-1]
    blocks, _ = red.parse(payload)
    assert [b.offset for b in blocks] == [5 * N, 4 * N]
