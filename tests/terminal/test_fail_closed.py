"""Fail-closed behaviour of calls: no keys, no media; altered frames refused and counted; a
terminal outside the charter cannot take part. Terminals run in this process (so faults can be
injected) against a real exchange process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Policy, Role
from hotline.errors import StateError
from hotline.localline import LocalLine
from hotline.media import aiortc_patch, engine
from hotline.media.aiortc_patch import RtpView
from hotline.provision import enroll_terminal, line_site_dir
from hotline.terminal.daemon import TerminalDaemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def started(line: LocalLine, tid: str, auto_answer: bool = False) -> TerminalDaemon:
    return await line.start_in_process(tid, auto_answer=auto_answer, width=320, height=180, fps=15)


async def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[LocalLine]:
    line = LocalLine(
        tmp_path,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
    )
    line.commission()
    try:
        await line.start_exchange()
        yield line
    finally:
        await line.stop()


async def test_no_keys_means_no_media_and_a_visible_error(line: LocalLine) -> None:
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    try:
        # bravo's key agreement messages never reach anyone (a hostile exchange drops them)
        real_send = bravo.client.send

        async def dropping_send(recipient: str | None, msg_type: str, body: bytes) -> Any:
            if msg_type.startswith("e2ee."):
                return None
            return await real_send(recipient, msg_type, body)

        bravo.client.send = dropping_send  # type: ignore[method-assign]
        await until(lambda: _online(alpha, "bravo"), "bravo online")
        await alpha.dial("bravo")

        async def lagging() -> bool:
            return any(e["kind"] in ("lagging", "e2ee_failed") for e in alpha.events)

        await until(lagging, "the key agreement to report the missing member", timeout=40)
        for daemon in (alpha, bravo):
            call = (await daemon.status())["call"]
            assert call["state"] == "active"
            assert call["security_code"] is None
            assert call["e2ee"]["protected"] == 0, "not one frame may leave without keys"
            assert call["e2ee"]["unprotected"] == 0
            assert call["frames"]["video"]["protect_failed"].get("no_media_key", 0) > 0
        missing = next(e for e in alpha.events if e["kind"] in ("lagging", "e2ee_failed"))
        assert "bravo" in str(missing)
    finally:
        await alpha.stop()
        await bravo.stop()


async def test_altered_frames_are_rejected_and_counted(
    line: LocalLine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every peer connection gets an RTP tap (it must be set before media starts); only the
    # one armed later alters anything: what an attacker on the media path can do
    armed: set[int] = set()
    altered = 0

    def tap_for(pc_id: int) -> Callable[[RtpView], bytes | None]:
        def flip(view: RtpView) -> bytes | None:
            nonlocal altered
            if pc_id not in armed or not view.marker or view.sequence_number % 10:
                return view.data
            data = bytearray(view.data)
            data[-1] ^= 0x01  # the last byte of a frame: its SFrame authentication tag
            altered += 1
            return bytes(data)

        return flip

    real_create = engine.create_peer_connection

    def create_tapped(*args: Any, **kwargs: Any) -> Any:
        pc = real_create(*args, **kwargs)
        aiortc_patch.tap_outgoing_rtp(pc, tap_for(id(pc)))
        return pc

    monkeypatch.setattr(engine, "create_peer_connection", create_tapped)
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    try:
        await until(lambda: _online(alpha, "bravo"), "bravo online")
        await alpha.dial("bravo")

        async def decrypting() -> bool:
            call = (await bravo.status())["call"] or {}
            return (call.get("frames") or {}).get("video", {}).get("decrypted", 0) > 20

        await until(decrypting, "decrypted video at bravo")
        assert alpha.call is not None
        armed.add(id(alpha.call.peers["bravo"].pc))
        await asyncio.sleep(4.0)
        call = (await bravo.status())["call"]
        video = call["frames"]["video"]
        assert altered > 0
        assert video["rejected_total"] > 0, video
        assert call["e2ee"]["rejected"].get("bad_tag", 0) > 0, call["e2ee"]
        before = video["decrypted"]
        await asyncio.sleep(1.5)
        after = (await bravo.status())["call"]["frames"]["video"]["decrypted"]
        assert after > before, "the decoder keeps running after refused frames"
        kinds = [e["kind"] for e in bravo.events]
        assert "frame_rejected" in kinds
    finally:
        await alpha.stop()
        await bravo.stop()


async def _online(daemon: TerminalDaemon, other: str) -> bool:
    return other in daemon.client.online


def test_unenrolled_terminal_cannot_run(tmp_path: Path) -> None:
    line = LocalLine(tmp_path, "east-west", {"east": [("alpha", Role.PRINCIPAL)]})
    line.commission()
    assert line.charter_path is not None
    # enrolled by a site of the line, but after the charter was signed: not a member
    rogue = enroll_terminal(line_site_dir(tmp_path, "east"), "rogue", "aide", tmp_path / "rogue")
    result = subprocess.run(
        [sys.executable, "-m", "hotline", "terminal", "run", "--terminal", str(rogue),
         "--charter", str(line.charter_path)],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "rogue" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_the_charter_caps_the_number_of_members(tmp_path: Path) -> None:
    line = LocalLine(
        tmp_path,
        "east-west",
        {
            "east": [("alpha", Role.PRINCIPAL)],
            "west": [("bravo", Role.PRINCIPAL), ("charlie", Role.INTERPRETER)],
        },
        policy=Policy(max_participants=2),
    )
    line.commission()
    assert line.charter_path is not None
    await line.start_exchange()
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    try:
        await until(lambda: _online(alpha, "bravo"), "bravo online")
        await alpha.dial("bravo")

        async def answered() -> bool:
            return alpha.call is not None and len(alpha.call.machine.members) == 2

        await until(answered, "bravo to answer")
        with pytest.raises(StateError, match="at most 2"):
            await alpha.invite("charlie")
        assert alpha.call.machine.pending == {}, "nobody was rung"
    finally:
        await alpha.stop()
        await bravo.stop()
        await line.stop()
