"""A call outlives its transport: a frozen peer comes back on the same call and keys, a
killed peer is shown unreachable at once and dropped after the charter's peer timeout.

The outage here is a whole peer process stopped with SIGSTOP (no media, no signalling, no
ICE consent answers) and resumed with SIGCONT; the network lab's tests cut a real link."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Policy
from hotline.localline import LocalLine
from tests.terminal.test_calls import call_of, media_flows, running_line, sink, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BOTH = [("alpha", "bravo"), ("bravo", "alpha")]


def peer(status: dict[str, Any], other: str) -> dict[str, Any]:
    return (call_of(status).get("peers") or {}).get(other) or {}


async def call_events(line: LocalLine, tid: str) -> list[dict[str, Any]]:
    async with line.control(tid) as control:
        result: list[dict[str, Any]] = await control.request("GET", "/events?since=0")
        return result


async def test_a_frozen_peer_comes_back_on_the_same_call_and_keys(tmp_path: Path) -> None:
    async with running_line(tmp_path, Policy(peer_timeout_s=60)) as line:
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
        before = await wait_for(line, ["alpha", "bravo"], lambda s: media_flows(s, BOTH), "media")
        call_id = call_of(before["alpha"])["call"]
        epoch = call_of(before["alpha"])["epoch"]
        bravo = line.procs["bravo"]
        os.kill(bravo.pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            lost = await wait_for(
                line,
                ["alpha"],
                lambda s: peer(s["alpha"], "bravo").get("transport") == "reconnecting",
                "alpha to show bravo as reconnecting",
                timeout=10,
            )
            shown_after = time.monotonic() - stopped
            assert shown_after < 4.0, shown_after  # 2 s without media, polled every 0.25 s
            assert peer(lost["alpha"], "bravo")["reachable"] is False
            assert peer(lost["alpha"], "bravo")["reconnecting_since"] is not None
            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - stopped)))
        finally:
            os.kill(bravo.pid, signal.SIGCONT)
        resumed = time.monotonic()
        frames0 = sink(lost["alpha"], "bravo", "video").get("frames", 0)

        def back(s: dict[str, dict[str, Any]]) -> bool:
            p = peer(s["alpha"], "bravo")
            return p.get("reachable") is True and p.get("transport") != "reconnecting"

        after = await wait_for(line, ["alpha", "bravo"], back, "alpha to see bravo back", 20)
        recovered_in = time.monotonic() - resumed
        after = await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: (
                media_flows(s, BOTH)
                and sink(s["alpha"], "bravo", "video").get("frames", 0) != frames0
            ),
            "media both ways again",
            timeout=20,
        )
        # the same call, the same keys: no new epoch was needed for a transport
        for tid in ("alpha", "bravo"):
            assert call_of(after[tid])["call"] == call_id
            assert call_of(after[tid])["state"] == "active"
            assert call_of(after[tid])["epoch"] == epoch
        assert peer(after["alpha"], "bravo")["outages"] >= 1
        assert recovered_in < 10.0, recovered_in
        kinds = [e["kind"] for e in await call_events(line, "alpha")]
        assert "transport_lost" in kinds and "transport_recovered" in kinds
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/hangup")
        await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: all(call_of(x).get("cosigned") for x in s.values()),
            "co-signed summaries",
        )
    entries = [e.event for e in _log_entries(line, "alpha")]
    assert "transport_failure" in entries and "transport_recovered" in entries


async def test_a_killed_peer_is_shown_at_once_and_dropped_after_the_peer_timeout(
    tmp_path: Path,
) -> None:
    async with running_line(tmp_path, Policy(peer_timeout_s=5)) as line:
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
        await wait_for(line, ["alpha", "bravo"], lambda s: media_flows(s, BOTH), "media")
        line.procs["bravo"].kill()
        killed = time.monotonic()
        await line.procs["bravo"].wait()
        await wait_for(
            line,
            ["alpha"],
            lambda s: peer(s["alpha"], "bravo").get("reachable") is False,
            "alpha to show bravo unreachable",
            timeout=10,
        )
        assert time.monotonic() - killed < 4.0
        ended = await wait_for(
            line,
            ["alpha"],
            lambda s: call_of(s["alpha"]).get("state") == "ended",
            "the call to end after the peer timeout",
            timeout=20,
        )
        assert time.monotonic() - killed < 2.0 + 5.0 + 3.0
        assert "bravo unreachable" in call_of(ended["alpha"])["end_reason"]
        kinds = [e["kind"] for e in await call_events(line, "alpha")]
        assert "peer_unreachable" in kinds, kinds
        # nothing blocks the next call: bravo restarts and alpha calls it again
        await line.start_terminal("bravo", "--auto-answer")
        await line.wait_online(["alpha", "bravo"])
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/call", {"target": "bravo"})
        await wait_for(line, ["alpha", "bravo"], lambda s: media_flows(s, BOTH), "a new call")


def _log_entries(line: LocalLine, tid: str) -> list[Any]:
    from hotline.calllog import CallLog, log_path

    log = CallLog.open(log_path(line.terminal_dir(tid)))
    try:
        return list(log.entries())
    finally:
        log.close()
