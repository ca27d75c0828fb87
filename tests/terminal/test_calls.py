"""Real calls: an exchange and terminals as separate processes on 127.0.0.1, through the CLI's
own code paths (``hotline exchange serve``, ``hotline terminal run``, the control API)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Policy, Role
from hotline.localline import LocalLine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WAIT_S = 45.0


async def wait_for(
    line: LocalLine,
    tids: list[str],
    check: Callable[[dict[str, dict[str, Any]]], bool],
    what: str,
    timeout: float = WAIT_S,
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    statuses: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        statuses = {tid: await line.status(tid) for tid in tids}
        if check(statuses):
            return statuses
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last statuses: {statuses}")


def call_of(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("call") or {}


def sink(status: dict[str, Any], peer: str, kind: str) -> dict[str, Any]:
    peers = call_of(status).get("peers") or {}
    return (peers.get(peer) or {}).get(f"{kind}_sink") or {}


def media_flows(statuses: dict[str, dict[str, Any]], pairs: list[tuple[str, str]]) -> bool:
    """Every (receiver, sender) pair shows decoded video and audio frames."""
    return all(
        sink(statuses[rx], tx, "video").get("frames", 0) > 20
        and sink(statuses[rx], tx, "audio").get("frames", 0) > 20
        for rx, tx in pairs
    )


@contextlib.asynccontextmanager
async def running_line(root: Path, policy: Policy) -> AsyncIterator[LocalLine]:
    """An exchange and two terminals, alpha and bravo (who answers at once); charlie is
    in the charter but never started."""
    line = LocalLine(
        root,
        "east-west",
        {
            "east": [("alpha", Role.PRINCIPAL)],
            "west": [("bravo", Role.PRINCIPAL), ("charlie", Role.AIDE)],
        },
        policy=policy,
    )
    line.commission()
    try:
        await line.start_exchange()
        await line.start_terminal("alpha")
        await line.start_terminal("bravo", "--auto-answer")
        await line.wait_online(["alpha", "bravo"])
        yield line
    finally:
        await line.stop()


@pytest.fixture
async def two_line(tmp_path: Path) -> AsyncIterator[LocalLine]:
    """Rekeying every 5 s, so that a short call sees a rekey."""
    async with running_line(tmp_path, Policy(rekey_interval_s=5)) as line:
        yield line


@pytest.fixture
async def steady_line(tmp_path: Path) -> AsyncIterator[LocalLine]:
    """The default rekey interval: the security code holds for the whole test."""
    async with running_line(tmp_path, Policy()) as line:
        yield line


async def test_two_terminals_call_rekey_and_verified_logs(two_line: LocalLine) -> None:
    line = two_line
    async with line.control("alpha") as alpha:
        await alpha.request("POST", "/call", {"target": "bravo"})
        statuses = await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: media_flows(s, [("alpha", "bravo"), ("bravo", "alpha")]),
            "decrypted media both ways",
        )
        first_epoch = call_of(statuses["alpha"])["epoch"]
        codes = {call_of(s)["security_code"] for s in statuses.values()}
        assert len(codes) == 1 and None not in codes

        # the charter's 5 s rekey interval brings a new epoch while media keeps flowing
        statuses = await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: (
                all(call_of(x).get("epoch", 0) >= first_epoch + 1 for x in s.values())
                and all(call_of(x).get("security_code") for x in s.values())
            ),
            "a rekey",
        )
        await asyncio.sleep(2.0)
        statuses = {tid: await line.status(tid) for tid in ("alpha", "bravo")}
        new_codes = {call_of(s)["security_code"] for s in statuses.values()}
        assert len(new_codes) == 1 and new_codes != codes, "every epoch has its own code"
        for rx, tx in (("alpha", "bravo"), ("bravo", "alpha")):
            st = statuses[rx]
            call = call_of(st)
            assert call["e2ee"]["rejected"] == {}, call["e2ee"]
            # signed frame digests on the mesh too: honest frames verified, across the rekey
            digests = call["e2ee"]["frame_digests"]
            assert digests["verified"] > 150, digests
            assert digests["unauthenticated_frame"] == {}, digests  # no alarm, ever
            # on a mesh a frame whose digest comes late is only counted (the connection binds
            # the sender); a starved host may delay a few digests past the 2 s deadline
            assert sum(digests["unsigned"].values()) <= digests["verified"] // 20, digests
            assert digests["digests_rejected"] == {} and digests["digests_received"] > 3
            assert (
                call["e2ee"]["frame_alarms"] == []
                and "unauthenticated_frame" not in call["rejected"]
            )
            assert call["frames"]["video"]["decrypted"] > 60
            assert call["frames"]["audio"]["decrypted"] > 100
            video = sink(st, tx, "video")
            # no media gap across the rekey: frame ids continuous, no long freeze
            assert video["ids_read"] == video["frames"]
            assert video["missing"] <= video["frames"] // 20, video
            assert video["max_gap_ms"] < 1500, video
            assert video["latency"]["p50_ms"] is not None
            # what a person saw, in the terminal's status: no corrupt frame, no long freeze
            assert video["corrupt_shown"] == 0 and video["fresh"] == video["shown"], video
            assert video["longest_freeze_ms"] < 1500 and video["latency_p95_ms"] is not None
            assert call["frames"]["video"]["guard"]["frames_passed"] > 60, call["frames"]

        await alpha.request("POST", "/hangup")
    await wait_for(
        line,
        ["alpha", "bravo"],
        lambda s: all(call_of(x).get("cosigned") for x in s.values()),
        "co-signed call summaries",
    )
    await line.stop()
    for tid, peer in (("alpha", "bravo"), ("bravo", "alpha")):
        report = line.verify_log(tid)
        assert report.calls == 1
        assert any(c.signer_id == peer for c in report.cosignatures)


@pytest.mark.parametrize("suite", ["AES_128_GCM_SHA256_128", "AES_256_GCM_SHA512_128"])
async def test_call_uses_the_charters_cipher_suite(tmp_path: Path, suite: str) -> None:
    """Each SFrame suite a charter may name, end to end: the frames of the call are
    protected under it (the send key's suite, as the status shows it) and media flows."""
    policy = Policy(cipher_suite=suite, kem="X25519")
    async with running_line(tmp_path, policy) as line, line.control("alpha") as alpha:
        await alpha.request("POST", "/call", {"target": "bravo"})
        statuses = await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: media_flows(s, [("alpha", "bravo"), ("bravo", "alpha")]),
            "decrypted media both ways",
        )
        for st in statuses.values():
            e2ee = call_of(st)["e2ee"]
            assert e2ee["suite"] == suite and e2ee["kem"] == "X25519", e2ee
            assert e2ee["rejected"] == {}, e2ee
        await alpha.request("POST", "/hangup")


