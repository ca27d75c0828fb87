"""Speaker view and gallery: a mesh of three browser-engine terminals (two principals and an
interpreter). The interpreter's page sends a loud tone, the principals mute their
microphones; every page measures the audio it decrypted itself and puts the loud member on
its stage, the others in the strip, with the charter's roles; muting the interpreter on one
page silences it there only."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import Role
from hotline.localline import LocalLine
from tests.ui.browser import chromium
from tests.ui.png import decode, region_stats
from tests.ui.test_browser_engine import call_of, open_engine_page, wait_until

pytestmark = pytest.mark.slow
MEMBERS = ("alpha", "bravo", "charlie")
LOUD = "charlie"

#: every page's microphone: a 440 Hz tone (silent until the test turns it up) instead of
#: the fake device's short beeps
TONE = """(() => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await original(constraints);
    const ctx = new AudioContext();
    const osc = ctx.createOscillator();
    osc.frequency.value = 440;
    const gain = ctx.createGain();
    gain.gain.value = 0;
    const out = ctx.createMediaStreamDestination();
    osc.connect(gain).connect(out);
    osc.start();
    window.hotlineTone = { ctx, gain };
    for (const t of stream.getAudioTracks()) { stream.removeTrack(t); t.stop(); }
    stream.addTrack(out.stream.getAudioTracks()[0]);
    return stream;
  };
})()"""

LOUDNESS = "(g) => { window.hotlineTone.gain.gain.value = g; }"

#: what a page shows: who is on the stage, and every tile of the strip
LAYOUT = """() => {
  const tiles = [...document.querySelectorAll('#strip .tile')].map((t) => ({
    peer: t.dataset.peer, onStage: t.classList.contains('on-stage'),
    visible: t.offsetParent !== null, name: t.querySelector('.tile-name').textContent,
    level: Number(t.dataset.level), heard: Number(t.dataset.heard),
    speaking: t.dataset.speaking === '1', muted: t.querySelector('audio').muted,
    button: t.querySelector('button').textContent,
    playing: t.querySelector('video').videoWidth > 0 }));
  return { stage: document.getElementById('remote').dataset.peer,
           caption: document.getElementById('speaker-name').textContent,
           captionButton: document.getElementById('speaker-mute').textContent,
           strip: !document.getElementById('strip').classList.contains('hidden'), tiles };
}"""


@contextlib.asynccontextmanager
async def three_browser_line(root: Path) -> AsyncIterator[LocalLine]:
    line = LocalLine(
        root,
        "five-capitals",
        {
            "east": [("alpha", Role.PRINCIPAL)],
            "west": [("bravo", Role.PRINCIPAL), ("charlie", Role.INTERPRETER, "fr")],
        },
    )
    line.commission()
    try:
        await line.start_exchange()
        for name in MEMBERS:
            await line.start_terminal(name, "--ui", "127.0.0.1:0", "--engine", "browser")
        await line.wait_online(list(MEMBERS))
        yield line
    finally:
        await line.stop()


def pixel(png: bytes, x: float, y: float) -> tuple[int, int, int]:
    width, _, channels, pixels = decode(png)
    i = (int(y) * width + int(x)) * channels
    return pixels[i], pixels[i + 1], pixels[i + 2]


def is_ring(rgb: tuple[int, int, int]) -> bool:
    """The stage's "speaking" ring (#2f9e62), unlike the fake camera's greens (blue ~0)."""
    return all(abs(c - want) < 30 for c, want in zip(rgb, (47, 158, 98), strict=True))


async def test_the_loud_member_is_large_and_can_be_muted_here(tmp_path: Path) -> None:
    async with three_browser_line(tmp_path) as line, chromium(tmp_path) as browser:
        pages: dict[str, Any] = {}
        for name in MEMBERS:
            context = await browser.new_context(viewport={"width": 1280, "height": 720})
            await context.add_init_script(TONE)
            pages[name] = await open_engine_page(context, line, name)
        await pages["alpha"].select_option("#target", "bravo")
        await pages["alpha"].click("#dial")
        await pages["bravo"].wait_for_selector("#ring:not(.hidden)", timeout=10_000)
        await pages["bravo"].click("#answer")
        for name in ("alpha", "bravo"):  # the principals are silent: microphones muted
            await pages[name].click("#mute-mic", timeout=10_000)
        await wait_until(lambda: _state(line, "alpha", "active"), 15, "alpha and bravo in the call")
        async with line.control("alpha") as alpha:
            await alpha.request("POST", "/invite", {"target": LOUD})
        await pages[LOUD].wait_for_selector("#ring:not(.hidden)", timeout=10_000)
        await pages[LOUD].click("#answer")
        # the page was used (a click): its tone may start; the interpreter speaks
        for page in pages.values():
            await page.evaluate("() => window.hotlineTone.ctx.resume()")
        await pages[LOUD].evaluate(LOUDNESS, 0.3)
        t_answer = time.monotonic()

        async def settled(name: str) -> Any:
            layout = await pages[name].evaluate(LAYOUT)
            others = [m for m in MEMBERS if m != name]
            tiles = {t["peer"]: t for t in layout["tiles"]}
            if sorted(tiles) != others or not all(t["playing"] for t in tiles.values()):
                return None
            if name != LOUD and layout["stage"] != LOUD:
                return None
            return layout

        layouts = {}
        for name in MEMBERS:
            layouts[name] = await wait_until(
                lambda n=name: settled(n), 30, f"{name}: both others shown, the loud one large"
            )
            print(f"{name} after {time.monotonic() - t_answer:.1f} s: {layouts[name]}")
        for name in ("alpha", "bravo"):
            layout = layouts[name]
            tiles = {t["peer"]: t for t in layout["tiles"]}
            other = "bravo" if name == "alpha" else "alpha"
            assert layout["strip"], layout
            assert tiles[LOUD]["onStage"] and not tiles[LOUD]["visible"]
            assert tiles[other]["visible"] and not tiles[other]["onStage"]
            assert layout["caption"] == "charlie · interpreter · fr", layout
            assert layout["captionButton"] == "Mute interpreter"
            assert "principal" in tiles[other]["name"]
            assert tiles[LOUD]["speaking"] and tiles[LOUD]["level"] > 0.02
            assert not tiles[other]["speaking"] and tiles[other]["level"] < 0.008
        # the interpreter's own screen: the two silent principals, roles shown
        own = layouts[LOUD]
        assert all("principal" in t["name"] for t in own["tiles"]), own
        assert not any(t["speaking"] for t in own["tiles"]), own

        # no flicker: the stage stays with the loud member for 3 s, sampled every 100 ms
        seen = set()
        for _ in range(30):
            stage_peer = "() => document.getElementById('remote').dataset.peer"
            seen.add(await pages["alpha"].evaluate(stage_peer))
            await asyncio.sleep(0.1)
        assert seen == {LOUD}, seen

        # what a person sees on alpha's screen: the interpreter large, ringed green as
        # speaking, bravo's video in the strip
        page = pages["alpha"]
        shot = await page.screenshot()
        (tmp_path / "alpha-gallery-1280x720.png").write_bytes(shot)
        stage = await page.locator(".stage").bounding_box()
        tile = await page.locator("#strip .tile[data-peer=bravo]").bounding_box()
        assert stage and tile
        ring = pixel(shot, stage["x"] + 2, stage["y"] + stage["height"] / 2)
        assert is_ring(ring), ring
        # the large video is painted (the fake camera: a green field, a disc, a clock)
        box = (int(stage["x"]) + 40, int(stage["y"]) + 40, int(stage["width"]) - 80, 400)
        lit, colours = region_stats(shot, box, step=3)
        assert lit > 0.5 and colours > 3, (lit, colours)
        box = (int(tile["x"]) + 6, int(tile["y"]) + 6, int(tile["width"]) - 12, 60)
        lit, colours = region_stats(shot, box, step=2)
        assert lit > 0.5 and colours > 2, (lit, colours)  # bravo's video in the strip
        assert tile["y"] > stage["y"] + stage["height"] / 2  # the strip is at the bottom

        # alpha mutes the interpreter on its own screen
        await page.click("#speaker-mute")

        async def muted_here() -> Any:
            layout = await page.evaluate(LAYOUT)
            t = {x["peer"]: x for x in layout["tiles"]}[LOUD]
            return layout if t["muted"] and t["heard"] == 0 and t["level"] > 0.02 else None

        after = await wait_until(muted_here, 5, "the interpreter muted on alpha's screen")
        assert after["captionButton"] == "Unmute here", after
        await asyncio.sleep(0.3)
        shot = await page.screenshot()
        (tmp_path / "alpha-gallery-muted-1280x720.png").write_bytes(shot)
        ring = pixel(shot, stage["x"] + 2, stage["y"] + stage["height"] / 2)
        assert not is_ring(ring), ring  # no "speaking" ring for a member muted here
        # bravo still hears the interpreter: the mute was local
        bravo = {t["peer"]: t for t in (await pages["bravo"].evaluate(LAYOUT))["tiles"]}
        assert not bravo[LOUD]["muted"] and bravo[LOUD]["heard"] > 0.02, bravo[LOUD]
        await page.click("#speaker-mute")  # and back
        await page.wait_for_function(
            "() => !document.querySelector('#strip .tile[data-peer=charlie] audio').muted",
            timeout=5000,
        )
        await pages[LOUD].screenshot(path=str(tmp_path / "charlie-gallery-1280x720.png"))
        # the interpreter stops, bravo speaks (its microphone back on): alpha's stage follows
        await pages[LOUD].evaluate(LOUDNESS, 0)
        await pages["bravo"].click("#mute-mic")
        await pages["bravo"].evaluate(LOUDNESS, 0.3)
        t_turn = time.monotonic()

        async def bravo_on_stage() -> Any:
            layout = await page.evaluate(LAYOUT)
            return layout if layout["stage"] == "bravo" else None

        turned = await wait_until(bravo_on_stage, 15, "bravo on alpha's stage")
        print(f"speaker change on alpha's screen {time.monotonic() - t_turn:.1f} s: {turned}")
        tiles = {t["peer"]: t for t in turned["tiles"]}
        assert turned["caption"] == "bravo · principal"
        assert tiles[LOUD]["visible"] and not tiles[LOUD]["speaking"]  # back in the strip
        await page.screenshot(path=str(tmp_path / "alpha-gallery-bravo-1280x720.png"))

        # alpha leaves: its tile goes from the others' screens, which stay in the call
        await page.click("#hangup")
        await page.wait_for_selector("#idle:not(.hidden)", timeout=10_000)
        assert await page.evaluate("() => !document.querySelector('#strip .tile')")
        await pages["bravo"].wait_for_function(
            "() => !document.querySelector('#strip .tile[data-peer=alpha]')", timeout=15_000
        )
        await pages["bravo"].click("#hangup")
        await pages[LOUD].wait_for_selector("#idle:not(.hidden)", timeout=10_000)


async def _state(line: LocalLine, terminal: str, state: str) -> bool:
    return bool(call_of(await line.status(terminal)).get("state") == state)
