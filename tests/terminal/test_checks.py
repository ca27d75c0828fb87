"""Readiness checks between terminal processes: a real call with purpose "check", answered
by the terminal itself, measured, recorded in both call logs; on the charter's schedule,
and alarmed (with the operator's hook) when the other end is gone."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from hotline.calllog import CallLog, log_path
from hotline.charter import Policy, Role
from hotline.encoding import decode
from hotline.localline import LocalLine
from hotline.media import speech
from tests.charters import SPEECH_UNJUDGED
from tests.terminal.test_calls import call_of, hotline_cli, media_flows, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SITES = {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]}
BOTH = [("alpha", "bravo"), ("bravo", "alpha")]


def log_events(line: LocalLine, tid: str, event: str) -> list[Any]:
    log = CallLog.open(log_path(line.terminal_dir(tid)))
    try:
        return [decode(e.payload_bytes) for e in log.entries() if e.event == event]
    finally:
        log.close()


async def test_a_check_from_the_command_line_is_a_real_measured_call(tmp_path: Path) -> None:
    line = LocalLine(tmp_path, "east-west", SITES, policy=Policy(check_thresholds=SPEECH_UNJUDGED))
    line.commission()
    try:
        await line.start_exchange()
        # bravo does not auto-answer calls: a check is answered by the terminal itself
        await line.start_terminal("alpha", "--no-scheduled-checks")
        await line.start_terminal("bravo", "--no-scheduled-checks")
        await line.wait_online(["alpha", "bravo"])
        alpha = str(line.terminal_dir("alpha"))
        done = await asyncio.to_thread(
            hotline_cli, "check", "run", "-t", alpha, "--to", "bravo", "--seconds", "2", "--json"
        )
        assert done.returncode == 0, done
        result = json.loads(done.stdout)
        assert result["ok"] is True and result["verdict"] in ("green", "amber"), result
        assert result["security_code_match"] is True
        assert result["charter_version_match"] is True
        assert result["setup_ms"] > 0 and result["exchange_rtt_ms"] is not None
        assert result["video_fps"] >= 10 and result["audio_fps"] >= 30, result
        assert result["corrupt_shown"] == 0 and result["frames_rejected"] == 0
        assert result["path"] == "host"
        # bravo looped alpha's video back: alpha read its own frame ids, on its own clock
        assert result["video_rtt_ms"] is not None and 0 < result["video_rtt_ms"] < 3000, result
        # and alpha's speech: its chirps timed, the clip scored (judged in tests/netlab)
        assert result["audio_rtt_ms"] is not None and 0 < result["audio_rtt_ms"] < 3000, result
        if speech.unavailable() is None:
            assert 100 <= result["pesq_x100"] <= 464 and result["pesq_note"] is None, result
        else:
            assert result["pesq_x100"] is None and result["pesq_note"], result
        print(f"video round trip (looped back) {result['video_rtt_ms']} ms, "
              f"RTCP round trip {result['rtt_ms']} ms")  # fmt: skip
        # loopback: a few ms each way, no loss: the E-model says excellent
        assert result["one_way_ms"] is None or result["one_way_ms"] < 50
        assert result["mos_x100"] is None or result["mos_x100"] >= 400
        # the callee never rang a person: its ring was a check, answered by itself
        bravo = await line.status("bravo")
        assert bravo["last_ring"]["purpose"] == "check"
        assert call_of(bravo).get("state") in (None, "ended")
        # the readable forms: a verdict line, a history table, and the call logs
        text = await asyncio.to_thread(hotline_cli, "check", "run", "-t", alpha, "--to", "bravo")
        assert text.returncode == 0 and "line check to bravo:" in text.stdout, text
        assert "security codes match" in text.stdout and "PESQ " in text.stdout
        history = await asyncio.to_thread(hotline_cli, "check", "history", "-t", alpha, "--json")
        kept_here = json.loads(history.stdout)["checks"]
        assert [r["peer"] for r in kept_here] == ["bravo", "bravo"]
        assert kept_here[0]["pesq_x100"] == result["pesq_x100"], kept_here  # in the history
        table = await asyncio.to_thread(hotline_cli, "check", "history", "-t", alpha)
        assert "bravo" in table.stdout and "PESQ" in table.stdout and table.returncode == 0
        unknown = await asyncio.to_thread(hotline_cli, "check", "run", "-t", alpha, "--to", "zulu")
        assert unknown.returncode == 2 and "Traceback" not in unknown.stderr, unknown
        # a real call right after: full media
        async with line.control("alpha") as control:
            await control.request("POST", "/call", {"target": "bravo"})
        async with line.control("bravo") as control:
            await wait_for(
                line, ["bravo"], lambda s: call_of(s["bravo"]).get("state") == "incoming", "ring"
            )
            await control.request("POST", "/answer")
        await wait_for(line, ["alpha", "bravo"], lambda s: media_flows(s, BOTH), "a real call")
    finally:
        await line.stop()
    results = log_events(line, "alpha", "check_result")
    assert len(results) == 2 and all(r["verdict"] != "red" for r in results)
    assert len(log_events(line, "bravo", "check_report")) == 2  # the caller's view, kept
    kept = log_events(line, "bravo", "check_result")  # and the caller's verdicts, kept too
    assert [(r["by"], r["peer"], r["verdict"]) for r in kept] == [
        (r["by"], r["peer"], r["verdict"]) for r in results
    ]
    line.verify_log("bravo")
    report = line.verify_log("alpha")  # the check results are in the signed, chained log
    assert report.calls >= 3


async def test_scheduled_checks_and_an_alarm_with_its_hook(tmp_path: Path) -> None:
    policy = Policy(readiness_interval_s=4, check_thresholds=SPEECH_UNJUDGED)
    line = LocalLine(tmp_path, "east-west", SITES, policy=policy)
    line.commission()
    alarm_file = tmp_path / "alarm.json"
    hook = f"sh -c 'printf %s \"$HOTLINE_ALARM\" > {alarm_file}'"
    try:
        await line.start_exchange()
        await line.start_terminal("alpha", "--alarm-hook", hook)
        await line.start_terminal("bravo")
        await line.wait_online(["alpha", "bravo"])
        # the lower id calls, on the charter's 4 s interval: a first good check comes soon
        status = await wait_for(
            line,
            ["alpha"],
            lambda s: (s["alpha"]["readiness"]["last_good"] or {}).get("peer") == "bravo",
            "a scheduled check",
            timeout=30,
        )
        assert status["alpha"]["readiness"]["alarms"] == []
        assert (await line.status("bravo"))["readiness"]["next_due_s"] == {}  # bravo never calls
        await line.stop("bravo")
        stopped = time.monotonic()
        status = await wait_for(
            line,
            ["alpha"],
            lambda s: bool(s["alpha"]["readiness"]["alarms"]),
            "an alarm for the missed check",
            timeout=30,
        )
        assert time.monotonic() - stopped < 4 * 1.1 + 10  # within one interval (+ the check)
        alarm = status["alpha"]["readiness"]["alarms"][0]
        assert alarm["peer"] == "bravo" and "not online" in alarm["reason"]
        assert status["alpha"]["readiness"]["last"]["verdict"] == "red"
        deadline = time.monotonic() + 10
        while not alarm_file.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        hooked = json.loads(alarm_file.read_text())
        assert hooked["peer"] == "bravo" and hooked["count"] >= 1
        # the called end watches too: with alpha (its caller) down, bravo alarms for the
        # check that does not come, within an interval and its grace, and runs its hook
        await line.stop("alpha")
        callee_file = tmp_path / "callee-alarm.json"
        callee_hook = f"sh -c 'printf %s \"$HOTLINE_ALARM\" > {callee_file}'"
        await line.start_terminal("bravo", "--alarm-hook", callee_hook)
        await line.wait_control("bravo")
        started = time.monotonic()
        status = await wait_for(
            line,
            ["bravo"],
            lambda s: bool(s["bravo"]["readiness"]["alarms"]),
            "the callee's alarm for a check that did not come",
            timeout=40,
        )
        assert time.monotonic() - started < 4 * 1.1 + 4 / 4 + 10 + 8  # missed_after_s + a tick
        alarm = status["bravo"]["readiness"]["alarms"][0]
        assert alarm["peer"] == "alpha" and "no readiness check from alpha" in alarm["reason"]
        deadline = time.monotonic() + 10
        while not callee_file.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert json.loads(callee_file.read_text())["peer"] == "alpha"
    finally:
        await line.stop()
