"""How long-running commands (an exchange, a terminal) wait to be told to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from hotline import sdnotify


async def until_terminated(ready: Callable[[], None] | None = None) -> None:
    """Return once the process receives SIGINT or SIGTERM (then shut down cleanly).

    ``ready`` (the "ready" line, the readiness notification to systemd) is called once the
    handlers are in place: whoever is told the process is ready may stop it at once. From
    then on systemd's watchdog, if the unit has one, is fed while the event loop runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog: asyncio.Task[None] | None = None
    try:
        if ready is not None:
            ready()
        watchdog = asyncio.create_task(sdnotify.keep_alive())
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
