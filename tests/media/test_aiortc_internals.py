"""Canary: fails loudly when the aiortc/aioice internals that media.aiortc_patch relies on move.

If this fails after an upgrade, do not relax it: re-read aiortc's rtcrtpsender.py,
rtcrtpreceiver.py and codecs/, adapt aiortc_patch.py, then update the pin.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from importlib.metadata import version

import aioice.ice
import aiortc
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import av
import pytest
from aiortc.codecs import get_capabilities
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from hotline.errors import AiortcIncompatible, CodecRefused
from hotline.media import aiortc_patch, video_guard
from hotline.media.sources import SyntheticVideoTrack
from hotline.media.stats import MediaCryptoStats
from tests.media.aesgcm_crypto import crypto_pair

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


def test_pinned_versions() -> None:
    assert version("aiortc") == aiortc.__version__ == aiortc_patch.AIORTC_VERSION == "1.16.0"
    assert version("aioice") == aiortc_patch.AIOICE_VERSION


def test_every_relied_on_internal_is_where_it_was() -> None:
    assert aiortc_patch.check_internals() == []


def test_install_patches_the_seams_and_is_idempotent() -> None:
    aiortc_patch.install()
    aiortc_patch.install()
    assert aiortc.rtcrtpsender.get_encoder is aiortc_patch.protected_encoder
    assert aiortc.rtcrtpreceiver.get_decoder is aiortc_patch.protected_decoder
    assert aiortc.rtcrtpreceiver.RTCRtpReceiver.receive is aiortc_patch._receive
    assert aiortc.rtcrtpsender.RTCRtpSender.send is aiortc_patch._send
    assert aioice.ice.get_host_addresses is aiortc_patch._get_host_addresses
    # the originals are kept and still are aiortc's own
    assert aiortc_patch._ORIGINAL["get_encoder"] is aiortc.codecs.get_encoder
    assert aiortc_patch._ORIGINAL["get_decoder"] is aiortc.codecs.get_decoder


def test_install_refuses_other_aiortc_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    monkeypatch.setattr(aiortc_patch, "_installed", False)
    with pytest.raises(AiortcIncompatible, match=r"1\.17\.0"):
        aiortc_patch.install()
    assert aiortc_patch.check_internals() != []


def test_vp8_packetizer_never_reads_payload_bytes() -> None:
    # whole-frame ciphertext must survive aiortc's VP8 packetize -> depayload unchanged
    for size in (1, 100, 1296, 1297, 5000, 60000):
        data = os.urandom(size)
        payloads = Vp8Encoder._packetize(data, picture_id=1234)
        assert b"".join(vp8_depayload(p) for p in payloads) == data


def test_only_vp8_and_opus_are_accepted() -> None:
    capabilities = {
        c.mimeType.lower() for k in ("audio", "video") for c in get_capabilities(k).codecs
    }
    # everything aiortc can negotiate but VP8, Opus (also as RED blocks) and RTX is refused
    refused = capabilities - {"video/vp8", "audio/opus", "audio/red", "video/rtx"}
    assert {"video/h264", "audio/pcmu", "audio/pcma", "audio/g722"} <= refused
    for mime in refused:
        codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000)
        with pytest.raises(CodecRefused):
            aiortc_patch.protected_encoder(codec)


async def test_decoder_worker_survives_refused_frames_and_keeps_decoding() -> None:
    """Drive aiortc's own decoder_worker thread (patched) with bad and good frames."""
    aiortc_patch.install()
    sender_crypto, receiver_crypto = crypto_pair()
    stats = MediaCryptoStats()
    loop = asyncio.get_running_loop()
    input_q: queue.Queue[object] = queue.Queue()
    output_q: asyncio.Queue[object] = asyncio.Queue()
    decode_error = threading.Event()
    aiortc_patch._queue_bindings[output_q] = aiortc_patch._Binding(receiver_crypto, stats)

    track = SyntheticVideoTrack("canary", 320, 180, 30)
    encoder = Vp8Encoder()
    frames = []
    for _ in range(3):
        payloads, _ts = encoder.encode(await track.recv(), force_keyframe=True)
        encoded = b"".join(vp8_depayload(p) for p in payloads)
        frames.append(sender_crypto.protect("video", encoded))
    track.stop()

    worker = threading.Thread(
        target=aiortc.rtcrtpreceiver.decoder_worker,
        args=(loop, input_q, output_q, decode_error),
    )
    worker.start()
    tampered = bytearray(frames[0])
    tampered[20] ^= 1
    input_q.put((VP8, JitterFrame(bytes(tampered), 0)))  # refused: FrameRejected
    input_q.put((VP8, JitterFrame(b"\x00" * 40, 1)))  # refused again (throttled: no 2nd PLI)
    input_q.put((VP8, JitterFrame(frames[1], 2)))  # good key frame: decoded
    input_q.put((VP8, JitterFrame(frames[2], 3)))
    input_q.put(None)
    out = [await asyncio.wait_for(output_q.get(), 10) for _ in range(3)]
    await asyncio.to_thread(worker.join, 10)
    assert not worker.is_alive()
    assert decode_error.is_set()  # aiortc flags it: the receiver sends a PLI
    assert [type(f) for f in out] == [av.VideoFrame, av.VideoFrame, type(None)]
    assert stats.rejected("video", "auth_failed") == 1
    assert stats.rejected("video", "malformed") == 1
    assert stats.keyframe_requests("video") == 1
    assert stats.decrypted("video") == 2


