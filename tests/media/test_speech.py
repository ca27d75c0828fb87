"""PESQ-WB scoring (``hotline.media.speech``): the readiness checks' and the bench's one
implementation, on real speech (alsa-utils) with the ITU reference code (``pesq``)."""

from __future__ import annotations

import random
from array import array

import pytest

from hotline.call.aiortc_engine import CheckAudio
from hotline.media import speech
from hotline.media.sinks import CHIRP_THRESHOLD, AudioChirpSink
from hotline.media.sources import AUDIO_SAMPLES, ClipAudioTrack
from tests.conftest import require


def _scoring() -> tuple[array[int], list[int]]:
    missing = speech.unavailable()
    require(missing is None, missing or "")
    made = speech.check_clip()
    assert made is not None
    return made


def _looped(clip: array[int], start: int, n: int) -> array[int]:
    out = array("h")
    while len(out) < start + n:
        out.extend(clip)
    return out[start : start + n]


def test_the_check_clip_is_whole_frames_of_speech_with_one_chirp() -> None:
    require(speech.speech_missing() is None, "alsa-utils' speech clips are not installed")
    made = speech.check_clip()
    assert made is not None
    clip, marks = made
    assert len(clip) == speech.CHECK_CLIP_S * speech.RATE and len(clip) % AUDIO_SAMPLES == 0
    assert marks == [0]
    # only the chirp reaches the chirp detector's threshold: the speech stays well under it
    chirp = speech.RATE * 30 // 1000
    assert max(abs(v) for v in clip[:chirp]) >= CHIRP_THRESHOLD
    assert 4000 < max(abs(v) for v in clip[chirp:]) < CHIRP_THRESHOLD * 0.7


def test_the_clip_against_itself_scores_at_the_top_at_any_phase() -> None:
    clip, marks = _scoring()
    for start in (0, 12_345, 100_000):  # the capture begins anywhere in the loop
        capture = _looped(clip, start, 3 * speech.RATE)
        assert speech.score_looped(capture, clip, marks) > 4.5


def test_noise_and_lost_audio_score_low() -> None:
    clip, marks = _scoring()
    rng = random.Random(7)
    noise = array("h", (int(rng.gauss(0, 3000)) for _ in range(3 * speech.RATE)))
    assert speech.score_looped(noise, clip, marks) < 2.0
    # one 20 ms frame in five lost to silence, as a receive path with no concealment
    holed = _looped(clip, 20_000, 3 * speech.RATE)
    for i in range(0, len(holed), AUDIO_SAMPLES):
        if rng.random() < 0.2:
            holed[i : i + AUDIO_SAMPLES] = array("h", bytes(2 * AUDIO_SAMPLES))
    assert speech.score_looped(holed, clip, marks) < 2.5


def test_too_little_audio_is_not_scored() -> None:
    clip, marks = _scoring()
    with pytest.raises(ValueError, match="needed"):
        speech.score_looped(clip[: speech.RATE], clip, marks)


def test_whole_copies_are_scored_as_the_bench_does() -> None:
    require(speech.unavailable() is None, speech.unavailable() or "")
    reference = speech.alsa_speech()
    assert reference is not None
    capture = _looped(reference, 5_000, 3 * len(reference))  # two whole copies, and parts
    scores = speech.score_copies(capture, reference, 2)
    assert len(scores) == 2 and min(scores) > 4.5


async def test_a_checks_caller_sends_the_clip_and_times_its_chirps() -> None:
    audio = CheckAudio()
    if speech.speech_missing() is None:
        assert audio.missing is None and audio.clip == speech.check_clip()[0]  # type: ignore[index]
    else:  # the synthetic speech-like signal instead, and PESQ not scored
        assert audio.missing == speech.speech_missing()
    track = audio.track()
    assert isinstance(track, ClipAudioTrack)
    frames = [await track.recv() for _ in range(3)]
    assert len(audio.chirps_sent_ms) == 1  # the first frame holds the loop's chirp
    sink = AudioChirpSink()
    for frame in frames:
        sink.on_frame(frame, 1000)
    assert len(sink.chirps) == 1 and sink.chirps[0] < 100  # its onset, within its first 2 ms
    sent = audio.chirps_sent_ms[0]
    loop_ms = len(audio.clip) * 1000 // speech.RATE
    assert audio.round_trips_ms([sent + 250, sent - 5, sent + loop_ms + 1]) == [250]
    track.stop()
