"""A line kept idle for years, and many checks in one process, must still carry a good call.

Both tests run alpha as a terminal daemon in this process (the one that runs every check)
and bravo as a terminal process that answers; the exchange is a process too. The first
real call is the baseline; the last, after everything, must be as good (frame rate,
audio packets, set-up time, within tolerant ratios: the host is shared).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hotline.calllog import CallLog, log_path
from hotline.calllog.rollup import Retention
from hotline.charter import Role
from hotline.check.clock import SimulatedClock
from hotline.check.expiry import DAY_S, ExpirySettings
from hotline.check.metrics import Measurement
from hotline.check.probe import _frames
from hotline.encoding import Value
from hotline.exchange.tls import CERT_VALIDITY_DAYS
from hotline.keys import SigningKey
from hotline.localline import LocalLine
from hotline.provision import TERMINAL_KEY_FILE
from hotline.terminal.daemon import TerminalDaemon
from tests.terminal.test_calls import hotline_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SITES = {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]}
HOUR = 3600
YEAR_H = 365 * 24
#: the simulated clock moves in steps of 5 minutes (the schedule looks at each)
STEPS_PER_HOUR = 12
WAIT_S = 60.0


async def until(what: str, cond: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def real_call(daemon: TerminalDaemon, peer: str, seconds: float = 3.0) -> dict[str, float]:
    """A real call (purpose "call") from ``daemon``: set-up time to decrypted media both
    ways, then received video frames and audio packets per second, then hang up."""
    await until("idle", lambda: not daemon.busy)
    started = time.monotonic()
    await daemon.dial(peer)
    call = daemon.call
    assert call is not None and call.machine.purpose == "call"
    while True:
        stats = await call.stats()
        if _frames(stats, peer, "video") > 0 and _frames(stats, peer, "audio") > 0:
            break
        assert call.machine.state.value != "ended", call.machine.end_reason
        assert time.monotonic() - started < WAIT_S, "no media in the real call"
        await asyncio.sleep(0.05)
    setup = time.monotonic() - started
    before, t0 = await call.stats(), time.monotonic()
    await asyncio.sleep(seconds)
    after, dt_s = await call.stats(), time.monotonic() - t0
    quality = {
        "setup_s": setup,
        "video_fps": (_frames(after, peer, "video") - _frames(before, peer, "video")) / dt_s,
        "audio_pps": (_frames(after, peer, "audio") - _frames(before, peer, "audio")) / dt_s,
        "rejected": sum(
            v for v in ((after.get("e2ee") or {}).get("rejected") or {}).values()
            if isinstance(v, int)
        ),
    }  # fmt: skip
    await call.hangup("done")
    await until("the call to end", lambda: not daemon.busy)
    return quality


async def cosigned(daemon: TerminalDaemon, peer: str) -> None:
    """The peer's co-signature of the last call has arrived (seconds, in real time: on the
    compressed clock the simulation would otherwise be days further on)."""
    call = daemon.call
    assert call is not None
    await until(f"{peer}'s co-signature", lambda: peer in call.cosigned)


def as_good(first: dict[str, float], last: dict[str, float]) -> None:
    """The last call is as good as the first, within ratios a shared host allows (both
    measured over the same seconds; a host several times overloaded halves frame rates)."""
    assert last["video_fps"] >= 0.5 * first["video_fps"] and last["video_fps"] >= 10, (
        first,
        last,
    )
    assert last["audio_pps"] >= 0.5 * first["audio_pps"] and last["audio_pps"] >= 25, (
        first,
        last,
    )
    assert last["setup_s"] <= 3 * first["setup_s"] + 3, (first, last)
    assert last["rejected"] == 0, last


def certificate(not_after: float) -> bytes:
    """A DER certificate ending at ``not_after``, as an exchange would present it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hotline exchange")])
    end = dt.datetime.fromtimestamp(not_after, dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(end - dt.timedelta(days=400))
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def storage(path: Path) -> tuple[int, int]:
    """(rows in the call log, bytes on disk)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    return rows, path.stat().st_size


async def start_line(root: Path, **alpha: Any) -> tuple[LocalLine, TerminalDaemon]:
    line = LocalLine(root, "east-west", SITES)
    line.commission()
    await line.start_exchange()
    await line.start_terminal("bravo", "--auto-answer", "--no-scheduled-checks")
    await line.wait_online(["bravo"])
    daemon = await line.start_in_process("alpha", **alpha)
    await until("bravo online at alpha", lambda: "bravo" in daemon.client.online)
    return line, daemon


async def test_four_idle_years_of_hourly_checks(fast_path: Path) -> None:
    """Four years of hourly checks on a compressed clock, in the process that then calls.

    Real: the schedule (which peer, when), the call log (every result appended, signed and
    chained), the daily rollups and monthly summaries, the expiry review and its alarms
    (events and the hook), all run for every simulated hour by the daemon's own code; and a
    real check call at the start of each simulated year and at the end. What is recorded
    between them is the first real check's measurement (as if the line were unchanged).
    Placed in the timeline: the exchange presents a certificate that ends after 500 days
    (renewed at day 490), then one that ends at day 1300 (renewed at day 1290); the
    identity key reaches its maximum age at day 1400 and is not replaced.
    """
    start = 1_767_225_600.0  # 2026-01-01 00:00 UTC
    clock = SimulatedClock(start)
    hooked = fast_path / "alarms.jsonl"
    line, alpha = await start_line(
        fast_path / "line",
        clock=clock,
        scheduled_checks=False,  # the simulation drives the schedule hour by hour
        retention=Retention(days=7, months=3),
        expiry=ExpirySettings(warn_ahead_s=30 * DAY_S, max_key_age_s=2 * 365 * DAY_S),
        identity_key_created=start + 1400 * DAY_S - 2 * 365 * DAY_S,
        alarm_hook=f'sh -c \'printf "%s\\n" "$HOTLINE_ALARM" >> {hooked}\'',
    )
    wall0 = time.monotonic()
    try:
        first_call = await real_call(alpha, "bravo")
        first = Measurement(**{
            k: v for k, v in (await alpha.check("bravo", seconds=1.0)).items()
            if k in {f.name for f in dataclasses.fields(Measurement)}
        })  # fmt: skip
        assert first.ok and first.verdict in ("green", "amber"), first
        await cosigned(alpha, "bravo")
        real_checks = 1
        ids = [t.terminal_id for t in alpha.charter.charter.terminals]
        sizes: dict[int, tuple[int, int]] = {}
        recorded = 0
        want_real = False
        alpha.client.peer_certificate = certificate(start + 500 * DAY_S)
        for step in range(1, 4 * YEAR_H * STEPS_PER_HOUR + 1):
            clock.advance(HOUR / STEPS_PER_HOUR)
            hour, part = divmod(step, STEPS_PER_HOUR)
            if part == 0 and hour == 490 * 24:  # the exchange's certificate is renewed
                alpha.client.peer_certificate = certificate(start + 1300 * DAY_S)
            elif part == 0 and hour == 1290 * 24:
                alpha.client.peer_certificate = certificate(start + 3000 * DAY_S)
            if part == 0 and hour % YEAR_H == 0:
                want_real = True  # the next check due is a real call
            peer = alpha.readiness.next_due(ids, clock.monotonic())
            if peer is not None:
                if want_real:
                    want_real = False
                    result = await alpha.check(peer, seconds=1.0)
                    assert result["ok"] and result["verdict"] != "red", (hour, result)
                    real_checks += 1
                    await cosigned(alpha, peer)
                else:
                    alpha.record_check(dataclasses.replace(first, reasons=list(first.reasons)))
                    recorded += 1
            if part:
                continue
            alpha.housekeeping()
            if hour % 200 == 0:
                await asyncio.sleep(0)  # the exchange connection and hooks go on
            if hour % YEAR_H == 0:
                sizes[hour // YEAR_H] = storage(log_path(line.terminal_dir("alpha")))
        # the whole simulation, the real checks included
        sim_wall = time.monotonic() - wall0
        assert recorded + real_checks > 4 * YEAR_H * 0.9, recorded
        # storage: bounded by the retention, not by the years: a week of results, three
        # months of daily summaries, and per month one monthly summary more (with its record
        # of the stretch it pruned, and the odd alarm): at most three rows a month
        rows = [sizes[y][0] for y in (1, 2, 3, 4)]
        size = [sizes[y][1] for y in (1, 2, 3, 4)]
        assert rows[3] - rows[0] <= 3 * 12 * 3 and rows[3] < 1_000, sizes
        assert size[3] <= 2 * size[0] and size[3] < 1024 * 1024, sizes
        # the history shows the summaries and the last week one by one
        history = alpha.check_history()
        kinds = [r.get("kind") for r in history]
        assert kinds.count("month") >= 44 and kinds.count("day") >= 80, kinds.count("day")
        singles = [r for r in history if r.get("kind") is None]
        assert 7 * 24 * 0.9 <= len(singles) <= 8 * 24 + 1, len(singles)
        counted = sum(int(r["checks"]) for r in history if r.get("kind")) + len(singles)
        assert counted == recorded + real_checks
        # each real check call was co-signed by bravo; the summaries that replaced them say
        # so, and a check of the last week (the fourth year's, when it fell due at the very
        # end) still holds its co-signature in the log
        log = alpha.call_log
        kept = {e.call_id for e in log.entries_of_event("check_result")}
        kept_cosigned = sum(
            c.signer_id == "bravo" for call_id in kept for c in log.cosignatures(call_id)
        )
        summarised = sum(int(r["cosigned"]) for r in history if r.get("kind"))
        assert summarised + kept_cosigned == real_checks, (summarised, kept_cosigned)
        # expiry: warned 30 days ahead of each end, once a day until renewed; every alarm
        # reached the operator's hook
        await until("the hooks", lambda: not alpha._hooks, timeout=60)
        alarms = [json.loads(x) for x in hooked.read_text().splitlines()]
        by_item: dict[str, list[int]] = {}
        for a in alarms:
            assert a["kind"] == "expiry", a  # no check alarm: the line was green throughout
            day = int((a["raised_at"] - start) // DAY_S)
            by_item.setdefault(f"{a['item_kind']}@{a['expires_at']}", []).append(day)
        cert1 = f"tls_certificate@{int(start + 500 * DAY_S)}"
        cert2 = f"tls_certificate@{int(start + 1300 * DAY_S)}"
        key = f"key_age@{int(start + 1400 * DAY_S)}"
        assert sorted(by_item[cert1]) == list(range(470, 490)), by_item[cert1]
        assert sorted(by_item[cert2]) == list(range(1270, 1290)), by_item[cert2]
        assert sorted(by_item[key]) == list(range(1370, 4 * 365 + 1)), by_item[key]
        assert len(by_item) == 3, sorted(by_item)  # nothing else warned: no false alarms
        status = alpha.readiness_status()
        assert [a["item"] for a in status["alarms"]] == ["key_age:alpha"]  # not replaced
        assert status["next_expiry"]["kind"] == "key_age"
        # the first real call after it, in this process: as good as the first
        last_call = await real_call(alpha, "bravo")
        as_good(first_call, last_call)
        await cosigned(alpha, "bravo")  # its summary is checked in the log below
    finally:
        await alpha.stop()
        await line.stop()
    print(f"dormancy: {sim_wall:.1f} s for 4 years, {real_checks} real checks, sizes {sizes}")
    # the chain verifies across every rollup, with the charter's keys only
    report = line.verify_log("alpha")
    assert report.pruned > 4 * YEAR_H * 0.9
    # the calls still in the log (the last real check, the last real call) carry both
    # signatures, checked against the charter's keys
    assert {c.signer_id for c in report.cosignatures} == {"alpha", "bravo"}
    line.verify_log("bravo")


CHECKS = 100


async def test_a_hundred_checks_then_a_real_call_as_good_as_the_first(fast_path: Path) -> None:
    """100 real readiness checks (short: 0.3 s of measured media each) in one
    terminal process, then a real call: as good as the one before them."""
    line, alpha = await start_line(fast_path / "line", scheduled_checks=False)
    try:
        # what the exchange presented over TLS is watched: its certificate ends in 10 years
        tls = next(i for i in alpha.expiry_items() if i.kind == "tls_certificate")
        assert abs(tls.expires_at - (time.time() + CERT_VALIDITY_DAYS * DAY_S)) < 3600
        assert alpha.readiness_status()["next_expiry"]["kind"] in ("key_age", "tls_certificate")
        first_call = await real_call(alpha, "bravo")
        began = time.monotonic()
        setups: list[int] = []
        reds: list[list[str]] = []
        for n in range(CHECKS):
            result = await alpha.check("bravo", seconds=0.3)
            # every check is a whole call: set up, keyed, media both ways, reports swapped
            assert result["ok"], (n, result)
            assert result["security_code_match"] and result["charter_version_match"], result
            assert result["frames_rejected"] == 0 and result["corrupt_shown"] == 0, result
            if result["verdict"] == "red":  # a delay spike on a loaded host, at most a few
                reds.append(result["reasons"])
            setups.append(int(result["setup_ms"]))
        checks_wall = time.monotonic() - began
        assert len(reds) <= CHECKS // 20, reds
        last_call = await real_call(alpha, "bravo")
        as_good(first_call, last_call)
        # the checks did not wear the terminal down: the last ones set up like the first
        early, late = sorted(setups[:10])[5], sorted(setups[-10:])[5]
        assert late <= 3 * early + 2000, (early, late)
        assert len(alpha.checks) == CHECKS
    finally:
        await alpha.stop()
        await line.stop()
    print(f"{CHECKS} checks: {checks_wall:.1f} s; first call {first_call}; last {last_call}")
    report = line.verify_log("alpha")
    assert report.calls >= CHECKS + 2
    bravo = line.verify_log("bravo")
    assert bravo.calls >= CHECKS + 2


async def test_history_shows_the_summaries_from_the_command_line(fast_path: Path) -> None:
    """A terminal whose log holds months of old checks: at start it rolls them up, and
    `hotline check history` shows the monthly and daily summaries, then the recent ones."""
    line = LocalLine(fast_path / "line", "east-west", SITES)
    line.commission()
    tdir = line.terminal_dir("alpha")
    key = SigningKey.load(tdir / TERMINAL_KEY_FILE)
    now = time.time()
    with CallLog.open(log_path(tdir), "alpha", key) as log:
        for n in range(24 * 150):  # 150 days of hourly results, up to an hour ago
            t = now - (24 * 150 - n) * HOUR
            result: dict[str, Value] = {"peer": "bravo", "by": "alpha", "verdict": "green"}
            result["setup_ms"] = 800
            log.append(f"check-{n:08x}", "check_result", {**result, "time": int(t)}, t)
    try:
        await line.start_exchange()
        await line.start_terminal("alpha", "--no-scheduled-checks")
        await line.wait_online(["alpha"])
        alpha = str(tdir)
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_S
        while not any(r.get("kind") == "month" for r in rows):  # the first housekeeping
            assert time.monotonic() < deadline, "no summaries"
            done = await asyncio.to_thread(hotline_cli, "check", "history", "-t", alpha, "--json")
            assert done.returncode == 0, done
            rows = json.loads(done.stdout)["checks"]
            await asyncio.sleep(0.5)
        kinds = [r.get("kind") for r in rows]
        assert "day" in kinds and kinds[-1] is None  # summaries first, then single results
        assert sum(int(r["checks"]) for r in rows if r.get("kind")) + kinds.count(None) == 3600
        month = next(r for r in rows if r.get("kind") == "month")
        assert month["verdicts"]["green"] == month["checks"] and month["setup_ms"]["mean"] == 800
        table = await asyncio.to_thread(hotline_cli, "check", "history", "-t", alpha)
        assert table.returncode == 0 and "(month)" in table.stdout and "(day)" in table.stdout
    finally:
        await line.stop()
    assert line.verify_log("alpha").pruned > 0