async def test_third_member_joins_and_leaves(tmp_path: Path) -> None:
    line = LocalLine(
        tmp_path,
        "east-west",
        {
            "east": [("alpha", Role.PRINCIPAL)],
            "west": [("bravo", Role.PRINCIPAL), ("interp", Role.INTERPRETER)],
        },
    )
    line.commission()
    everyone = ["alpha", "bravo", "interp"]
    try:
        await line.start_exchange()
        await line.start_terminal("alpha")
        await line.start_terminal("bravo", "--auto-answer")
        await line.start_terminal("interp", "--auto-answer")
        await line.wait_online(everyone)
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
            await wait_for(
                line,
                ["alpha", "bravo"],
                lambda s: media_flows(s, [("alpha", "bravo"), ("bravo", "alpha")]),
                "a two-party call",
            )
            await alpha.request("POST", "/invite", {"target": "interp"})
        pairs = [(a, b) for a in everyone for b in everyone if a != b]
        three = await wait_for(
            line,
            everyone,
            lambda s: (
                media_flows(s, pairs)
                and len({(call_of(x)["epoch"], call_of(x)["security_code"]) for x in s.values()})
                == 1
                and all(len(call_of(x)["members"]) == 3 for x in s.values())
            ),
            "three members on one epoch",
        )
        epoch3 = call_of(three["alpha"])["epoch"]
        code3 = call_of(three["alpha"])["security_code"]

        async with line.control("interp") as interp:
            await interp.request("POST", "/hangup")
        two = await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: all(
                len(call_of(x)["members"]) == 2 and call_of(x)["epoch"] > epoch3 for x in s.values()
            ),
            "a new epoch without the interpreter",
        )
        assert call_of(two["alpha"])["security_code"] == call_of(two["bravo"])["security_code"]
        assert call_of(two["alpha"])["security_code"] != code3
        new_epoch = call_of(two["alpha"])["epoch"]

        left = call_of(await line.status("interp"))
        assert left["state"] == "ended"
        assert new_epoch not in left["e2ee"]["receive_epochs"]
        decrypted_at_leave = left["e2ee"]["unprotected"]
        await asyncio.sleep(2.0)  # the two others keep talking under the new epoch
        after = call_of(await line.status("interp"))
        assert after["e2ee"]["unprotected"] == decrypted_at_leave, "the leaver decrypts nothing"
        assert max(after["epochs"]) < new_epoch
        still = call_of(await line.status("alpha"))
        assert (
            still["frames"]["video"]["decrypted"]
            > call_of(two["alpha"])["frames"]["video"]["decrypted"]
        )
    finally:
        await line.stop()


