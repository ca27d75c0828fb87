"""Fail-closed behaviour of calls: no keys, no media; altered frames refused and counted; a
terminal outside the charter cannot take part. Terminals run in this process (so faults can be
injected) against a real exchange process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Policy, Role, enrolment_bytes, load_charter
from hotline.encoding import encode
from hotline.errors import StateError
from hotline.keys import SigningKey
from hotline.localline import LocalLine
from hotline.media import aiortc_patch, engine
from hotline.media.aiortc_patch import RtpView
from hotline.provision import (
    enroll_terminal,
    line_site_dir,
    load_site,
    propose_line,
    sign_charter,
    write_draft,
)
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


async def test_hostile_signalling_from_charter_terminals_is_refused(tmp_path: Path) -> None:
    """Terminals of the charter that break the call protocol: a bad ring, a repeated SDP
    answer, key messages from a terminal outside the call. Each is refused and counted, and
    the terminal keeps working; after the call every key is gone."""
    line = LocalLine(
        tmp_path,
        "east-west",
        {
            "east": [("alpha", Role.PRINCIPAL)],
            "west": [("bravo", Role.PRINCIPAL), ("mallory", Role.AIDE)],
        },
    )
    line.commission()
    await line.start_exchange()
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    mallory = await started(line, "mallory")
    try:
        await until(lambda: _online(alpha, "mallory"), "everyone online")
        # a ring that breaks the protocol leaves nothing behind: alpha is not busy after it
        await mallory.client.send("alpha", "call.ring", encode({"call": "call-x", "members": []}))

        async def refused_ring() -> bool:
            return alpha.rejected.get("call_protocol", 0) >= 1

        await until(refused_ring, "the bad ring to be refused")
        assert alpha.call is None
        await alpha.dial("bravo")

        async def secured() -> bool:
            call = (await alpha.status())["call"]
            return bool(call and call["security_code"] and call["frames"]["video"]["decrypted"])

        await until(secured, "an encrypted call")
        assert alpha.call is not None and bravo.call is not None
        call_id = alpha.call.call_id
        # key messages from a terminal of the line that is not in the call
        await mallory.client.send(
            "alpha", "e2ee.ack", encode({"call": call_id, "data": b"\x00" * 64})
        )
        # the member repeats its SDP answer (the offer was answered long ago)
        answer = bravo.call.peers["alpha"].pc.localDescription.sdp
        prints = [str(f) for f in engine.sdp_fingerprints(answer)]
        body = {"call": call_id, "type": "answer", "sdp": answer, "fingerprints": prints}
        await bravo.client.send("alpha", "call.sdp", encode(body))

        async def both_refused() -> bool:
            return alpha.call is not None and alpha.call.rejected.get("call_protocol", 0) >= 2

        await until(both_refused, "both messages to be refused")
        assert alpha.call.epoch == bravo.call.epoch
        # the terminal still follows the protocol: bravo's hang-up ends the call at alpha
        await bravo.hangup()

        async def ended() -> bool:
            return alpha.call is not None and alpha.call.machine.state.value == "ended"

        await until(ended, "the hang-up to reach alpha")
        for daemon in (alpha, bravo):
            assert daemon.call is not None
            assert daemon.call.keys.closed
            assert daemon.call.keys.media.receive_kids() == [], "every key erased"
            assert daemon.rejected.get("internal", 0) == 0
    finally:
        for daemon in (alpha, bravo, mallory):
            await daemon.stop()
        await line.stop()


async def test_a_terminal_removed_from_the_charter_leaves_the_running_call(
    tmp_path: Path,
) -> None:
    line = LocalLine(
        tmp_path,
        "east-west",
        {
            "east": [("alpha", Role.PRINCIPAL)],
            "west": [("bravo", Role.PRINCIPAL), ("charlie", Role.INTERPRETER)],
        },
    )
    v1 = line.commission()
    await line.start_exchange()
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    charlie = await started(line, "charlie", auto_answer=True)
    try:
        await until(lambda: _online(alpha, "charlie"), "everyone online")
        await alpha.dial("bravo")

        async def members(daemon: TerminalDaemon, n: int, epoch_above: int = 0) -> bool:
            call = daemon.call
            return (
                call is not None
                and len(call.machine.members) == n
                and (call.epoch or 0) > epoch_above
            )

        await until(lambda: members(alpha, 2), "a two-party call")
        await alpha.invite("charlie")
        await until(lambda: members(bravo, 3), "charlie in the call")
        await until(lambda: members(charlie, 3, 1), "charlie holding the three-member epoch")
        assert alpha.call is not None and charlie.call is not None
        three = alpha.call.epoch or 0

        # version 2 of the charter, signed by both sites, no longer lists charlie
        charter = v1.charter
        v2_path = tmp_path / "v2.charter.json"
        draft = propose_line(
            charter.line_id,
            [line_site_dir(tmp_path, s.site_id) for s in charter.sites],
            [t for t in charter.terminals if t.terminal_id != "charlie"],
            exchanges=charter.exchanges,
            policy=charter.policy,
            version=2,
        )
        write_draft(v2_path, draft)
        for site in charter.sites:
            sign_charter(v2_path, line_site_dir(tmp_path, site.site_id))
        await alpha.install_charter(load_charter(v2_path))

        await until(lambda: members(alpha, 2, three), "alpha's new epoch without charlie")
        await until(lambda: members(bravo, 2, three), "bravo's new epoch without charlie")
        assert alpha.call.security_code == bravo.call.security_code  # type: ignore[union-attr]
        assert alpha.call.epoch not in charlie.call.keys.media.stats().receive_epochs
        assert "charlie" not in alpha.call.peers, "no transport to the removed terminal"
    finally:
        for daemon in (alpha, bravo, charlie):
            await daemon.stop()
        await line.stop()


async def test_a_re_keyed_terminal_leaves_the_running_call(tmp_path: Path) -> None:
    """Version 2 of the charter gives charlie a new identity key. The old key holder
    ignores the new charter (a stolen device would); alpha and bravo treat it exactly like a
    departure: a new epoch without it, no transport to it, nothing of the new epoch for it."""
    line = LocalLine(
        tmp_path,
        "east-west",
        {
            "east": [("alpha", Role.PRINCIPAL)],
            "west": [("bravo", Role.PRINCIPAL), ("charlie", Role.INTERPRETER)],
        },
    )
    v1 = line.commission()
    await line.start_exchange()
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    charlie = await started(line, "charlie", auto_answer=True)

    async def keeps_the_old_charter(signed: object) -> None:
        return None

    charlie._adopt_charter = keeps_the_old_charter  # type: ignore[method-assign]
    try:
        await until(lambda: _online(alpha, "charlie"), "everyone online")
        await alpha.dial("bravo")

        async def members(daemon: TerminalDaemon, n: int, epoch_above: int = 0) -> bool:
            call = daemon.call
            return (
                call is not None
                and len(call.machine.members) == n
                and (call.epoch or 0) > epoch_above
            )

        await until(lambda: members(alpha, 2), "a two-party call")
        await alpha.invite("charlie")
        await until(lambda: members(bravo, 3), "charlie in the call")
        await until(lambda: members(charlie, 3, 1), "charlie holding the three-member epoch")
        assert alpha.call is not None and charlie.call is not None
        three = alpha.call.epoch or 0

        # version 2, signed by both sites: charlie, same id, new identity key
        charter = v1.charter
        _, west_key = load_site(line_site_dir(tmp_path, "west"))
        new_key = SigningKey.generate()
        old = charter.terminal("charlie")
        rekeyed = dataclasses.replace(
            old,
            identity_key=new_key.public,
            enrolment_signature=west_key.sign(
                enrolment_bytes(old.site_id, old.terminal_id, old.name, old.role, new_key.public)
            ),
        )
        v2_path = tmp_path / "v2.charter.json"
        draft = propose_line(
            charter.line_id,
            [line_site_dir(tmp_path, s.site_id) for s in charter.sites],
            [rekeyed if t.terminal_id == "charlie" else t for t in charter.terminals],
            exchanges=charter.exchanges,
            policy=charter.policy,
            version=2,
        )
        write_draft(v2_path, draft)
        for site in charter.sites:
            sign_charter(v2_path, line_site_dir(tmp_path, site.site_id))
        await alpha.install_charter(load_charter(v2_path))

        await until(lambda: members(alpha, 2, three), "alpha's new epoch without old charlie")
        await until(lambda: members(bravo, 2, three), "bravo's new epoch without old charlie")
        assert alpha.call.security_code == bravo.call.security_code  # type: ignore[union-attr]
        assert alpha.call.epoch not in charlie.call.keys.media.stats().receive_epochs
        assert "charlie" not in alpha.call.peers and "charlie" not in bravo.call.peers  # type: ignore[union-attr]
    finally:
        for daemon in (alpha, bravo, charlie):
            await daemon.stop()
        await line.stop()


async def test_a_restarted_terminal_resumes_its_exchange_state(line: LocalLine) -> None:
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    try:
        await until(lambda: _online(alpha, "bravo"), "bravo online")
        await alpha.dial("bravo")

        async def answered() -> bool:
            return alpha.call is not None and len(alpha.call.machine.members) == 2

        await until(answered, "bravo to answer")
        call_id = alpha.call.call_id if alpha.call else ""
    finally:
        await alpha.stop()
    saved = json.loads((line.terminal_dir("alpha") / "state" / "exchange-client.json").read_text())
    assert saved["last_seq"] > 0 and saved["store_id"]
    again = await started(line, "alpha")
    try:
        assert again.client.state.last_seq >= saved["last_seq"], "no sequence number reused"
        assert again.client.state.store_id == saved["store_id"]
        assert call_id in again._known_calls, "an old ring of that call is never a new call"
    finally:
        await again.stop()
        await bravo.stop()


async def test_a_new_charters_kem_and_suite_reach_the_running_call(tmp_path: Path) -> None:
    """Version 2 of the charter changes the policy's KEM and SFrame suite while alpha and
    bravo are in a call: both move the same call to a new epoch sealed and protected under
    the new policy, labelled with the new version, and media goes on being decrypted."""
    sites = {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]}
    line = LocalLine(tmp_path, "east-west", sites)
    v1 = line.commission()
    assert v1.charter.policy.kem == "MLKEM768_X25519"
    assert v1.charter.policy.cipher_suite == "AES_128_GCM_SHA256_128"
    await line.start_exchange()
    alpha = await started(line, "alpha")
    bravo = await started(line, "bravo", auto_answer=True)
    try:
        await until(lambda: _online(alpha, "bravo"), "bravo online")
        await alpha.dial("bravo")

        async def decrypted(daemon: TerminalDaemon) -> int:
            call = (await daemon.status())["call"] or {}
            return int(((call.get("frames") or {}).get("video") or {}).get("decrypted", 0))

        async def media(daemon: TerminalDaemon, above: int = 0) -> bool:
            return await decrypted(daemon) > above

        await until(lambda: media(bravo, 10), "video at bravo")
        assert alpha.call is not None
        call_id, first_epoch = alpha.call.call_id, alpha.call.epoch or 0

        charter = v1.charter
        v2_path = tmp_path / "v2.charter.json"
        policy = dataclasses.replace(
            charter.policy, kem="X25519", cipher_suite="AES_256_GCM_SHA512_128"
        )
        draft = propose_line(
            charter.line_id,
            [line_site_dir(tmp_path, s.site_id) for s in charter.sites],
            list(charter.terminals),
            exchanges=charter.exchanges,
            policy=policy,
            version=2,
        )
        write_draft(v2_path, draft)
        for site in charter.sites:
            sign_charter(v2_path, line_site_dir(tmp_path, site.site_id))
        await alpha.install_charter(load_charter(v2_path))

        async def on_the_new_policy(daemon: TerminalDaemon) -> bool:
            call = (await daemon.status())["call"] or {}
            e2ee = call.get("e2ee") or {}
            return (
                call.get("call") == call_id
                and (call.get("epoch") or 0) > first_epoch
                and e2ee.get("kem") == "X25519"
                and e2ee.get("suite") == "AES_256_GCM_SHA512_128"
            )

        await until(lambda: on_the_new_policy(alpha), "alpha on v2's KEM and suite")
        await until(lambda: on_the_new_policy(bravo), "bravo on v2's KEM and suite")
        for daemon in (alpha, bravo):
            assert (await daemon.status())["charter_version"] == 2
        assert alpha.call.security_code == bravo.call.security_code  # type: ignore[union-attr]
        at_bravo, at_alpha = await decrypted(bravo), await decrypted(alpha)
        await until(lambda: media(bravo, at_bravo + 10), "video at bravo under v2")
        await until(lambda: media(alpha, at_alpha + 10), "video at alpha under v2")
    finally:
        for daemon in (alpha, bravo):
            await daemon.stop()
        await line.stop()
