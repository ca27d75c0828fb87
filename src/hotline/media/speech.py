"""Speech quality of received audio: PESQ-WB (ITU-T P.862.2) against a reference speech clip.

One implementation for the readiness checks (``check.probe``: the caller's looped-back clip)
and the audio bench (``bench.bench_audio_loss``: whole copies of a clip B played out).

- The reference speech is real recorded speech: the clips Debian's ``alsa-utils`` ships in
  ``/usr/share/sounds/alsa`` (48 kHz mono, "Front Left", "Front Center", ...). PESQ is
  calibrated on speech; synthetic signals score differently. Without the package there is
  no reference (``None``), and no score.
- Scoring needs ``numpy`` and ``pesq`` (PyPI, the ITU reference code; an sdist that builds
  with a C compiler): the optional extra ``quality``. Without them :func:`unavailable` says
  why, and nothing is scored: a check then records PESQ as not measured, never a guess.
- A capture is aligned with its reference by cross-correlation (FFT), both are resampled
  to 16 kHz, and P.862.2 scores them (MOS-LQO, 1.0–4.64; a signal against itself 4.64).
"""

from __future__ import annotations

import functools
import wave
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av

from hotline.media.sources import CHIRP_AMPLITUDE, chirp_samples

RATE = 48000
#: where Debian's ``alsa-utils`` keeps its recorded speech
ALSA = Path("/usr/share/sounds/alsa")
#: the recorded speech alsa-utils ships (Noise.wav left out), in this order
ALSA_CLIPS = (
    "Front_Left",
    "Front_Center",
    "Front_Right",
    "Side_Left",
    "Side_Right",
    "Rear_Left",
    "Rear_Center",
    "Rear_Right",
)
#: a shorter capture holds too little speech for P.862
MIN_SCORED_S = 1.5
#: the longest capture scored (a check window is at most 60 s; longer input is refused)
MAX_SCORED_S = 90.0
#: around each marker (a chirp) in a clip, what scoring mutes in both signals: the chirp is
#: not speech, and at full scale it would dominate P.862's level alignment
MARK_BEFORE_S, MARK_AFTER_S = 0.010, 0.060

_PESQ_MISSING = (
    "PESQ not measured: numpy and pesq are not installed (the optional extra "
    "'hotline[quality]', built with a C compiler)"
)
_SPEECH_MISSING = f"PESQ not measured: no reference speech ({ALSA} from alsa-utils is missing)"


def _read_wav(path: Path) -> array[int] | None:
    if not path.exists():
        return None
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            return None
        return array("h", w.readframes(w.getnframes()))


def alsa_speech(pad_s: float = 0.5, names: Sequence[str] = ALSA_CLIPS) -> array[int] | None:
    """alsa-utils' speech clips ``names`` joined (48 kHz mono s16), with ``pad_s`` of
    silence around; None when the package is not installed."""
    out: array[int] = array("h", bytes(2 * int(RATE * pad_s)))
    for name in names:
        pcm = _read_wav(ALSA / f"{name}.wav")
        if pcm is None:
            return None
        out.extend(pcm)
    out.frombytes(bytes(2 * int(RATE * pad_s)))
    return out


def pesq_missing() -> str | None:
    """Why PESQ cannot be scored here (None: it can)."""
    try:
        import numpy  # noqa: F401, PLC0415
        import pesq  # noqa: F401, PLC0415
    except ImportError:
        return _PESQ_MISSING
    return None


def speech_missing() -> str | None:
    """Why there is no reference speech here (None: there is)."""
    return None if alsa_speech(0.0, ALSA_CLIPS[:1]) is not None else _SPEECH_MISSING


def unavailable() -> str | None:
    """Why a PESQ score cannot be had on this machine (None: it can)."""
    return speech_missing() or pesq_missing()


def to16k(pcm: Any) -> Any:
    """48 kHz samples (any sequence of int16 values) as a float32 array at 16 kHz."""
    import numpy as np  # noqa: PLC0415

    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm))
    frame.planes[0].update(np.asarray(pcm, dtype=np.int16).tobytes())
    frame.sample_rate = RATE
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) / 32768.0


def pesq_wb(reference: Any, degraded: Any) -> float:
    """P.862.2 MOS-LQO of ``degraded`` against ``reference`` (aligned, 48 kHz int16 values).
    Raises ``pesq``'s errors (e.g. no utterance found) and ImportError without it."""
    from pesq import pesq  # noqa: PLC0415

    ref16, deg16 = to16k(reference), to16k(degraded)
    n = min(len(ref16), len(deg16))
    return float(pesq(16000, ref16[:n], deg16[:n], "wb"))


