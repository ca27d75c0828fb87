"""The caller's check result, kept by the callee: only from the check's caller, about the
callee, once, and never in a real call (in-process daemons behind the exchange double)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotline.check.probe import run_check
from hotline.encoding import encode
from tests.charters import SPEECH_UNJUDGED
from tests.terminal.test_hostile_exchange import Scene, scene, until

__all__ = ["scene"]  # the fixture, used by name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def record(by: str, peer: str, verdict: str = "green") -> dict[str, Any]:
    return {"by": by, "peer": peer, "verdict": verdict, "time": 1, "ok": True, "reasons": []}


async def test_only_the_checks_caller_may_hand_its_result_to_the_callee(scene: Scene) -> None:
    alpha, bravo = scene.alpha, scene.bravo
    # both daemons share this process's event loop: on a loaded host their audio stalls, and
    # PESQ says so; this test is about who may hand over a result, not speech
    check = asyncio.ensure_future(run_check(alpha, "bravo", seconds=3, thresholds=SPEECH_UNJUDGED))
    await until(
        lambda: (
            alpha.call is not None
            and alpha.call.machine.state.value == "active"
            and bravo.call is not None
            and bravo.call.machine.state.value == "active"
        ),
        "the check call up at both ends",
        timeout=30,
    )
    assert alpha.call is not None and bravo.call is not None
    call_id = alpha.call.call_id
    # the callee may not hand a verdict to the caller; nor may the caller misname the callee
    forged = encode({"call": call_id, "result": record("bravo", "alpha")})
    await alpha.call.receive("bravo", "check.result", forged)
    misnamed = encode({"call": call_id, "result": record("alpha", "charlie")})
    await bravo.call.receive("alpha", "check.result", misnamed)
    bad_verdict = encode({"call": call_id, "result": record("alpha", "bravo", "blue")})
    await bravo.call.receive("alpha", "check.result", bad_verdict)
    assert alpha.call.rejected.get("call_protocol") == 1
    assert bravo.call.rejected.get("call_protocol") == 2
    result = await asyncio.wait_for(check, 60)
    assert result.ok, result
    # the genuine one was kept, once, with the caller's verdict
    await until(lambda: len([c for c in bravo.checks if c.get("by") == "alpha"]) == 1, "kept")
    held = [c for c in bravo.checks if c.get("by") == "alpha"]
    assert held[0]["verdict"] == result.verdict and held[0]["peer"] == "bravo"
    assert bravo.readiness_status()["last_good"]["peer"] == "alpha"
    assert not [c for c in alpha.checks if c.get("by") == "bravo"]

    # in a real call a check result is refused
    await alpha.dial("bravo")  # bravo answers by itself in this scene
    await until(
        lambda: bravo.call is not None and bravo.call.machine.state.value == "active",
        "a real call",
        timeout=30,
    )
    assert bravo.call is not None and alpha.call is not None
    real = encode({"call": alpha.call.call_id, "result": record("alpha", "bravo")})
    await bravo.call.receive("alpha", "check.result", real)
    assert bravo.call.rejected.get("call_protocol") == 1
    assert len([c for c in bravo.checks if c.get("by") == "alpha"]) == 1
    await alpha.hangup()
