"""A browser-engine terminal's page reloads mid-call: the send key is never used with a
frame counter twice (the new page's worker would start again at 0).

One terminal runs ``--engine browser`` with its page in a real Chromium, the other is a
Python terminal in this process, whose frame crypto records the (KID, counter) of every
frame it accepts from the page. alpha (the lower id) leads the epochs: as alpha, the
browser terminal rekeys at once; as bravo, it asks alpha for the new epoch (``e2ee.rekey``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hotline.charter import Policy, Role
from hotline.e2ee import sframe
from hotline.e2ee.media import MediaCrypto
from hotline.localline import LocalLine
from hotline.terminal.daemon import TerminalDaemon
from tests.ui.browser import chromium
from tests.ui.test_browser_engine import call_of, open_engine_page, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def recording(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(kid, ctr) of every frame a MediaCrypto of this process accepts, in order."""
    accepted: list[tuple[int, int]] = []
    unprotect = MediaCrypto.unprotect

    def wrapped(self: MediaCrypto, kind: str, data: bytes, peer: str | None = None) -> bytes:
        plain = unprotect(self, kind, data, peer)
        start = 0 if kind == "audio" else (3 if data[0] & 0x01 else 10)
        kid, ctr, _ = sframe.decode_header(data, start)
        accepted.append((kid, ctr))
        return plain

    monkeypatch.setattr(MediaCrypto, "unprotect", wrapped)
    return accepted


@pytest.fixture(params=["alpha", "bravo"])
def web(request: pytest.FixtureRequest) -> str:
    """The terminal whose page is its media engine."""
    return str(request.param)


@pytest.fixture
async def line(tmp_path: Path, web: str) -> AsyncIterator[LocalLine]:
    line = LocalLine(
        tmp_path,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        policy=Policy(rekey_interval_s=600),  # no periodic rekey during the test
    )
    line.commission()
    try:
        await line.start_exchange()
        await line.start_terminal(web, "--ui", "127.0.0.1:0", "--engine", "browser")
        yield line
    finally:
        await line.stop()


def epoch_of(kid: int) -> int:
    return kid >> 8


