"""Calls that hold on a real link: outages on the lab's link, the same call and keys after.

Alpha's link carries 60 ± 10 ms each way; the outage cuts it both ways (media, signalling,
the exchange). Figures with tighter bounds are in ``bench/bench_netlab.py``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import Impairment, Lab
from tests.netlab.line import call_of, frames, lab_line, sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BOTH_WAYS = [("alpha", "bravo"), ("bravo", "alpha")]
LINK = Impairment(delay_ms=60, jitter_ms=10)


def peer(status: dict[str, Any], other: str) -> dict[str, Any]:
    return (call_of(status).get("peers") or {}).get(other) or {}


async def outage_and_back(netlab: Lab, tmp_path: Path, outage_s: float) -> dict[str, Any]:
    async with lab_line(netlab, tmp_path) as line:
        netlab.link("alpha").set(LINK)
        await line.dial("alpha", "bravo")
        before = await line.wait_media(BOTH_WAYS, min_frames=30)
        call_id = call_of(before["alpha"])["call"]
        epochs = {tid: call_of(s)["epoch"] for tid, s in before.items()}
        netlab.link("alpha").outage(outage_s)
        cut = time.monotonic()
        # lost after 2 s without media; one CLI status call takes about a second under load
        await asyncio.sleep(2.6)
        during = await line.snapshot(["alpha"])
        assert time.monotonic() - cut < outage_s, "the status came too late to judge"
        assert peer(during["alpha"], "bravo").get("reachable") is False, during["alpha"]
        assert call_of(during["alpha"])["peers"]["bravo"]["transport"] == "reconnecting"
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - cut)))
        link_back = time.monotonic()
        shown = frames(during["alpha"], "bravo", "video")

        def flowing_again(statuses: dict[str, Any]) -> bool:
            return all(
                peer(statuses[rx], tx).get("reachable") is True
                and frames(statuses[rx], tx, "video") > 0
                and frames(statuses[rx], tx, "audio") > 0
                for rx, tx in BOTH_WAYS
            )

        after = await line.wait_for(["alpha", "bravo"], flowing_again, "media back", timeout=60)
        back_s = time.monotonic() - link_back
        await asyncio.sleep(3.0)
        final = await line.snapshot(["alpha", "bravo"])
        for rx, tx in BOTH_WAYS:
            call = call_of(final[rx])
            assert call["call"] == call_id and call["state"] == "active"
            # the keys outlive the transport: no new epoch was needed for the outage
            assert call["epoch"] == epochs[rx], (call["epoch"], epochs[rx])
            video = sink(final[rx], tx, "video")
            assert video.get("corrupt_shown", 0) == 0, video
            assert peer(final[rx], tx)["outages"] >= 1
        assert frames(final["alpha"], "bravo", "video") > shown + 60  # the same sink goes on
        await line.hangup("alpha")
        return {"back_s": back_s, "after": after, "final": final}


async def test_a_five_second_outage_resumes_the_same_call(netlab: Lab, tmp_path: Path) -> None:
    result = await outage_and_back(netlab, tmp_path, 5.0)
    # polled through the CLI (~1 s a poll under load); the bench measures it precisely
    assert result["back_s"] < 8.0, result["back_s"]


async def test_a_thirty_five_second_outage_rebuilds_the_transport(
    netlab: Lab, tmp_path: Path
) -> None:
    """Past ICE consent (~30 s) aiortc closes the transport: the call rebuilds it."""
    result = await outage_and_back(netlab, tmp_path, 35.0)
    assert result["back_s"] < 15.0, result["back_s"]
    for rx, tx in BOTH_WAYS:
        assert peer(result["final"][rx], tx)["attempts"] >= 2  # a new transport was made
