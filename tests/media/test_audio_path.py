"""The audio receive path through the real SFrame crypto: decrypt first, then FEC decode."""

from __future__ import annotations

import array
import statistics

from hotline.errors import HotlineError
from hotline.media import opus
from hotline.media.audio_jitter import FRAME_SAMPLES
from hotline.media.audio_path import AudioReceivePath, AudioSteps, FecOpusEncoder, LossFeedback
from tests.media.harness import sframe_pair
from tests.media.test_opus import N, snr_db, speechlike

FRAME_S = FRAME_SAMPLES / 48000


def _packets() -> list[bytes]:
    enc = opus.OpusEncoder(channels=1, bitrate=64000, packet_loss=10)
    pcm = speechlike(2.0)
    return [enc.encode(pcm[2 * i * N : 2 * (i + 1) * N], N) for i in range(len(pcm) // (2 * N))]


def _run(
    lost: set[int], tampered: set[int]
) -> tuple[list[tuple[str, bytes]], AudioReceivePath, int]:
    """Protect the Opus packets at A, lose/tamper some, play them out at B: B's output."""
    a, b = sframe_pair()
    protected = [a.protect("audio", p) for p in _packets()]
    now = 0.0
    path = AudioReceivePath(lambda data: b.unprotect("audio", data), lambda: now)
    refused = 0
    out: list[tuple[str, bytes]] = []
    path.taps.append(lambda pcm, samples, action: out.append((action, pcm)))
    for i, sent in enumerate(protected):
        now = i * FRAME_S + 0.03
        payload = sent[:-1] + bytes([sent[-1] ^ 1]) if i in tampered else sent
        if i not in lost:
            before = path.counters["refused"]
            path.on_packet(i, i * FRAME_SAMPLES, payload, None)
            refused += path.counters["refused"] - before
        steps = path.pull()
        if steps:
            path.decode(AudioSteps(steps))
    return out, path, refused


def test_a_lost_packet_is_rebuilt_from_the_next_decrypted_packet() -> None:
    dec = opus.OpusDecoder(channels=2)
    reference = [dec.decode(p) for p in _packets()]
    lost = [30, 50, 70]
    got, path, _ = _run(set(lost), set())
    assert path.buffer.counters["fec"] == 3 and path.buffer.counters["plc"] == 0
    assert path.counters["refused"] == 0  # each packet decrypted once: no replay refusals
    rebuilt = [pcm for action, pcm in got if action == "fec"]
    fec_snr = statistics.median(
        snr_db(reference[i], pcm) for i, pcm in zip(lost, rebuilt, strict=True)
    )
    assert fec_snr > 10, fec_snr


def test_a_tampered_packet_is_refused_before_buffering_and_concealed() -> None:
    _, path, refused = _run(set(), {40})
    assert refused == 1 and path.counters["refused"] == 1
    # refused = missing: its frame comes from the next packet's FEC, never from its bytes
    assert path.buffer.counters["fec"] == 1
    assert path.buffer.counters["played"] + 2 * path.buffer.counters["merged"] >= 90


def test_encoder_follows_the_reported_loss_and_protects_each_packet() -> None:
    import av

    feedback = LossFeedback()
    assert feedback.expected_loss_percent() == 5  # before any report
    for _ in range(10):
        feedback.on_report(0)  # no loss reported
    assert feedback.expected_loss_percent() == 2  # the floor
    feedback.on_report(int(0.1 * 256))  # 10 % lost: rises fast
    assert feedback.expected_loss_percent() >= 7
    protected: list[bytes] = []

    def protect(packet: bytes) -> bytes:
        protected.append(packet)
        return b"P" + packet

    enc = FecOpusEncoder(feedback, protect)
    frame = av.AudioFrame(format="s16", layout="mono", samples=N)
    frame.planes[0].update(speechlike(0.02))
    frame.sample_rate = 48000
    frame.pts = 0
    payloads, timestamp = enc.encode(frame)
    assert timestamp == 0 and len(payloads) == 1 and payloads[0] == b"P" + protected[0]
    assert enc._opus.packet_loss == feedback.expected_loss_percent()

    def refuse(packet: bytes) -> bytes:
        raise HotlineError("no key", reason="no_media_key")

    assert FecOpusEncoder(feedback, refuse).encode(frame) == ([], 0)
    assert array.array("h", speechlike(0.02))  # the signal itself is not silent
