"""How long-running commands (an exchange, a terminal) wait to be told to stop."""

from __future__ import annotations

import asyncio
import signal


async def until_terminated() -> None:
    """Return once the process receives SIGINT or SIGTERM (then shut down cleanly)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
