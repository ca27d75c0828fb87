"""A browser-engine terminal's page reloads mid-call: the send key is never used with a
frame counter twice (the new page's worker would start again at 0).

alpha (the lower id, so the epochs' leader) runs ``--engine browser`` with its page in a
real Chromium; bravo is a Python terminal in this process, whose frame crypto records the
(KID, counter) of every frame it accepts from alpha.
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


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[LocalLine]:
    line = LocalLine(
        tmp_path,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        policy=Policy(rekey_interval_s=600),  # no periodic rekey during the test
    )
    line.commission()
    try:
        await line.start_exchange()
        await line.start_terminal("alpha", "--ui", "127.0.0.1:0", "--engine", "browser")
        yield line
    finally:
        await line.stop()


def epoch_of(kid: int) -> int:
    return kid >> 8


async def test_a_reloaded_page_sends_only_under_a_new_epoch(
    line: LocalLine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = recording(monkeypatch)
    bravo: TerminalDaemon = await line.start_in_process(
        "bravo", auto_answer=True, width=320, height=180, fps=15
    )
    try:
        await wait_until(
            lambda: _true(bravo.client.connected and "alpha" in bravo.client.online),
            20,
            "bravo online with alpha",
        )
        await line.wait_online(["alpha"])
        async with chromium(tmp_path) as browser:
            frames: list[str] = []
            page = await open_engine_page(browser, line, "alpha", frames)
            await page.select_option("#target", "bravo")
            await page.click("#dial")

            def from_alpha(epoch: int | None = None) -> list[tuple[int, int]]:
                return [  # alpha is index 0 of the sorted roster (alpha, bravo)
                    (k, c)
                    for k, c in list(accepted)
                    if k & 0xFF == 0 and (epoch is None or epoch_of(k) == epoch)
                ]

            async def media(count: Callable[[], int], n: int = 60) -> bool:
                return bravo.call is not None and count() >= n

            await wait_until(
                lambda: media(lambda: len(from_alpha())), 30, "bravo accepts alpha's frames"
            )
            first = call_of(await line.status("alpha"))["epoch"]
            assert first is not None
            before = len(from_alpha(first))
            print(f"epoch {first}: bravo accepted {before} frames from alpha's page")
            frames.clear()
            t_reload = time.monotonic()
            await page.reload()

            async def resumed() -> bool:
                replayed = "replay" in call_of(await bravo.status())["e2ee"]["rejected"]
                return replayed or any(epoch_of(k) > first for k, _ in from_alpha()[-20:])

            await wait_until(resumed, 40, "alpha's frames under a new epoch after the reload")
            took = time.monotonic() - t_reload
            await asyncio.sleep(1.0)
            b = call_of(await bravo.status())
            # a counter used twice under a key is refused as a replay by the receiver
            assert "replay" not in b["e2ee"]["rejected"], b["e2ee"]
            await wait_until(
                lambda: media(lambda: sum(epoch_of(k) > first for k, _ in from_alpha())),
                20,
                "more frames under the new epoch",
            )
            a, b = call_of(await line.status("alpha")), call_of(await bravo.status())
            pairs = from_alpha()
            new_epochs = sorted({epoch_of(k) for k, _ in pairs} - {first})
            print(
                f"reload: bravo accepted alpha's frames under epoch(s) {new_epochs} "
                f"{took:.1f} s after it; {len(pairs)} frames in all, {len(set(pairs))} "
                f"distinct (kid, ctr); bravo rejected {b['e2ee']['rejected']}; "
                f"alpha rejected {a['rejected']}"
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
    finally:
        await bravo.stop()


async def _true(value: bool) -> bool:
    return value
