"""Readiness-check figures (pure): the E-model, the verdict, live warnings, the schedule."""

from __future__ import annotations

import random

import pytest

from hotline.charter.model import CheckThresholds
from hotline.check.metrics import Measurement, e_model, live_warnings, verdict
from hotline.check.schedule import ReadinessSchedule


def test_e_model_matches_g107_reference_points() -> None:
    r, mos = e_model(0, 0)
    assert r == pytest.approx(93.2) and mos == pytest.approx(4.41, abs=0.01)
    # delay costs little below 177 ms, a lot above (G.107's Id)
    assert e_model(150, 0)[0] == pytest.approx(93.2 - 3.6)
    assert e_model(300, 0)[0] < e_model(177, 0)[0] - 15
    # loss: Ie,eff = 95 * Ppl / (Ppl + Bpl), Bpl 20 for Opus
    assert e_model(0, 0.05)[0] == pytest.approx(93.2 - 95 * 5 / 25)
    assert e_model(0, 1.0)[1] < 1.2  # everything lost: "nearly all users dissatisfied"


def good(**overrides: object) -> Measurement:
    m = Measurement(
        peer="bravo", ok=True, setup_ms=900, rtt_ms=40, one_way_ms=20, loss_permille=0,
        jitter_ms=3, video_fps=29, audio_fps=50, security_code_match=True,
        charter_version_match=True,
    )  # fmt: skip
    for key, value in overrides.items():
        setattr(m, key, value)
    return verdict(m)


def test_verdicts() -> None:
    assert good().verdict == "green" and good().reasons == []
    assert good(one_way_ms=200).verdict == "amber"
    assert good(one_way_ms=450).verdict == "red"
    assert good(loss_permille=20).verdict == "amber"
    assert good(loss_permille=80).verdict == "red"
    assert good(security_code_match=False).verdict == "red"
    assert good(charter_version_match=False).verdict == "red"
    assert good(corrupt_shown=1).verdict == "red"
    assert good(audio_fps=20).verdict == "amber"
    missed = verdict(Measurement(peer="bravo", failure="bravo is not online"))
    assert missed.verdict == "red" and missed.reasons == ["bravo is not online"]
    assert good().to_value()["mos_x100"] == 440  # 20 ms one way, no loss


def test_live_warnings() -> None:
    assert live_warnings({"audio": {"jitter_ms": 5, "rtt_ms": 80, "remote_fraction_lost": 0}}) == []
    warned = live_warnings(
        {"audio": {"jitter_ms": 45, "rtt_ms": 500}, "video": {"remote_fraction_lost": 0.06}}
    )
    assert warned == ["audio jitter 45 ms > 30 ms", "round trip 500 ms > 400 ms",
                      "video loss 6.0 % > 3 %"]  # fmt: skip


def test_schedule_lower_id_calls_with_jitter_and_alarms() -> None:
    sched = ReadinessSchedule("alpha", 100.0, random.Random(1))
    ids = ["alpha", "bravo", "aardvark"]
    assert sched.peers(ids) == ["bravo"]  # aardvark has the lower id: it calls alpha
    assert sched.next_due(ids, 0.0) is None
    first = sched.due["bravo"]
    assert 2.0 <= first <= 25.0
    assert sched.next_due(ids, first) == "bravo"
    assert sched.done("bravo", first, "green", "", 1.0) is None
    assert 90 <= sched.due["bravo"] - first <= 110
    alarm = sched.done("bravo", 200.0, "red", "bravo is not online", 2.0)
    assert alarm is not None and alarm.count == 1 and alarm.since == 2.0
    again = sched.done("bravo", 300.0, "red", "no answer", 3.0)
    assert again is alarm and again.count == 2 and again.reason == "no answer"
    assert sched.done("bravo", 400.0, "amber", "", 4.0) is None and sched.alarms == {}
    sched.postpone("bravo", 500.0, 60)
    assert sched.due["bravo"] == 560.0


def test_the_policy_thresholds_move_the_verdict_and_the_live_warnings() -> None:
    strict = CheckThresholds(green_one_way_ms=15, amber_one_way_ms=18, live_jitter_ms=4)
    m = verdict(good(), strict)  # 20 ms one way: red under these limits, green by default
    assert good().verdict == "green"
    assert m.verdict == "red" and m.reasons == ["one-way delay 20 ms > 18 ms"]
    assert verdict(good(one_way_ms=16), strict).verdict == "amber"
    rtp = {"audio": {"jitter_ms": 5.0, "rtt_ms": 80.0}}
    assert live_warnings(rtp) == []
    assert live_warnings(rtp, strict) == ["audio jitter 5 ms > 4 ms"]
    lossy = {"video": {"remote_fraction_lost": 0.02}}
    assert live_warnings(lossy) == []
    assert live_warnings(lossy, CheckThresholds(live_loss_permille=10)) == [
        "video loss 2.0 % > 1 %"
    ]


def test_pesq_counts_when_measured() -> None:
    assert good(pesq_x100=None).verdict == "green"  # not measured: not judged
    assert good(pesq_x100=400).verdict == "green"
    amber = good(pesq_x100=320)
    assert amber.verdict == "amber" and amber.reasons == ["PESQ 3.20 < 3.50"]
    assert good(pesq_x100=200).verdict == "red"
    assert verdict(good(pesq_x100=320), CheckThresholds(green_pesq_x100=300)).verdict == "green"
