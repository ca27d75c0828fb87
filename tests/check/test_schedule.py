"""The readiness schedule's watchdog at the called end (pure: the clock is passed in)."""

from __future__ import annotations

import random

from hotline.check.metrics import AMBER, GREEN, RED
from hotline.check.schedule import JITTER, ReadinessSchedule

IDS = ["alpha", "bravo", "charlie"]


def schedule() -> ReadinessSchedule:
    return ReadinessSchedule("bravo", 100.0, rng=random.Random(1))


def test_the_lower_id_calls_and_the_higher_one_watches() -> None:
    s = schedule()
    assert s.peers(IDS) == ["charlie"] and s.callers(IDS) == ["alpha"]
    assert s.missed_after_s == 100 * (1 + JITTER) + 25 + 10


def test_a_check_that_does_not_come_is_alarmed_once_per_interval() -> None:
    s = schedule()
    assert s.overdue(IDS, 0.0, 1000.0) == []  # the wait starts now
    assert s.overdue(IDS, s.missed_after_s - 0.1, 1100.0) == []
    [alarm] = s.overdue(IDS, s.missed_after_s, 1200.0)
    assert alarm.peer == "alpha" and alarm.count == 1 and alarm.since == 1200.0
    assert "no readiness check from alpha for 145 s" in alarm.reason
    assert s.overdue(IDS, s.missed_after_s + 99, 1300.0) == []  # not again at once
    [again] = s.overdue(IDS, s.missed_after_s + 100, 1400.0)
    assert again is alarm and again.count == 2 and "for 245 s" in again.reason
    # the caller's next result closes it (green or amber), or keeps it open (red)
    assert s.checked_by("alpha", 300.0, RED, "loss 30 %", 1500.0) is alarm
    assert alarm.count == 3 and alarm.reason == "loss 30 %"
    assert s.checked_by("alpha", 301.0, AMBER, "", 1501.0) is None
    assert s.alarms == {}
    assert s.overdue(IDS, 301.0 + s.missed_after_s - 1, 1600.0) == []


def test_a_call_here_is_not_a_missed_check() -> None:
    s = schedule()
    s.checked_by("alpha", 0.0, GREEN, "", 0.0)
    busy_until = s.missed_after_s + 50
    t = 0.0
    while t < busy_until:  # a long call: the caller's checks would be declined busy
        s.waiting(IDS, t)
        t += 1.0
    assert s.overdue(IDS, t, 0.0) == []  # a quarter interval after the call at the earliest
    assert s.overdue(IDS, t + 23, 0.0) == []
    [alarm] = s.overdue(IDS, t + 25, 0.0)
    assert alarm.peer == "alpha" and f"for {round(t + 25)} s" in alarm.reason


def test_a_peer_this_terminal_calls_cannot_close_its_alarm() -> None:
    s = schedule()  # bravo calls charlie
    s.done("charlie", 0.0, RED, "no media", 0.0)
    assert "charlie" in s.alarms
    assert s.checked_by("charlie", 1.0, GREEN, "", 1.0) is None  # a manual check from charlie
    assert "charlie" in s.alarms  # only bravo's own next check closes it
    s.done("charlie", 2.0, GREEN, "", 2.0)
    assert s.alarms == {}
