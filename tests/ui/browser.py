"""Debian's Chromium driven by Playwright (never `playwright install`), for the UI tests."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"
#: fake camera and microphone, loopback ICE, and no background traffic off the machine
FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


def require_browser() -> None:
    """Skip without Chromium or Playwright (fail in CI)."""
    require(Path(CHROMIUM).exists() or shutil.which("chromium") is not None, "no chromium")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        require(False, "playwright is not installed")


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Any]:
    """A headless Chromium (Playwright gives it a fresh temporary profile)."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
        )
        try:
            yield browser
        finally:
            await browser.close()
