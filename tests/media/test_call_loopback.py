"""Real calls: two RTCPeerConnections in one process on 127.0.0.1 (iceServers=[]), VP8 + Opus."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiortc import RTCSessionDescription
from aiortc.rtcrtpsender import RTCRtpSender

from hotline.errors import CodecRefused
from hotline.media import aiortc_patch, engine, red
from hotline.media.aiortc_patch import RtpView
from tests.media.aesgcm_crypto import HEADER, KIND_IDS, AesGcmFrameCrypto, crypto_pair
from tests.media.harness import close, connect, make_side

pytestmark = pytest.mark.timeout(60)

VP8_DESCRIPTOR = 4  # aiortc's VP8 payload descriptor: X=1, I=1, 15-bit PictureID


async def test_e2ee_call_carries_decrypted_video_and_audio_both_ways() -> None:
    wire: dict[str, list[bytes]] = {"video": [], "audio": []}

    def record(view: RtpView) -> bytes:
        payload = view.data[view.payload_offset :]
        # first packet of a VP8 frame carries S=1 in the descriptor; Opus packets are whole
        if view.payload_type in video_pts and payload[0] & 0x10:
            wire["video"].append(payload[VP8_DESCRIPTOR:])
        elif view.payload_type in audio_pts:
            wire["audio"].append(payload)
        elif view.payload_type in red_pts:  # RED: every block is a protected Opus frame
            blocks, primary = red.parse(payload)
            wire["audio"] += [b.data for b in blocks] + [primary.data]
        return view.data

    video_pts: set[int] = set()
    audio_pts: set[int] = set()
    red_pts: set[int] = set()
    ca, cb = crypto_pair()
    a, b = make_side("sochi", ca, tap=record), make_side("situation-room", cb)
    try:
        await connect(a, b)
        for line in a.pc.localDescription.sdp.splitlines():
            if line.startswith("a=rtpmap:"):
                pt, name = line[9:].split(" ", 1)
                pts = {"VP8": video_pts, "opus": audio_pts, "red": red_pts}
                pts.get(name.split("/")[0], set()).add(int(pt))
        assert await a.video_sink.wait_for(25, timeout=15)
        assert await b.video_sink.wait_for(25, timeout=15)
        assert await a.audio_sink.wait_for(2, timeout=10)
        assert await b.audio_sink.wait_for(2, timeout=10)
        for receiver, sender in ((a, b), (b, a)):
            video = receiver.video_sink
            assert video.unreadable <= 0.05 * video.frames
            assert video.out_of_order == 0
            assert video.last_counter is not None and video.first_counter is not None
            assert video.last_counter - video.first_counter >= 24  # ids keep increasing
            assert video.latency.p(50) is not None and 0 <= video.latency.p(50) < 1000
            assert receiver.audio_sink.frames >= 50
            # chirps a second apart (give or take audio the jitter buffer dropped under load)
            assert all(abs(e) < 200 for e in receiver.audio_sink.interval_errors_ms())
            s = receiver.stats.to_dict()
            assert s["video"]["decrypted"] >= video.frames
            assert s["video"]["rejected_total"] == 0 and s["audio"]["rejected_total"] == 0
            assert s["audio"]["decrypted"] >= receiver.audio_sink.frames
            assert sender.stats.sent("video") >= s["video"]["decrypted"]
            assert receiver.events == []
    finally:
        await close(a, b)
    # what crossed the wire was our ciphertext, never a VP8 or Opus frame
    assert len(wire["video"]) >= 25 and len(wire["audio"]) >= 50
    for frame in wire["video"]:
        assert frame[0] == KIND_IDS["video"]
        assert frame[3:6] != b"\x9d\x01\x2a"  # the VP8 key-frame start code, if it were clear
    assert all(p[0] == KIND_IDS["audio"] for p in wire["audio"])
    counters = [int.from_bytes(f[1:HEADER], "big") for f in wire["video"]]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)


async def test_frames_altered_in_transit_are_rejected_and_decoding_goes_on() -> None:
    tampered = {"video": 0, "audio": 0}
    seen = {"video": 0, "audio": 0}
    pts: dict[int, str] = {}

    def flip_some(view: RtpView) -> bytes:
        kind = pts.get(view.payload_type)
        if kind is None:
            return view.data
        if kind == "video" and not view.marker:
            return view.data  # alter the last packet of a frame (the AEAD tag is there)
        seen[kind] += 1
        every = 10 if kind == "video" else 25
        if seen[kind] % every != 0 or seen[kind] < every * 2:
            return view.data
        tampered[kind] += 1
        data = bytearray(view.data)
        data[-1] ^= 0x40
        return bytes(data)

    ca, cb = crypto_pair()
    a, b = make_side("sochi", ca, tap=flip_some), make_side("situation-room", cb)
    try:
        await connect(a, b)
        for line in a.pc.localDescription.sdp.splitlines():
            if line.startswith("a=rtpmap:"):
                pt, name = line[9:].split(" ", 1)
                kind = {"VP8": "video", "opus": "audio", "red": "audio"}.get(name.split("/")[0])
                if kind:
                    pts[int(pt)] = kind
        assert await b.video_sink.wait_for(10, timeout=15)
        # run until several tampered frames went by, then some more
        for _ in range(100):
            if tampered["video"] >= 3 and tampered["audio"] >= 3:
                break
            await asyncio.sleep(0.1)
        readable_at_third = b.video_sink.readable
        rejected_at_third = b.stats.rejected("video")
        await asyncio.sleep(1.5)
        assert tampered["video"] >= 3 and tampered["audio"] >= 3
        # every altered frame was refused by authentication, none decrypted
        assert b.stats.rejected("video", "auth_failed") >= tampered["video"] - 1 >= 2
        assert b.stats.rejected("audio", "auth_failed") >= tampered["audio"] - 1 >= 2
        assert b.stats.rejected("video") == b.stats.rejected("video", "auth_failed")
        assert b.stats.keyframe_requests("video") >= 1
        # ... and the decoder thread survived: frames kept arriving after the rejections
        assert rejected_at_third >= 2
        assert b.video_sink.readable >= readable_at_third + 10
        assert {e.reason for e in b.events} == {"auth_failed"}
        assert {e.kind for e in b.events} == {"audio", "video"}
        # the other direction was untouched
        assert a.stats.rejected("video") == 0 and a.video_sink.readable >= 10
    finally:
        await close(a, b)


async def test_unbound_peer_connection_sends_and_shows_nothing() -> None:
    unbound = aiortc_patch.unbound_stats()
    dropped_before = unbound.protect_failed("video", "unbound")
    refused_before = unbound.rejected("video", "unbound")
    ca, _ = crypto_pair()
    a = make_side("sochi", ca)
    b = make_side("situation-room", None)  # E2EE never completed: nothing bound
    assert not aiortc_patch.is_bound(b.pc) and aiortc_patch.is_bound(a.pc)
    try:
        await connect(a, b)
        for _ in range(100):  # until media runs on A's side
            if (
                a.stats.sent("video") >= 20
                and unbound.rejected("video", "unbound") > refused_before
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert a.stats.sent("video") >= 20  # A sends protected frames...
        assert b.video_sink.frames == 0 and b.audio_sink.frames == 0  # ...B shows none
        assert unbound.rejected("video", "unbound") > refused_before
        sent = await b.outbound_packets()
        assert sent == {"audio": 0, "video": 0}  # B put not a single RTP packet on the wire
        assert unbound.protect_failed("video", "unbound") > dropped_before
        assert a.video_sink.frames == 0 and a.audio_sink.frames == 0
    finally:
        await close(a, b)


async def test_no_media_until_keys_arrive_then_a_key_frame_starts_it() -> None:
    ka, kb = os.urandom(16), os.urandom(16)
    ca, cb = AesGcmFrameCrypto(None, None), AesGcmFrameCrypto(None, None)
    a, b = make_side("sochi", ca), make_side("situation-room", cb)
    try:
        await connect(a, b)
        for _ in range(100):
            if a.stats.protect_failed("video", "no_key") >= 10:
                break
            await asyncio.sleep(0.1)
        assert a.stats.protect_failed("video", "no_key") >= 10
        assert a.stats.protect_failed("audio", "no_key") >= 10
        assert b.video_sink.frames == 0 and a.video_sink.frames == 0
        assert {e.reason for e in a.events} == {"no_key"}
        assert (await a.outbound_packets()) == {"audio": 0, "video": 0}
        ca.set_keys(ka, kb)
        cb.set_keys(kb, ka)
        assert await b.video_sink.wait_for(10, timeout=10)
        assert await a.video_sink.wait_for(10, timeout=10)
        assert a.stats.to_dict()["video"]["forced_keyframes"] >= 1
        assert b.stats.rejected("video") == 0  # the first frame after the keys was a key frame
        assert b.stats.decode_errors("video") == 0
    finally:
        await close(a, b)


async def test_h264_is_refused_fail_closed() -> None:
    ca, cb = crypto_pair()
    a, b = make_side("sochi", ca), make_side("situation-room", cb)
    h264 = [
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType.lower() in ("video/h264", "video/rtx")
    ]
    try:
        a.add_media(320, 180, 15)
        for t in a.pc.getTransceivers():
            if t.kind == "video":
                t.setCodecPreferences(h264)
        await a.pc.setLocalDescription(await a.pc.createOffer())
        offer = a.pc.localDescription
        await b.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type))
        b.add_media(320, 180, 15)
        await b.pc.setLocalDescription(await b.pc.createAnswer())
        answer = b.pc.localDescription
        with pytest.raises(CodecRefused):
            engine.check_codecs(answer.sdp)
        await a.pc.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))
        assert await a.audio_sink.wait_for(1, timeout=10)  # the call is up (Opus is fine)
        for _ in range(30):
            if a.stats.protect_failed("video", "codec_refused") and b.stats.protect_failed(
                "video", "codec_refused"
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        for side in (a, b):
            assert side.stats.protect_failed("video", "codec_refused") == 1
            assert side.stats.sent("video") == 0
            assert side.video_sink.frames == 0
            assert (await side.outbound_packets())["video"] == 0
    finally:
        await close(a, b)


async def test_bindings_are_per_peer_connection() -> None:
    # two calls with different keys at once, and a third whose ends hold unrelated keys
    c1a, c1b = crypto_pair()
    c2a, c2b = crypto_pair()
    c3a, _ = crypto_pair()
    _, c3b = crypto_pair()
    pairs = [
        (make_side("a1", c1a), make_side("b1", c1b)),
        (make_side("a2", c2a), make_side("b2", c2b)),
        (make_side("a3", c3a), make_side("b3", c3b)),
    ]
    try:
        for a, b in pairs:
            await connect(a, b, width=320, height=180, fps=10)
        good = pairs[:2]
        for a, b in good:
            assert await b.video_sink.wait_for(8, timeout=15)
            assert await a.video_sink.wait_for(8, timeout=15)
        a3, b3 = pairs[2]
        for _ in range(50):
            if b3.stats.rejected("video") >= 1 and b3.stats.rejected("audio") >= 10:
                break
            await asyncio.sleep(0.1)
        for a, b in good:
            for side in (a, b):
                assert side.stats.rejected("video") == 0 and side.stats.rejected("audio") == 0
        for side in (a3, b3):
            assert side.stats.decrypted("video") == 0 and side.stats.decrypted("audio") == 0
            assert side.stats.rejected("video", "auth_failed") >= 1
            assert side.video_sink.frames == 0 and side.audio_sink.frames == 0
    finally:
        await close(*(s for pair in pairs for s in pair))
