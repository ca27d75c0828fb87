"""The line screen during readiness checks, in Chromium: a check is a discreet pill (no
ring, no call view, no "call ended" banner), a real call pre-empts it and rings as usual,
and a red line is an alarm a person sees on the line screen (screenshots checked by pixel)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Policy, Role
from hotline.localline import LocalLine
from tests.charters import SPEECH_UNJUDGED
from tests.ui import png
from tests.ui.browser import chromium
from tests.ui.test_ui import login_link

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SITES = {
    "east": [("alpha", Role.PRINCIPAL)],
    "west": [("bravo", Role.PRINCIPAL), ("charlie", Role.AIDE)],
}
RED = (0xC8, 0x41, 0x3B)  # --stop in style.css
GREEN = (0x2F, 0x9E, 0x62)  # --go


def share(shot: bytes, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    """The share of a screenshot's pixels near ``colour``."""
    width, height, channels, pixels = png.decode(shot)
    near = total = 0
    for i in range(0, width * height * channels, channels * 2):
        total += 1
        if all(abs(pixels[i + k] - colour[k]) <= tolerance for k in range(3)):
            near += 1
    return near / total


async def visible(page: Any, selector: str) -> bool:
    return bool(await page.is_visible(selector))


async def test_checks_stay_discreet_are_preempted_and_alarm_on_the_line_screen(
    tmp_path: Path,
) -> None:
    line = LocalLine(tmp_path, "east-west", SITES, policy=Policy(check_thresholds=SPEECH_UNJUDGED))
    line.commission()
    try:
        await line.start_exchange()
        await line.start_terminal("alpha", "--no-scheduled-checks", "--ui", "127.0.0.1:0")
        for tid in ("bravo", "charlie"):
            await line.start_terminal(tid, "--no-scheduled-checks")
        await line.wait_online(["alpha", "bravo", "charlie"])
        async with chromium(tmp_path) as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            await page.goto(await login_link(line))
            await page.wait_for_selector("#terminals li")
            assert (await page.inner_text("#line-ready")) == "line not yet checked"
            assert "none yet" in await page.inner_text("#readiness")

            # bravo checks the line to alpha: alpha's screen shows only the pill
            async with line.control("bravo") as bravo:
                check = asyncio.ensure_future(
                    bravo.request("POST", "/check", {"target": "alpha", "seconds": 4})
                )
                await page.wait_for_selector("#line-check:not(.hidden)", timeout=30_000)
                await page.wait_for_function(
                    "() => document.getElementById('line-check').textContent.includes('bravo')",
                    timeout=30_000,
                )
                shot = await page.screenshot(path=str(tmp_path / "line-check-1280x720.png"))
                assert not await visible(page, "#ring"), "a check rang the principal"
                assert not await visible(page, "#call"), "a check took the screen"
                assert await visible(page, "#idle")
                assert await page.evaluate("document.body.dataset.callState") == "idle"
                assert share(shot, GREEN) < 0.01  # no green ring box, no answer button
                result = await asyncio.wait_for(check, 60)
            assert result["verdict"] in ("green", "amber"), result
            await page.wait_for_selector("#line-check", state="hidden", timeout=15_000)
            assert not await visible(page, "#banner"), await page.inner_text("#banner")
            assert "readiness check" not in await page.inner_text("#recent")  # not a call
            # alpha answered it; bravo's verdict, sent to alpha, is on alpha's line screen
            await page.wait_for_function(
                "() => document.getElementById('line-ready').textContent.startsWith('line ')"
                " && !document.getElementById('line-ready').textContent.includes('not yet')",
                timeout=15_000,
            )
            good = await page.inner_text("#readiness")
            assert f"with bravo (principal), {result['verdict']}" in good, good

            # a real call from charlie during a long check: the check ends, the ring shows
            async with line.control("bravo") as bravo, line.control("charlie") as charlie:
                check = asyncio.ensure_future(
                    bravo.request("POST", "/check", {"target": "alpha", "seconds": 30})
                )
                await page.wait_for_selector("#line-check:not(.hidden)", timeout=30_000)
                await charlie.request("POST", "/call", {"target": "alpha"})
                await page.wait_for_selector("#ring:not(.hidden)", timeout=15_000)
                assert "charlie" in (await page.inner_text("#ring-from")).lower()
                assert not await visible(page, "#line-check")
                await page.screenshot(path=str(tmp_path / "preempted-ring-1280x720.png"))
                preempted = await asyncio.wait_for(check, 60)
                assert preempted["verdict"] == "red" and not preempted["ok"], preempted
                await page.click("#decline")
                await page.wait_for_selector("#ring", state="hidden", timeout=10_000)

            # bravo goes; alpha's own check of bravo is red: an alarm on the line screen
            await line.stop("bravo")
            async with line.control("alpha") as alpha:
                missed = await alpha.request("POST", "/check", {"target": "bravo", "seconds": 1})
            assert missed["verdict"] == "red"
            await page.wait_for_selector("#alarms li", timeout=15_000)
            alarm = await page.inner_text("#alarms")
            assert "Alarm: line to" in alarm and "bravo" in alarm.lower()
            assert "not online" in alarm
            assert (await page.inner_text("#line-ready")).startswith("line alarm")
            await page.screenshot(path=str(tmp_path / "line-alarm-1280x720.png"))
            pill = await page.locator("#line-ready").screenshot()
            assert share(pill, RED) > 0.02, "the alarm pill is not red"
            alarms = await page.locator("#alarms").screenshot()
            assert share(alarms, RED, 60) > 0.001, "the alarm is not marked red"
            # the last good check is still told, with its age
            assert "last good check: with bravo" in await page.inner_text("#readiness")
    finally:
        await line.stop()
