"""The libopus binding: in-band FEC rebuilds a lost frame far better than PLC; encoder CTLs."""

from __future__ import annotations

import array
import math
import statistics

import pytest

from hotline.errors import OpusDecodeError
from hotline.media import opus

N = 960  # 20 ms at 48 kHz


def speechlike(seconds: float) -> bytes:
    """Voiced harmonics with a moving pitch and a syllable-rate envelope (mono s16)."""
    out = array.array("h")
    for i in range(int(opus.RATE * seconds)):
        t = i / opus.RATE
        f0 = 140 + 40 * math.sin(2 * math.pi * 0.7 * t)
        env = 0.5 + 0.5 * math.sin(2 * math.pi * 3 * t)
        out.append(
            int(7000 * env * sum(math.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 8)))
        )
    return out.tobytes()


def snr_db(ref: bytes, got: bytes) -> float:
    x = array.array("h", ref)[0::2]
    y = array.array("h", got)[0::2]
    signal = sum(v * v for v in x)
    noise = sum((u - v) ** 2 for u, v in zip(x, y, strict=True)) + 1e-9
    return 10 * math.log10(signal / noise)


def test_fec_rebuilds_a_lost_frame_from_the_next_packet() -> None:
    enc = opus.OpusEncoder(channels=1, bitrate=32000, packet_loss=10)
    pcm = speechlike(3.0)
    packets = [enc.encode(pcm[2 * i * N : 2 * (i + 1) * N], N) for i in range(len(pcm) // (2 * N))]
    lost = set(range(20, 140, 10))

    def decode(mode: str) -> list[bytes]:
        dec = opus.OpusDecoder(channels=2)
        out = []
        for i, packet in enumerate(packets):
            if mode != "clean" and i in lost:
                out.append(dec.decode_fec(packets[i + 1], N) if mode == "fec" else dec.conceal(N))
            else:
                out.append(dec.decode(packet))
        return out

    clean, fec, plc = decode("clean"), decode("fec"), decode("plc")
    assert all(len(f) == N * 4 for f in fec + plc)
    fec_snr = statistics.median(snr_db(clean[i], fec[i]) for i in lost)
    plc_snr = statistics.median(snr_db(clean[i], plc[i]) for i in lost)
    assert fec_snr > 12.0, fec_snr
    assert fec_snr > plc_snr + 10.0, (fec_snr, plc_snr)
    # the frames after a loss decode normally either way
    assert snr_db(clean[25], fec[25]) > 10


def test_encoder_settings_read_back_and_follow_the_expected_loss() -> None:
    enc = opus.OpusEncoder(channels=1, bitrate=32000, packet_loss=0)
    assert enc.inband_fec and enc.packet_loss == 0 and enc.bitrate == 32000
    enc.set_packet_loss(7)
    assert enc.packet_loss == 7
    enc.set_packet_loss(250)
    assert enc.packet_loss == 100
    with pytest.raises(ValueError):
        enc.encode(b"\x00" * 10, N)


def test_malformed_packet_is_refused() -> None:
    dec = opus.OpusDecoder()
    with pytest.raises(OpusDecodeError):
        dec.decode(b"\xff\xff")  # code 3 with 63 frames of 20 ms: longer than 120 ms
    with pytest.raises(OpusDecodeError):
        dec.decode(b"")
    assert len(dec.conceal(N)) == N * 4  # still usable
