"""Real E2EE audio calls over a lossy in-process link: Hotline's audio path keeps playing."""

from __future__ import annotations

import asyncio

import pytest

from hotline.media import engine
from hotline.media.link_model import LinkSpec
from hotline.media.sources import TONE_AMPLITUDE
from tests.media.audio_loss import longest_silence_ms, run_call

LOSSY = LinkSpec(delay_ms=60, jitter_ms=10, loss=0.05)


@pytest.mark.slow
def test_five_percent_loss_plays_without_gaps_and_recovers_with_fec() -> None:
    result = asyncio.run(run_call(LOSSY, audio_path=True, seconds=5.0, seed=3))
    pcm = result["pcm"]
    assert len(pcm) >= 48000 * 4  # played in real time: ~5 s of audio in 5 s
    # the tone never stops: nothing lost became silence (a 10 ms block under a tenth of it)
    threshold = int(TONE_AMPLITUDE * 32767 * 0.1)
    assert longest_silence_ms(pcm, threshold) <= 20, result["path"]
    path = result["path"]
    assert result["loss"] > 0.02
    assert path["fec"] > 0  # lost frames rebuilt from the next packet's FEC
    assert path["late"] == path["flushed"] == 0
    assert path["refused"] == 0
    assert path["target_delay_ms"] <= 80
    assert result["sent_fec_loss"] is not None and result["sent_fec_loss"] >= 2
    # one-way latency of what is played out (chirps; one clock): the 60 ms link + the stack
    latency = sorted(result["latency_ms"])
    assert len(latency) >= 3
    assert latency[len(latency) // 2] <= 60 + 80, latency


@pytest.mark.slow
def test_aiortc_audio_path_leaves_gaps_under_the_same_loss() -> None:
    """The baseline, so the test above shows a difference and not a lenient measure."""
    result = asyncio.run(run_call(LOSSY, audio_path=False, seconds=5.0, seed=3))
    threshold = int(TONE_AMPLITUDE * 32767 * 0.1)
    pcm = result["pcm"]
    # aiortc plays frames back to back as they are decoded (no gaps inserted): missing audio
    # shows as less audio than time passed, so count what was never played
    assert len(pcm) < 48000 * 5 * 0.93 or longest_silence_ms(pcm, threshold) >= 60


def test_offers_carry_opus_in_band_fec() -> None:
    async def offer() -> str:
        from hotline.media.stats import MediaCryptoStats
        from tests.media.harness import sframe_pair

        pc = engine.create_peer_connection(sframe_pair()[0], MediaCryptoStats())
        pc.addTransceiver("audio")
        engine.force_e2ee_codecs(pc)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        await pc.close()
        return sdp

    sdp = asyncio.run(offer())
    fmtp = [
        line for line in sdp.splitlines() if line.startswith("a=fmtp:") and "useinbandfec" in line
    ]
    assert fmtp and "useinbandfec=1" in fmtp[0] and "minptime=10" in fmtp[0]
