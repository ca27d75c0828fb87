"""Real terminal daemons (in this process) behind a hostile exchange double that relays,
withholds, releases and injects envelopes (``tests/exchange/harness.py: MitmExchange``).
Seeded: replay a run with ``HOTLINE_HOSTILE_SEED=<seed>`` (printed by every test)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Role, SignedCharter
from hotline.encoding import encode
from hotline.envelope import Envelope
from hotline.exchange.frames import CharterFrame, Reject
from hotline.keys import SigningKey
from hotline.localline import LocalLine
from hotline.media import aiortc_patch, engine
from hotline.provision import load_terminal
from hotline.terminal.daemon import TerminalDaemon
from hotline.terminal.main import build_config
from tests.exchange.harness import MitmExchange

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SEED = int(os.environ.get("HOTLINE_HOSTILE_SEED", "1009"))


async def until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (seed {SEED})")


@dataclass
class Scene:
    line: LocalLine
    mitm: MitmExchange
    alpha: TerminalDaemon
    bravo: TerminalDaemon

    def kinds(self, daemon: TerminalDaemon) -> list[str]:
        return [e["kind"] for e in daemon.events]

    def events(self, daemon: TerminalDaemon, kind: str) -> list[dict[str, Any]]:
        return [e for e in daemon.events if e["kind"] == kind]

    def signed_by(self, tid: str, msg_type: str, body: dict[str, Any], age_s: float) -> Envelope:
        """An envelope ``tid`` really signed ``age_s`` ago (one the exchange withheld)."""
        _, key = load_terminal(self.line.terminal_dir(tid))
        when = int((time.time() - age_s) * 1000)
        return Envelope.create(
            key,
            line_id=self.line.line_id,
            sender=tid,
            recipient="bravo" if tid == "alpha" else "alpha",
            seq=when << 20,
            timestamp_ms=when,
            msg_type=msg_type,
            body=encode(body),
        )


async def daemon_for(line: LocalLine, tid: str, url: str, auto_answer: bool) -> TerminalDaemon:
    assert line.charter_path is not None
    config = build_config(
        terminal_dir=line.terminal_dir(tid),
        charter_path=line.charter_path,
        exchange_url=url,
        passphrase_file=None,
        auto_answer=auto_answer,
        interfaces="loopback",
        width=320,
        height=180,
        fps=15,
    )
    daemon = TerminalDaemon(config)
    await daemon.start()
    return daemon


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    print(f"hostile exchange seed {SEED}")
    aiortc_patch.install()
    engine.set_ice_addresses(["loopback"])
    line = LocalLine(
        tmp_path,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
    )
    line.commission()
    mitm = MitmExchange(SEED)
    await mitm.start()
    alpha = await daemon_for(line, "alpha", mitm.url, auto_answer=False)
    bravo = await daemon_for(line, "bravo", mitm.url, auto_answer=True)
    scene = Scene(line, mitm, alpha, bravo)
    try:
        await until(
            lambda: {"alpha", "bravo"} <= alpha.client.online and "alpha" in bravo.client.online,
            "both online",
        )
        yield scene
    finally:
        await alpha.stop()
        await bravo.stop()
        await mitm.stop()


async def test_a_ring_older_than_the_ring_timeout_is_refused(scene: Scene) -> None:
    """A ring alpha signed 200 s ago, withheld by the exchange until now: no call, counted,
    and the refusal says how old it was (issue 9, point 10)."""
    ring = scene.signed_by(
        "alpha", "call.ring", {"call": "call-00000000000000aa", "members": ["alpha"]}, 200
    )
    await scene.mitm.deliver(ring)
    await until(lambda: scene.bravo.rejected.get("stale_ring", 0) == 1, "the stale ring refused")
    assert scene.bravo.call is None  # nothing rings, nothing is answered
    refusal = next(e for e in scene.events(scene.bravo, "rejected") if e["reason"] == "stale_ring")
    assert "200 s old" in refusal["detail"]
    # released again later: still no call
    await scene.mitm.deliver(ring)
    await asyncio.sleep(0.3)
    assert scene.bravo.call is None and "ringing" not in scene.kinds(scene.bravo)


async def test_a_withheld_ring_released_after_hang_up_ends_at_once(scene: Scene) -> None:
    """The exchange withholds alpha's ring and its cancel, and releases the ring after
    alpha hung up: bravo answers a phantom, alpha answers the phantom's traffic with a leave,
    the phantom ends at once, and the next real call goes through (issue 9, point 10)."""
    alpha, bravo, mitm = scene.alpha, scene.bravo, scene.mitm
    mitm.hold = lambda env: env.msg_type in ("call.ring", "call.leave")
    phantom = await alpha.dial("bravo")
    await asyncio.sleep(0.2)
    await alpha.hangup()
    await asyncio.sleep(1.0)
    mitm.hold = lambda env: (
        env.msg_type == "call.leave"
        and env.sender == "alpha"
        and not any(e.msg_type == "call.answer" for e in mitm.sent)
    )
    assert await mitm.release(lambda env: env.msg_type == "call.ring") == 1
    await until(lambda: "ringing" in scene.kinds(bravo), "bravo rung by the phantom")
    ring = scene.events(bravo, "ring")[-1]
    assert ring["call"] == phantom and ring["age_s"] >= 1.0  # the ring's age is shown
    # alpha answers the phantom's traffic with a leave; bravo's phantom ends at once
    await until(
        lambda: bravo.call is not None and bravo.call.machine.state.value == "ended",
        "the phantom call ended",
        timeout=5.0,
    )
    leaves = [e for e in mitm.sent if e.sender == "alpha" and e.msg_type == "call.leave"]
    assert len(leaves) == 2  # the withheld cancel, and the answer to the phantom
    # the next real call is not declined "busy"
    mitm.hold = lambda env: False
    real = await alpha.dial("bravo")
    await until(
        lambda: (
            alpha.call is not None
            and alpha.call.call_id == real
            and alpha.call.machine.state.value == "active"
        ),
        "the real call answered",
    )
    assert not [e for e in scene.events(alpha, "declined") if e.get("reason") == "busy"]
    await alpha.hangup()


async def test_forged_rejects_cannot_fill_memory_or_flush_the_history(scene: Scene) -> None:
    """3000 rejects with forged reasons and recipients (random, up to 2 KB): the terminal's
    counters stay a fixed set, its status stays small, and the events from before are still
    in its history (issue 9, point 11)."""
    rng = random.Random(SEED)
    alpha, mitm = scene.alpha, scene.mitm
    first = alpha.events_since(0)[0]
    assert first["kind"] == "started"
    for i in range(3000):
        reason = rng.randbytes(rng.randrange(1, 1000)).hex()
        to = rng.choice([None, "bravo", rng.randbytes(40).hex()])
        await mitm.send_frame("alpha", Reject(rng.choice([None, i]), reason, to))
    await until(lambda: sum(alpha.rejected.values()) >= 3000, "every reject counted")
    assert len(alpha.rejected) <= 4, sorted(alpha.rejected)[:5]
    assert all(len(k) <= 40 for k in alpha.rejected)
    assert len(alpha.client.stats) <= 40
    status = await alpha.status()
    assert len(json.dumps(status)) < 20_000
    history = alpha.events_since(0)
    assert history[0] == first, "the exchange flushed the terminal's history"
    assert len(json.dumps(history)) < 500_000
    assert all(len(json.dumps(e)) < 1000 for e in history)


async def test_every_refusal_is_counted_and_shown(scene: Scene) -> None:
    """Deliveries the terminal refuses (replayed, forged, stale, misrouted) and a charter it
    refuses are counted by reason in the status and reported as events, not only logged
    (issue 9, point 8)."""
    alpha, mitm = scene.alpha, scene.mitm
    leave = {"call": "call-00000000000000bb", "reason": "x"}
    genuine = scene.signed_by("bravo", "call.leave", leave, 0)
    await mitm.deliver(genuine, to="alpha")
    await mitm.deliver(genuine, to="alpha")  # replayed
    forged = Envelope.create(
        SigningKey.generate(),
        line_id=scene.line.line_id,
        sender="bravo",
        recipient="alpha",
        seq=genuine.seq + 1,
        timestamp_ms=genuine.timestamp_ms,
        msg_type="call.leave",
        body=encode(leave),
    )
    await mitm.deliver(forged, to="alpha")
    await mitm.deliver(scene.signed_by("bravo", "call.leave", leave, 3600), to="alpha")  # stale
    await mitm.deliver(scene.signed_by("alpha", "call.leave", leave, 0), to="alpha")  # misrouted
    charter = scene.line.charter
    tampered = SignedCharter(
        dataclasses.replace(charter.charter, version=charter.version + 1), charter.signatures
    )
    await mitm.send_frame("alpha", CharterFrame(tampered.to_file_bytes()))
    expected = {
        "delivery_replay",
        "delivery_bad_signature",
        "delivery_stale",
        "delivery_misrouted",
        "charter_bad_signature",
    }
    await until(lambda: expected <= set(alpha.rejected), f"refusals {expected} counted")
    status = await alpha.status()
    assert all(status["rejected"][reason] == 1 for reason in expected), status["rejected"]
    shown = {e["reason"] for e in alpha.events_since(0) if e["kind"] == "rejected"}
    assert expected <= shown
    assert alpha.charter.version == charter.version  # nothing was adopted


async def test_an_offer_delivered_after_the_key_agreement_still_makes_a_call(
    scene: Scene,
) -> None:
    """The exchange holds alpha's SDP offer back and delivers the key agreement alpha sent
    after it first: the envelopes are taken out of order (each once), and the call gets
    media at once (issue 9, point 9). Before, bravo refused the offer as "behind": both
    sides showed an epoch and a security code while no peer connection existed."""
    alpha, bravo, mitm = scene.alpha, scene.bravo, scene.mitm
    mitm.hold = lambda env: env.sender == "alpha" and env.msg_type == "call.sdp"
    await alpha.dial("bravo")
    await until(
        lambda: (
            bool(mitm.held)
            and any(
                e.sender == "alpha" and e.msg_type.startswith("e2ee.") and e.seq > mitm.held[0].seq
                for e in mitm.sent
                if e not in mitm.held
            )
        ),
        "a key message sent after the offer delivered first",
    )
    await asyncio.sleep(0.3)
    mitm.hold = lambda env: False
    assert await mitm.release() >= 1
    # well before the 10 s after which a transport without media is rebuilt
    await until(
        lambda: (
            bravo.call is not None
            and bravo.call.engine.received("alpha").video_frames > 10
            and alpha.call is not None
            and alpha.call.engine.received("bravo").video_frames > 10
        ),
        "decrypted video both ways",
        timeout=8.0,
    )
    assert bravo.rejected.get("replay", 0) == 0, bravo.rejected
    assert alpha.call.epoch == bravo.call.epoch


async def test_an_offer_the_exchange_never_delivers_is_shown_on_both_sides(
    scene: Scene,
) -> None:
    """The exchange delivers the key agreement but never alpha's SDP: both sides hold the
    epoch and the security code, and no transport carries anything. Neither side shows the
    call as working: alpha's transport carried no media 10 s after it was made, and bravo,
    which never got an offer, has had no transport 10 s after the keys (issue 9, point 9):
    each shows the other reconnecting, with the reason."""
    alpha, bravo, mitm = scene.alpha, scene.bravo, scene.mitm
    mitm.hold = lambda env: env.sender == "alpha" and env.msg_type == "call.sdp"
    await alpha.dial("bravo")
    await until(
        lambda: bool(alpha.call and bravo.call and alpha.call.security_code
                     and alpha.call.security_code == bravo.call.security_code),
        "keys agreed",
    )  # fmt: skip

    async def shown_lost(daemon: TerminalDaemon, peer: str) -> dict[str, Any] | None:
        call = (await daemon.status())["call"] or {}
        seen = (call.get("peers") or {}).get(peer) or {}
        lost = seen.get("transport") == "reconnecting" and seen.get("reachable") is False
        return seen if lost else None

    async def until_lost(daemon: TerminalDaemon, peer: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20.0
        while (seen := await shown_lost(daemon, peer)) is None:
            assert time.monotonic() < deadline, f"{peer} never shown lost (seed {SEED})"
            await asyncio.sleep(0.1)
        return seen

    at_bravo = await until_lost(bravo, "alpha")
    await until_lost(alpha, "bravo")
    assert at_bravo["lost_reason"] == "no transport 10 s after the keys", at_bravo
    assert bravo.call is not None and bravo.call.engine.received("alpha").total == 0


async def test_withheld_frame_digests_counted_on_a_mesh_alarm_on_the_sfu_path(
    scene: Scene,
) -> None:
    """The exchange withholds every frame digest bravo signs (docs/protocol.md §11). On the
    mesh, bravo's frames are bound to its connection: alpha counts them as ``unsigned``
    and raises no alarm. Once alpha checks strictly, as on the SFU path, every frame of
    bravo's it shows is an alarm naming bravo within about 2 s: an event, the status and
    the call log. bravo, whose view of alpha's digests is intact, verifies every frame."""
    alpha, bravo, mitm = scene.alpha, scene.bravo, scene.mitm
    mitm.hold = lambda env: env.sender == "bravo" and env.msg_type == "e2ee.frame_digest"
    await alpha.dial("bravo")

    def flowing() -> bool:
        return (
            alpha.call is not None
            and bravo.call is not None
            and alpha.call.engine.received("bravo").video_frames > 20
            and bravo.call.engine.received("alpha").video_frames > 20
        )

    await until(flowing, "media both ways", timeout=20.0)
    assert alpha.call is not None and bravo.call is not None
    await asyncio.sleep(3.0)
    seen = alpha.call.frame_auth.stats()
    assert seen["unsigned"].get("bravo", 0) > 20, seen
    assert (
        seen["unauthenticated_frame"] == {} and scene.events(alpha, "unauthenticated_frame") == []
    )
    assert bravo.call.frame_auth.stats()["verified"] > 20  # alpha's digests went through
    assert bravo.call.frame_auth.stats()["unauthenticated_frame"] == {}

    alpha.call.strict_digests = True  # as the call session does through the SFU
    strict_at = time.monotonic()
    await until(
        lambda: bool(scene.events(alpha, "unauthenticated_frame")), "an alarm", timeout=10.0
    )
    assert time.monotonic() - strict_at < 4.0  # 2 s deadline + ticks, on a busy host
    alarm = scene.events(alpha, "unauthenticated_frame")[0]
    assert alarm["member"] == "bravo" and alarm["reason"] == "unsigned", alarm
    assert "bravo" in alarm["message"] and alarm["frames"] >= 1
    status = await alpha.status()
    call = status["call"]
    assert call["rejected"]["unauthenticated_frame"] >= 1, call["rejected"]
    assert call["e2ee"]["frame_digests"]["unauthenticated_frame"]["bravo"] >= 1
    assert call["e2ee"]["frame_alarms"][0]["member"] == "bravo"
    logged = [e for e in alpha.call_log.entries() if e.event == "unauthenticated_frame"]
    assert logged and logged[0].payload["member"] == "bravo", logged
