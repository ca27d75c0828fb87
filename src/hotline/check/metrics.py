"""Readiness-check measurements, the E-model and the verdict (pure: numbers in, verdict out).

A check is a real call of a few seconds; :class:`Measurement` is what the caller measured
of it (and what the callee reported). :func:`e_model` is ITU-T G.107's transmission rating
R, simplified for one codec (Opus, no equipment impairment at 0 % loss) from one-way delay
and packet loss, and its MOS. :func:`verdict` applies the thresholds (:class:`Thresholds`,
ITU-T G.114 for delay, signed in the charter's policy): green, amber or red, with every
reason.

Integers only in what is recorded (milliseconds, per-mille): the call log's canonical
encoding has no floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from hotline.charter.model import DEFAULT_CHECK_THRESHOLDS, CheckThresholds
from hotline.encoding import Value

GREEN, AMBER, RED = "green", "amber", "red"

#: G.107 defaults: R0 - Is (no echo, no quantisation beyond the codec)
R_DEFAULT = 93.2
#: Opus at speech bit rates: no equipment impairment without loss; loss robustness (Bpl)
IE_OPUS = 0.0
BPL_OPUS = 20.0


#: the limits come from the charter's policy (``policy.check_thresholds``), defaults
#: when the charter names none
Thresholds = CheckThresholds


@dataclass
class Measurement:
    """One readiness check, as the caller records it."""

    peer: str
    ok: bool = False  #: the call was set up, keyed, and carried media both ways
    failure: str | None = None  #: why not (missed: not online, not answered, no media…)
    setup_ms: int | None = None  #: dial → decrypted media both ways
    exchange_rtt_ms: int | None = None
    path: str | None = None  #: "host" or "relay" (the nominated ICE pair's local candidate)
    rtt_ms: int | None = None  #: RTCP round trip (audio, else video)
    one_way_ms: int | None = None  #: estimated as half the round trip
    #: our own video looped back by the callee: the round trip through both encoders,
    #: networks and jitter buffers, on our clock alone (median over the call)
    video_rtt_ms: int | None = None
    loss_permille: int | None = None  #: what the far end reports losing, worst of the kinds
    jitter_ms: int | None = None
    video_fps: int | None = None  #: received, lower of the two ends
    audio_fps: int | None = None
    frames_rejected: int = 0  #: SFrame refusals at either end
    longest_freeze_ms: int | None = None
    corrupt_shown: int = 0
    security_code_match: bool = False  #: both ends showed the same code for the same epoch
    charter_version_match: bool = False
    r_factor: int | None = None
    mos_x100: int | None = None
    #: our own chirps looped back by the callee: the audio round trip through both
    #: encoders, networks and jitter buffers, on our clock alone (median over the call)
    audio_rtt_ms: int | None = None
    #: PESQ-WB (ITU-T P.862.2) MOS-LQO x 100 of our reference speech looped back by the
    #: callee (both directions of the path), when measured
    pesq_x100: int | None = None
    #: why PESQ was not measured (no pesq/numpy, no reference speech, too little audio…)
    pesq_note: str | None = None
    verdict: str = RED
    reasons: list[str] = field(default_factory=list)

    def to_value(self) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for f in fields(self):  # shallow (asdict deep-copies): one per check, for years
            value = getattr(self, f.name)
            out[f.name] = list[Value](value) if isinstance(value, list) else value
        return out


def e_model(one_way_ms: float, loss_fraction: float) -> tuple[float, float]:
    """(R, MOS) of ITU-T G.107 for ``one_way_ms`` mouth-to-ear delay and random packet loss
    ``loss_fraction`` (0..1), with Opus' impairment factors."""
    d = max(0.0, one_way_ms)
    i_d = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ppl = max(0.0, min(1.0, loss_fraction)) * 100
    ie_eff = IE_OPUS + (95 - IE_OPUS) * ppl / (ppl + BPL_OPUS)
    r = max(0.0, min(100.0, R_DEFAULT - i_d - ie_eff))
    if r <= 0:
        return r, 1.0
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    return r, max(1.0, min(4.5, mos))


