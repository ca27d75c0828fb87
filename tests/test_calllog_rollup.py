"""Rollups of readiness checks in the call log: daily and monthly summaries replace old
check entries, real calls stay, and the hash chain still verifies (and catches pruning
that no signed summary claims)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hotline.calllog import CallLog
from hotline.calllog.rollup import Retention, history_rows, roll_up
from hotline.errors import BadLogEntry
from hotline.keys import SigningKey

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC
HOUR = 3600


def check_call(log: CallLog, n: int, t: float, verdict: str = "green") -> None:
    call = f"call-{n}"
    facts = {"line_id": "east-west", "charter_version": 1, "target": "bravo"}
    log.append(call, "ring", {**facts, "direction": "out", "purpose": "check"}, t)
    log.append(call, "hangup", {"reason": "readiness check done"}, t + 4)
    result = {"peer": "bravo", "by": "alpha", "verdict": verdict, "setup_ms": 900 + n % 7}
    log.append(call, "check_result", {**result, "time": int(t + 5)}, t + 5)


def real_call(log: CallLog, t: float) -> None:
    facts = {"line_id": "east-west", "charter_version": 1, "target": "bravo"}
    log.append("real-1", "ring", {**facts, "direction": "out", "purpose": "call"}, t)
    log.append("real-1", "hangup", {"reason": "done"}, t + 600)


def test_old_checks_roll_up_into_signed_daily_then_monthly_summaries(fast_path: Path) -> None:
    key = SigningKey.generate()
    log = CallLog.open(fast_path / "calllog.sqlite", "alpha", key)
    hours = 24 * 120  # four months of hourly checks, a real call in the middle
    for n in range(hours):
        check_call(log, n, T0 + n * HOUR, "red" if n == 30 else "green")
        if n == 24 * 40:
            real_call(log, T0 + n * HOUR + 60)
    now = T0 + hours * HOUR
    written = roll_up(log, now, Retention(days=7, months=2))
    assert written, "summaries are written"
    report = log.verify(key.public)
    assert report.pruned > 0 and report.entries == hours * 3 + 2 + len(written)
    events = [e.event for e in log.entries()]
    assert events.count("check_result") == 24 * 7  # the last seven whole days, one by one
    rollups = [e for e in log.entries() if e.event == "check_rollup"]
    rows = [r for e in rollups for r in history_rows(e)]
    kinds = {str(r["kind"]) for r in rows}
    assert kinds == {"day", "month"}
    month = next(r for r in rows if r["kind"] == "month" and r["time"] == T0)
    assert month["checks"] == 31 * 24 and month["verdict"] == "red"
    assert month["verdicts"] == {"green": 31 * 24 - 1, "amber": 0, "red": 1}
    setup = month["setup_ms"]
    assert isinstance(setup, dict) and setup["min"] == 900 and setup["max"] == 906
    assert len(log.entries("real-1")) == 2  # a real call is never rolled up
    # every check is accounted for, in summaries or one by one
    counted = sum(int(str(r["checks"])) for r in rows)
    assert counted + 24 * 7 == hours
    # again at the same time: nothing more to do; the store stays the same size
    assert roll_up(log, now, Retention(days=7, months=2)) == []
    log.close()


def test_pruning_that_no_summary_claims_is_caught(fast_path: Path) -> None:
    key = SigningKey.generate()
    path = fast_path / "calllog.sqlite"
    log = CallLog.open(path, "alpha", key)
    for n in range(24 * 10):
        check_call(log, n, T0 + n * HOUR)
    real_call(log, T0 + 24 * 10 * HOUR)
    check_call(log, 9999, T0 + 24 * 10 * HOUR + 900)
    roll_up(log, T0 + 24 * 12 * HOUR, Retention(days=7, months=3))
    log.verify(key.public)
    log.close()
    # someone removes the real call and joins the chain as a rollup would
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT idx, prev_hash, entry_hash, signature FROM entries WHERE call_id = 'real-1'"
        " ORDER BY idx"
    ).fetchall()
    first, last = rows[0], rows[-1]
    conn.execute("DELETE FROM entries WHERE call_id = 'real-1'")
    conn.execute(
        "INSERT INTO pruned VALUES (?, ?, ?, ?, ?)", (first[0], last[0], first[1], last[2], last[3])
    )
    conn.commit()
    conn.close()
    with CallLog.open(path) as tampered, pytest.raises(BadLogEntry) as caught:
        tampered.verify(key.public)
    assert caught.value.reason == "unclaimed_pruning"
