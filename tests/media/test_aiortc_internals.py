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
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from hotline.errors import AiortcIncompatible, CodecRefused
from hotline.media import aiortc_patch
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
    # everything aiortc can negotiate but VP8, Opus and RTX is refused at the seam
    refused = capabilities - {"video/vp8", "audio/opus", "video/rtx"}
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