def verdict(m: Measurement, t: Thresholds | None = None) -> Measurement:
    """Fill ``m``'s E-model figures, verdict and reasons (and return it)."""
    t = t or DEFAULT_CHECK_THRESHOLDS
    reasons: list[str] = []
    if not m.ok:
        m.verdict = RED
        m.reasons = [m.failure or "the check did not complete"]
        return m
    level = GREEN

    def worse(to: str, why: str) -> None:
        nonlocal level
        reasons.append(why)
        if to == RED or (to == AMBER and level == GREEN):
            level = to

    if not m.security_code_match:
        worse(RED, "the two ends did not show the same security code")
    if not m.charter_version_match:
        worse(RED, "the two ends hold different charter versions")
    if m.frames_rejected:
        worse(AMBER, f"{m.frames_rejected} frames refused by the end-to-end encryption")
    if m.corrupt_shown:
        worse(RED, f"{m.corrupt_shown} corrupt video frames shown")
    if m.one_way_ms is not None:
        if m.one_way_ms > t.amber_one_way_ms:
            worse(RED, f"one-way delay {m.one_way_ms} ms > {t.amber_one_way_ms} ms")
        elif m.one_way_ms > t.green_one_way_ms:
            worse(AMBER, f"one-way delay {m.one_way_ms} ms > {t.green_one_way_ms} ms")
    if m.loss_permille is not None:
        pct = m.loss_permille / 10
        if m.loss_permille > t.amber_loss_permille:
            worse(RED, f"loss {pct:g} % > {t.amber_loss_permille / 10:g} %")
        elif m.loss_permille > t.green_loss_permille:
            worse(AMBER, f"loss {pct:g} % > {t.green_loss_permille / 10:g} %")
    if m.jitter_ms is not None and m.jitter_ms > t.green_jitter_ms:
        worse(AMBER, f"jitter {m.jitter_ms} ms > {t.green_jitter_ms} ms")
    if m.video_fps is not None and m.video_fps < t.min_video_fps:
        worse(AMBER, f"video {m.video_fps} frames/s < {t.min_video_fps}")
    if m.audio_fps is not None and m.audio_fps < t.min_audio_fps:
        worse(AMBER, f"audio {m.audio_fps} frames/s < {t.min_audio_fps}")
    if m.one_way_ms is not None:
        r, mos = e_model(m.one_way_ms, (m.loss_permille or 0) / 1000)
        m.r_factor, m.mos_x100 = round(r), round(mos * 100)
        if m.mos_x100 < t.amber_mos_x100:
            worse(RED, f"E-model MOS {mos:.2f} < {t.amber_mos_x100 / 100:.2f}")
        elif m.mos_x100 < t.green_mos_x100:
            worse(AMBER, f"E-model MOS {mos:.2f} < {t.green_mos_x100 / 100:.2f}")
    if m.pesq_x100 is not None:
        pesq = m.pesq_x100 / 100
        if m.pesq_x100 < t.amber_pesq_x100:
            worse(RED, f"PESQ {pesq:.2f} < {t.amber_pesq_x100 / 100:.2f}")
        elif m.pesq_x100 < t.green_pesq_x100:
            worse(AMBER, f"PESQ {pesq:.2f} < {t.green_pesq_x100 / 100:.2f}")
    m.verdict, m.reasons = level, reasons
    return m


def live_warnings(rtp: dict[str, dict[str, float]], t: CheckThresholds | None = None) -> list[str]:
    """What is wrong with the path to one peer now, from its RTP statistics by media kind
    (``jitter_ms``, ``rtt_ms``, ``remote_fraction_lost``, as ``media.stats`` digests them),
    against the policy's ``live_*`` limits."""
    t = t or DEFAULT_CHECK_THRESHOLDS
    max_jitter, max_rtt, max_loss = t.live_jitter_ms, t.live_rtt_ms, t.live_loss_permille / 1000
    out: list[str] = []
    for kind in ("audio", "video"):
        s = rtp.get(kind) or {}
        jitter, rtt, lost = s.get("jitter_ms"), s.get("rtt_ms"), s.get("remote_fraction_lost")
        if kind == "audio" and jitter is not None and jitter > max_jitter:
            out.append(f"audio jitter {jitter:.0f} ms > {max_jitter:g} ms")
        if rtt is not None and rtt > max_rtt and not any("round trip" in w for w in out):
            out.append(f"round trip {rtt:.0f} ms > {max_rtt:g} ms")
        if lost is not None and lost > max_loss:
            out.append(f"{kind} loss {lost * 100:.1f} % > {max_loss * 100:g} %")
    return out
