"""The systemd notification protocol (sd_notify(3)), with the standard library only.

A service with ``Type=notify`` tells systemd it is ready by sending ``READY=1`` in one
datagram to the unix socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an
abstract socket); ``STOPPING=1`` when it begins to stop, ``STATUS=...`` for ``systemctl
status``. Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.

With ``WatchdogSec=`` in the unit systemd sets ``$WATCHDOG_USEC``; :func:`keep_alive` then
sends ``WATCHDOG=1`` at half that interval from the event loop, so that a process whose
loop hangs is killed and restarted (``Restart=on-failure``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(*assignments: str) -> bool:
    """Send ``READY=1``, ``STATUS=…`` (one datagram, newline-separated). True if sent; False
    when not under systemd, or when the socket refused it (logged: the unit would time out)."""
    address = os.environ.get(NOTIFY_SOCKET_ENV)
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        log.warning("$%s=%r is not a unix socket: not notified", NOTIFY_SOCKET_ENV, address)
        return False
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message)
    except OSError as exc:
        log.warning("cannot notify systemd through %s: %s", address, exc.strerror or exc)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def stopping(status: str = "stopping") -> bool:
    return notify("STOPPING=1", f"STATUS={status}")


def watchdog_interval() -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, or None when systemd
    asked for none (or asked another process: ``$WATCHDOG_PID``)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def keep_alive() -> None:
    """Feed systemd's watchdog until cancelled (returns at once if there is none)."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
