"""The exchange is untrusted and may be down: a terminal starts without it, a running call
goes on peer to peer while it is away, and a charter's second exchange takes over (and
hands back) when the first does not answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Policy, Role
from hotline.localline import LocalLine
from tests.terminal.test_calls import call_of, media_flows, sink, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BOTH = [("alpha", "bravo"), ("bravo", "alpha")]
SITES = {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]}


def exchange(status: dict[str, Any]) -> dict[str, Any]:
    return status["exchange"]


async def test_a_terminal_starts_without_the_exchange_and_connects_when_it_comes(
    tmp_path: Path,
) -> None:
    line = LocalLine(tmp_path, "east-west", SITES)
    line.commission()
    try:
        await line.start_terminal("alpha")
        await line.wait_control("alpha")
        status = await line.status("alpha")
        assert exchange(status)["connected"] is False
        assert exchange(status)["state"] == "unreachable"
        line.check_alive("alpha")  # it did not exit
        await asyncio.sleep(1.0)
        await line.start_exchange()
        came = time.monotonic()
        await line.start_terminal("bravo", "--auto-answer")
        await line.wait_online(["alpha", "bravo"])
        assert time.monotonic() - came < 10
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
        await wait_for(line, ["alpha", "bravo"], lambda s: media_flows(s, BOTH), "media")
    finally:
        await line.stop()


async def test_a_call_outlives_the_exchange_and_rekeys_when_it_returns(tmp_path: Path) -> None:
    line = LocalLine(tmp_path, "east-west", SITES, policy=Policy(rekey_interval_s=5))
    line.commission()
    try:
        await line.start_exchange()
        await line.start_terminal("alpha")
        await line.start_terminal("bravo", "--auto-answer")
        await line.wait_online(["alpha", "bravo"])
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
        before = await wait_for(line, ["alpha", "bravo"], lambda s: media_flows(s, BOTH), "media")
        frames = sink(before["alpha"], "bravo", "video")["frames"]
        line.procs["exchange"].kill()
        await line.procs["exchange"].wait()
        await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: all(not exchange(x)["connected"] for x in s.values()),
            "both terminals to see the exchange gone",
            timeout=15,
        )
        await asyncio.sleep(3.0)
        during = {t: await line.status(t) for t in ("alpha", "bravo")}
        # media goes on peer to peer, on the same call
        assert sink(during["alpha"], "bravo", "video")["frames"] > frames + 30
        assert call_of(during["alpha"])["state"] == "active"
        epoch = max(call_of(x)["epoch"] for x in during.values())
        await line.start_exchange()
        back = time.monotonic()
        await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: all(exchange(x)["connected"] for x in s.values()),
            "signalling back",
            timeout=15,
        )
        assert time.monotonic() - back < 5.0 + 2.0  # backoff at most 4 s apart, plus start
        # the next rekey goes through the exchange again: a newer epoch on both sides
        after = await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: (
                all(call_of(x)["epoch"] > epoch for x in s.values())
                and len({call_of(x)["security_code"] for x in s.values()}) == 1
            ),
            "a rekey after the exchange returned",
            timeout=30,
        )
        assert all(call_of(x)["state"] == "active" for x in after.values())
    finally:
        await line.stop()


async def test_a_second_exchange_takes_over_and_hands_back(tmp_path: Path) -> None:
    line = LocalLine(tmp_path, "east-west", SITES, exchanges=2)
    line.commission()
    first, second = line.exchange_ports
    try:
        await line.start_exchange(0)
        await line.start_exchange(1)
        await line.start_terminal("alpha")
        await line.start_terminal("bravo", "--auto-answer")
        await line.wait_online(["alpha", "bravo"])
        statuses = {t: await line.status(t) for t in ("alpha", "bravo")}
        assert all(f":{first}/" in exchange(x)["url"] for x in statuses.values())
        assert all(len(exchange(x)["endpoints"]) == 2 for x in statuses.values())

        line.procs["exchange"].kill()
        await line.procs["exchange"].wait()
        killed = time.monotonic()
        await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: (
                all(
                    exchange(x)["connected"] and f":{second}/" in exchange(x)["url"]
                    for x in s.values()
                )
                and all({"alpha", "bravo"} <= set(exchange(x)["online"]) for x in s.values())
            ),
            "both terminals on the second exchange",
            timeout=15,
        )
        assert time.monotonic() - killed < 5.0
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
        await wait_for(line, ["alpha", "bravo"], lambda s: media_flows(s, BOTH), "a call")
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/hangup")

        await line.start_exchange(0)
        await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: all(
                exchange(x)["connected"] and f":{first}/" in exchange(x)["url"] for x in s.values()
            ),
            "both terminals back on the first exchange",
            timeout=20,
        )
    finally:
        await line.stop()
