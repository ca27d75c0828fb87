"""Real calls across the lab's link: exchange and terminals as CLI processes in three hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netlab import Impairment, Lab
from tests.netlab.line import call_of, frames, lab_line

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BOTH_WAYS = [("alpha", "bravo"), ("bravo", "alpha")]


async def call_and_check(netlab: Lab, tmp_path: Path, impairment: Impairment) -> None:
    async with lab_line(netlab, tmp_path) as line:
        netlab.link("alpha").set(impairment)  # alpha's link, both ways: alpha<->bravo and exchange
        await line.dial("alpha", "bravo")
        statuses = await line.wait_media(BOTH_WAYS, min_frames=30)
        codes = {call_of(s).get("security_code") for s in statuses.values()}
        assert len(codes) == 1 and None not in codes
        for rx, tx in BOTH_WAYS:
            assert frames(statuses[rx], tx, "video") >= 30
            assert frames(statuses[rx], tx, "audio") >= 30
        counters = netlab.counters()["alpha"]
        assert counters["egress"].forwarded > 100 and counters["ingress"].forwarded > 100
        await line.hangup("alpha")
        await line.wait_for(
            ["alpha", "bravo"],
            lambda s: all(call_of(x).get("state") in (None, "ended") for x in s.values()),
            "the call ended on both sides",
        )


async def test_call_across_60ms_jitter_10ms(netlab: Lab, tmp_path: Path) -> None:
    await call_and_check(netlab, tmp_path, Impairment(delay_ms=60, jitter_ms=10))


async def test_call_across_2_percent_loss(netlab: Lab, tmp_path: Path) -> None:
    await call_and_check(netlab, tmp_path, Impairment(delay_ms=60, jitter_ms=10, loss=0.02))
    assert netlab.counters()["alpha"]["egress"].dropped["loss"] > 0


async def test_exchange_restart_and_a_killed_terminal(netlab: Lab, tmp_path: Path) -> None:
    async with lab_line(netlab, tmp_path) as line:
        await line.restart_exchange()
        await line.wait_online(["alpha", "bravo"])  # both came back through the link
        await line.kill("bravo")
        assert line.procs["bravo"].returncode is not None
        statuses = await line.wait_for(
            ["alpha"],
            lambda s: "bravo" not in s["alpha"]["exchange"]["online"],
            "alpha sees bravo gone",
        )
        assert statuses["alpha"]["exchange"]["connected"]
