"""Call N of a long-running terminal is as good as call 1.

The terminal opens its media source once; every peer connection of every call takes its
own view of it and gives it back when it closes (``hotline.media.fanout``). Before that,
each call left a reader on the source behind, and call N got 1/N of the frames."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Policy
from tests.terminal.test_calls import call_of, media_flows, running_line, sink, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CALLS = 20
WINDOW_S = 1.0


async def one_call(line: Any) -> dict[str, float]:
    """Place a call alpha → bravo, measure it, hang up; returns set-up time and rates."""
    async with line.control("alpha") as alpha:
        started = time.monotonic()
        await alpha.request("POST", "/call", {"target": "bravo"})
        await wait_for(
            line,
            ["alpha", "bravo"],
            lambda s: media_flows(s, [("alpha", "bravo"), ("bravo", "alpha")]),
            "media both ways",
        )
        setup = time.monotonic() - started
        before = {t: await line.status(t) for t in ("alpha", "bravo")}
        t0 = time.monotonic()
        await asyncio.sleep(WINDOW_S)
        after = {t: await line.status(t) for t in ("alpha", "bravo")}
        dt = time.monotonic() - t0
        rates: dict[str, float] = {"setup_s": setup}
        for rx, tx in (("alpha", "bravo"), ("bravo", "alpha")):
            for kind in ("video", "audio"):
                frames = sink(after[rx], tx, kind)["frames"] - sink(before[rx], tx, kind)["frames"]
                rates[f"{rx}_{kind}_fps"] = frames / dt
        await alpha.request("POST", "/hangup")
    await wait_for(
        line,
        ["alpha", "bravo"],
        lambda s: all(call_of(x).get("state") == "ended" for x in s.values()),
        "the call to end on both sides",
    )
    return rates


async def test_twenty_calls_in_one_terminal_process(tmp_path: Path) -> None:
    async with running_line(tmp_path, Policy()) as line:
        results = [await one_call(line) for _ in range(CALLS)]
    first, last = results[0], results[-1]
    for key in first:
        if key.endswith("video_fps"):
            # 30 fps sent; a shared reader left behind by earlier calls would halve this
            assert last[key] >= 0.75 * first[key], (key, results)
            assert last[key] > 20, (key, results)
        elif key.endswith("audio_fps"):
            assert last[key] >= 0.85 * first[key], (key, results)
            assert last[key] > 40, (key, results)  # 50 frames/s of 20 ms
    setups = sorted(r["setup_s"] for r in results)
    # set-up does not grow with the number of calls made (median of the last five)
    assert sorted(r["setup_s"] for r in results[-5:])[2] < 2.5 * setups[len(setups) // 2] + 0.5