def hotline_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotline", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "COLUMNS": "200"},
    )


async def test_call_commands_from_the_command_line(steady_line: LocalLine) -> None:
    two_line = steady_line
    alpha = str(two_line.terminal_dir("alpha"))
    bravo = str(two_line.terminal_dir("bravo"))

    def one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and text in result.stderr, result

    assert two_line.charter_path is not None
    charter = str(two_line.charter_path)
    result = await asyncio.to_thread(
        hotline_cli, "terminal", "run", "--terminal", alpha, "--charter", charter
    )
    one_line_error(result, "already running")
    result = await asyncio.to_thread(hotline_cli, "call", "answer", "--terminal", bravo)
    one_line_error(result, "no call is ringing")
    result = await asyncio.to_thread(hotline_cli, "call", "dial", "nobody", "--terminal", alpha)
    one_line_error(result, "nobody")

    # nobody answers at charlie: --wait gives up, hangs up, and says so
    result = await asyncio.to_thread(
        hotline_cli, "call", "dial", "charlie", "--terminal", alpha, "--wait", "--timeout", "2"
    )
    one_line_error(result, "not answered within 2 s; hung up")
    assert call_of(await two_line.status("alpha"))["state"] == "ended"

    result = await asyncio.to_thread(
        hotline_cli, "call", "dial", "bravo", "--terminal", alpha, "--wait", "--json"
    )
    assert result.returncode == 0, result.stderr
    dialled = json.loads(result.stdout)
    assert dialled["call"].startswith("call-") and dialled["epoch"] >= 1
    assert len(dialled["security_code"].split()) >= 3

    result = await asyncio.to_thread(hotline_cli, "call", "status", "--terminal", bravo, "--json")
    status = json.loads(result.stdout)
    assert status["call"]["call"] == dialled["call"]
    assert status["call"]["security_code"] == dialled["security_code"]
    result = await asyncio.to_thread(hotline_cli, "call", "status", "--terminal", bravo)
    assert dialled["security_code"] in result.stdout

    result = await asyncio.to_thread(hotline_cli, "call", "hangup", "--terminal", alpha)
    assert result.returncode == 0, result.stderr
    await wait_for(
        two_line,
        ["alpha", "bravo"],
        lambda s: all(call_of(x).get("state") == "ended" for x in s.values()),
        "the call to end on both sides",
    )
