"""Speech across the lab's link at 5 % loss: Hotline's audio path against aiortc's, PESQ-WB.

The shortened form of ``bench.bench_audio_loss --lab`` (docs/performance.md): one call per
path, the ends as processes in two hosts, 60 ± 10 ms and 5 % random loss each way on
alpha's link, a shorter clip of alsa-utils' speech, one copy of it scored per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hotline.media import speech
from tests.conftest import require
from tests.netlab import Impairment, Lab
from tests.netlab.audio import lab_audio_call

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LOSSY = Impairment(delay_ms=60, jitter_ms=10, loss=0.05)
#: three of the eight clips (~5.6 s with the silence around them): long enough for PESQ
CLIPS = speech.ALSA_CLIPS[:3]
#: the least Hotline must score above the bare path; see the spread measured in
#: docs/performance.md (the two modes' ranges at 5 % on the lab are far apart)
MARGIN = 1.5


async def test_hotline_speech_beats_bare_aiortc_at_5_percent_loss(
    netlab: Lab, tmp_path: Path
) -> None:
    require(speech.unavailable() is None, speech.unavailable() or "")
    clip = speech.alsa_speech(names=CLIPS)
    assert clip is not None
    netlab.add_host("alpha")
    netlab.add_host("bravo")
    scores: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    starved: list[dict[str, Any]] = []
    for mode in ("aiortc", "hotline", "hotline"):
        if mode in scores and not starved:
            break
        r = await lab_audio_call(
            netlab, tmp_path / f"{mode}{len(starved)}", LOSSY, mode=mode, clip=clip, warmup=2.0
        )
        values = speech.score_copies(r["pcm"], clip, 1)
        assert len(values) == 1, (mode, r["captured_s"])
        scores[mode] = values[0]
        results[mode] = {k: r[k] for k in ("loss", "gap_ms", "path", "elapsed_s")}
        assert r["loss"] > 0.02, results  # the link really dropped packets
        # The shared host starving the receiving process (its event loop stalled: the path
        # counts it) is not the link; such a call is run once more, and said so
        starved = [results[mode]] if mode == "hotline" and r["path"]["stalls"] else []
        if starved:
            print("Hotline's receiver starved by the host, once more:", starved)
    print(scores, results)
    assert scores["hotline"] >= scores["aiortc"] + MARGIN, (scores, results)
    # Hotline's path filled every hole (FEC, RED, concealment); aiortc's left silence
    assert results["hotline"]["gap_ms"] == 0, results
    assert results["aiortc"]["gap_ms"] > 0, results