def _correlation(x: Any, y: Any) -> Any:
    """``c[k] = sum_i x[i + k] * y[i]`` for every k (FFT, zero-padded)."""
    import numpy as np  # noqa: PLC0415

    size = 1 << (len(x) + len(y)).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)


def score_copies(capture: Sequence[int], reference: Sequence[int], copies: int) -> list[float]:
    """PESQ-WB of each whole copy of ``reference`` found in ``capture`` (a capture of the
    clip played in a loop): the first copy is placed by cross-correlation within the first
    period, the next ones follow it."""
    import numpy as np  # noqa: PLC0415

    x = np.asarray(capture, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    n = len(y)
    if len(x) < n:
        return []
    corr = _correlation(x, y)
    start = int(np.argmax(corr[: min(len(x) - n, n) + 1]))
    scores = []
    for k in range(copies):
        s = start + k * n
        if s + n > len(x):
            break
        scores.append(pesq_wb(y, x[s : s + n]))
    return scores


def score_looped(capture: Sequence[int], clip: Sequence[int], marks: Sequence[int] = ()) -> float:
    """PESQ-WB of ``capture``, a stretch of any length of ``clip`` played in a loop starting
    anywhere in it: the clip's phase is found by circular cross-correlation, the reference is
    the looped clip from there, and ``marks`` (sample offsets of chirps in the clip) are
    muted in both. Raises ValueError for a capture too short to score."""
    import numpy as np  # noqa: PLC0415

    if len(capture) > MAX_SCORED_S * RATE:
        raise ValueError(f"{len(capture) / RATE:.0f} s of audio: at most {MAX_SCORED_S:g} s")
    x = np.asarray(capture, dtype=np.float64)
    period = len(clip)
    if len(x) < MIN_SCORED_S * RATE:
        raise ValueError(f"{len(x) / RATE:.1f} s of audio captured, {MIN_SCORED_S:g} s needed")
    looped = np.tile(np.asarray(clip, dtype=np.float64), len(x) // period + 2)
    corr = _correlation(looped, x)  # corr[k]: the capture against the loop from sample k
    phase = int(np.argmax(corr[:period]))
    ref = looped[phase : phase + len(x)].copy()
    before, after = int(MARK_BEFORE_S * RATE), int(MARK_AFTER_S * RATE)
    for mark in marks:
        at = (mark - phase) % period
        while at - before < len(x):
            lo, hi = max(0, at - before), min(len(x), at + after)
            ref[lo:hi] = 0.0
            x[lo:hi] = 0.0
            at += period
        if (mark - phase) % period >= period - after:  # a mark's tail at the very start
            hi = (mark - phase) % period + after - period
            ref[:hi], x[:hi] = 0.0, 0.0
    return pesq_wb(ref, x)


#: a readiness check's clip: "Front left", "Front right" (alsa-utils), 3 s, looped
CHECK_CLIP_WORDS = ("Front_Left", "Front_Right")
CHECK_CLIP_S = 3
#: the clip's speech is scaled to stay well under a chirp's detection threshold (half scale)
CHECK_SPEECH_GAIN = 0.6
#: silence before the first word: room for the chirp at sample 0
CHECK_LEAD_S = 0.12


@functools.cache
def check_clip() -> tuple[array[int], list[int]] | None:
    """What a readiness check's caller sends as audio, looped: :data:`CHECK_CLIP_S` whole
    seconds (a whole number of 20 ms frames) of real speech with the synthetic source's 30 ms
    chirp at sample 0, in the silence before the first word (the audio round trip, unambiguous
    up to one loop; scoring mutes it), and the chirp's offset; None without alsa-utils.
    Made once (do not change it)."""
    speech = alsa_speech(0.0, CHECK_CLIP_WORDS)
    if speech is None:
        return None
    n = CHECK_CLIP_S * RATE
    lead = int(CHECK_LEAD_S * RATE)
    out = [0.0] * n
    for i, value in enumerate(speech[: n - lead]):
        out[lead + i] = CHECK_SPEECH_GAIN * value / 32768
    for i, c in enumerate(chirp_samples(RATE)):
        out[i] += CHIRP_AMPLITUDE * c
    return array("h", (max(-32767, min(32767, round(s * 32767))) for s in out)), [0]