async def test_a_reloaded_page_sends_only_under_a_new_epoch(
    line: LocalLine, web: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = recording(monkeypatch)
    python = "bravo" if web == "alpha" else "alpha"
    index = 0 if web == "alpha" else 1  # the page's sender index in the roster (alpha, bravo)
    py_daemon: TerminalDaemon = await line.start_in_process(  # the Python terminal
        python, auto_answer=True, width=320, height=180, fps=15
    )
    try:
        await wait_until(
            lambda: _true(py_daemon.client.connected and web in py_daemon.client.online),
            20,
            f"{python} online with {web}",
        )
        await line.wait_online([web])
        async with chromium(tmp_path) as browser:
            page = await open_engine_page(browser, line, web)
            await page.select_option("#target", python)
            await page.click("#dial")

            def from_page(epoch: int | None = None) -> list[tuple[int, int]]:
                return [
                    (k, c)
                    for k, c in list(accepted)
                    if k & 0xFF == index and (epoch is None or epoch_of(k) == epoch)
                ]

            async def media(count: Callable[[], int], n: int = 60) -> bool:
                return py_daemon.call is not None and count() >= n

            await wait_until(
                lambda: media(lambda: len(from_page())),
                30,
                "the Python terminal accepts the page's frames",
            )
            first = call_of(await line.status(web))["epoch"]
            assert first is not None
            before = len(from_page(first))
            print(f"epoch {first}: {python} accepted {before} frames from {web}'s page")
            # what the reloaded page receives: its WebSocket is the one opened from now on
            frames: list[str] = []

            def collect(frame: str) -> None:
                frames.append(frame)

            page.on("websocket", lambda ws: ws.on("framereceived", collect))
            t_reload = time.monotonic()
            await page.reload()

            async def resumed() -> bool:
                replayed = "replay" in call_of(await py_daemon.status())["e2ee"]["rejected"]
                return replayed or any(epoch_of(k) > first for k, _ in from_page()[-20:])

            await wait_until(resumed, 40, "the page's frames under a new epoch after the reload")
            took = time.monotonic() - t_reload
            await asyncio.sleep(1.0)
            b = call_of(await py_daemon.status())
            # a counter used twice under a key is refused as a replay by the receiver
            assert "replay" not in b["e2ee"]["rejected"], b["e2ee"]
            await wait_until(
                lambda: media(lambda: sum(epoch_of(k) > first for k, _ in from_page())),
                20,
                "more frames under the new epoch",
            )
            a, b = call_of(await line.status(web)), call_of(await py_daemon.status())
            pairs = from_page()
            new_epochs = sorted({epoch_of(k) for k, _ in pairs} - {first})
            print(
                f"reload of {web}'s page: {python} accepted its frames under epoch(s) "
                f"{new_epochs} {took:.1f} s after it; {len(pairs)} frames in all, "
                f"{len(set(pairs))} distinct (kid, ctr); {python} rejected "
                f"{b['e2ee']['rejected']}, key messages {b['e2ee']['key_messages_rejected']}; "
                f"{web} rejected {a['rejected']}"
            )
            # no (kid, ctr) twice: no AES-GCM nonce reused under one key
            assert len(pairs) == len(set(pairs)), "a frame counter was used twice under a key"
            assert new_epochs and a["epoch"] > first
            assert "replay" not in b["e2ee"]["rejected"], b["e2ee"]
            assert a["rejected"].get("page_send_key_withheld") == 1, a["rejected"]
            # the new page was told why it sent nothing, and never got the old send key
            messages = [json.loads(f) for f in frames]
            ops = [(m.get("op"), m.get("epoch")) for m in messages if m.get("type") == "keys"]
            assert ("pause", None) in ops and ("send", first) not in ops, ops
            assert any(
                m.get("type") == "event" and "e2ee_sending_paused" in json.dumps(m)
                for m in messages
            ), [m.get("type") for m in messages]
            assert ("send", a["epoch"]) in ops or any(op == "send" and e > first for op, e in ops)
            assert a["state"] == "active" and a["e2ee"]["sending_epoch"] > first
            assert b["e2ee"]["key_messages_rejected"] == {}, b["e2ee"]
    finally:
        await py_daemon.stop()


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("web", ["alpha"])
async def test_a_page_another_takes_over_from_stops_and_stays_closed(
    line: LocalLine, web: str, tmp_path: Path
) -> None:
    """A second window opened on the terminal becomes its media engine; the first is told
    (WebSocket close code 4001): it stops its engine (camera, peer connections, the worker
    and its keys), says why, and does not reconnect (it would take the screen back)."""
    await line.wait_online([web])
    async with chromium(tmp_path) as browser:
        first = await open_engine_page(browser, line, web)
        reopened: list[str] = []
        # the page's own connection; its worker's hash channel may open late on a starved
        # host, and takes nothing back (its token is the superseded engine's: closed 4003)
        first.on(
            "websocket",
            lambda ws: None if ws.url.endswith("/api/hashes") else reopened.append(ws.url),
        )
        second = await open_engine_page(browser, line, web)
        await wait_until(
            lambda: first.evaluate("() => !window.hotlineEngine"), 10, "the first page stops"
        )
        banner = await first.inner_text("#banner")
        assert "another window took over" in banner, banner
        await asyncio.sleep(2.5)  # a dropped page reconnects after 1 s
        assert reopened == [], reopened
        assert await first.evaluate("() => !window.hotlineEngine")
        assert await second.evaluate("() => !!(window.hotlineEngine && window.hotlineEngine.local)")
        assert (await line.status(web))["page_engine"] is True
        await first.reload()  # the first window takes the screen back on request
        await wait_until(
            lambda: first.evaluate("() => !!(window.hotlineEngine && window.hotlineEngine.local)"),
            10,
            "the reloaded first page's engine",
        )
        await wait_until(
            lambda: second.evaluate("() => !window.hotlineEngine"), 10, "the second page stops"
        )
