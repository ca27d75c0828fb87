"""One process per folder: an exclusive ``flock`` on a lock file that names its holder.

A terminal (two processes with one identity would push each other off the exchange) and an
exchange (two servers on one store would hand out the same delivery ids and undo each
other's writes) each hold one for as long as they run. The kernel drops the lock when the
process ends, however it ends, so a crash leaves nothing to clean up.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

from hotline.errors import StateError, StillRunning


def holder(path: Path) -> int | None:
    """The pid of the process holding the lock at ``path``, or None if nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def hold(path: Path, busy: str) -> int:
    """Take the lock at ``path`` for the life of this process and return its descriptor.
    If another process holds it, raise :class:`StateError` with ``busy`` and its pid."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateError(f"{busy} (pid {other})", reason="locked") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def stop(path: Path, timeout_s: float, *, what: str) -> int | None:
    """Ask the process holding the lock at ``path`` to end (SIGTERM: it closes its calls and
    connections as on Ctrl-C) and wait until the lock is free. Returns its pid, or None if
    nothing held the lock. Raises :class:`StateError` when the holder cannot be signalled
    (another user's) and :class:`StillRunning` when it is still running after
    ``timeout_s``."""
    pid = holder(path)
    if pid is None:
        return None
    if pid <= 0:
        raise StateError(f"{what} is running but its lock names no pid; stop it by hand")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended between the look and the signal (or runs in another pid namespace)
    except PermissionError:
        raise StateError(
            f"{what} is running as another user (pid {pid}); stop it as that user",
            reason="locked",
        ) from None
    deadline = time.monotonic() + timeout_s
    while holder(path) is not None:
        if time.monotonic() >= deadline:
            raise StillRunning(f"{what} (pid {pid}) is still running {timeout_s:g} s after SIGTERM")
        time.sleep(0.1)
    return pid