def test_refused_frame_is_an_ffmpeg_error() -> None:
    # aiortc's decoder_worker only catches av.FFmpegError; anything else ends the thread
    err = aiortc_patch.FrameRejected("video", "auth_failed")
    assert isinstance(err, av.FFmpegError) and isinstance(err, av.error.InvalidDataError)
    assert "auth_failed" in str(err)


def test_decoder_without_binding_shows_nothing() -> None:
    aiortc_patch.install()
    decoder = aiortc_patch.protected_decoder(OPUS)  # not in a bound decoder thread
    before = aiortc_patch.unbound_stats().rejected("audio", "unbound")
    assert decoder.decode(JitterFrame(b"\xfc" * 40, 0)) == []
    assert aiortc_patch.unbound_stats().rejected("audio", "unbound") == before + 1
    refusing = aiortc_patch.protected_decoder(H264)
    assert refusing.decode(JitterFrame(b"\x00\x00\x00\x01\x67", 0)) == []


async def test_decoder_worker_withholds_deltas_after_a_gap_until_a_key_frame() -> None:
    """aiortc's own decoder thread, fed by the video guard: no delta after a gap is decoded."""
    aiortc_patch.install()
    sender_crypto, receiver_crypto = crypto_pair()
    stats = MediaCryptoStats()
    loop = asyncio.get_running_loop()
    input_q: queue.Queue[object] = queue.Queue()
    output_q: asyncio.Queue[object] = asyncio.Queue()
    decode_error = threading.Event()
    aiortc_patch._queue_bindings[output_q] = aiortc_patch._Binding(receiver_crypto, stats)
    aiortc_patch._queue_guards[output_q] = aiortc_patch._VideoGuard(stats)

    track = SyntheticVideoTrack("canary", 320, 180, 30)
    encoder = Vp8Encoder()
    kinds = [True, False, False, False, False, True, False]  # key frames
    frames = []
    for i, key in enumerate(kinds):
        payloads, _ts = encoder.encode(await track.recv(), force_keyframe=key)
        encoded = b"".join(vp8_depayload(p) for p in payloads)
        assert video_guard.is_vp8_keyframe(encoded) == key
        frames.append(
            video_guard.AssembledFrame(
                data=sender_crypto.protect("video", encoded),
                timestamp=i * 3000,
                first_seq=i,
                last_seq=i,
                picture_id=i,
                discontinuous=i == 3,  # frame 2 was lost before frame 3
            )
        )
    track.stop()
    worker = threading.Thread(
        target=aiortc.rtcrtpreceiver.decoder_worker,
        args=(loop, input_q, output_q, decode_error),
    )
    worker.start()
    input_q.put((VP8, aiortc_patch._GuardedFrames([frames[0], frames[1]])))
    input_q.put((VP8, aiortc_patch._GuardedFrames([frames[3], frames[4]])))  # withheld
    input_q.put((VP8, aiortc_patch._GuardedFrames([frames[5]])))
    input_q.put((VP8, aiortc_patch._GuardedFrames([frames[6]])))
    input_q.put(None)
    out = [await asyncio.wait_for(output_q.get(), 10) for _ in range(5)]
    await asyncio.to_thread(worker.join, 10)
    assert [type(f) for f in out] == [av.VideoFrame] * 4 + [type(None)]  # 0, 1, 5, 6
    assert decode_error.is_set()  # the receiver sends a PLI with its next packet
    guard = stats.video_guard()
    assert guard["frames_withheld"] == 2 and guard["resumed_on_keyframe"] == 1
    assert guard["keyframe_requests"] == 1 and stats.keyframe_requests("video") == 1
    assert stats.decrypted("video") == 6 and stats.rejected("video") == 0


async def test_a_bound_video_receiver_runs_the_guard_and_an_unguarded_one_does_not() -> None:
    from tests.media.harness import close, connect, make_side

    ca, cb = crypto_pair()
    a, b = make_side("a", ca), make_side("b", cb, video_guard=False)
    try:
        await connect(a, b)
        assert await a.video_sink.wait_for(3, timeout=15)
        assert await b.video_sink.wait_for(3, timeout=15)
        buffers = {}
        for side in (a, b):
            for t in side.pc.getTransceivers():
                if t.kind == "video":
                    buffers[side.name] = type(t.receiver._RTCRtpReceiver__jitter_buffer)
        assert buffers == {"a": aiortc_patch._GuardJitterBuffer, "b": JitterBuffer}
        assert a.stats.video_guard()["frames"] >= 3 and b.stats.video_guard() == {}
    finally:
        await close(a, b)
