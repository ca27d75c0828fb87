"""One process per folder: an exclusive ``flock`` on a lock file that names its holder.

A terminal (two processes with one identity would push each other off the exchange) and an
exchange (two servers on one store would hand out the same delivery ids and undo each
other's writes) each hold one for as long as they run. The kernel drops the lock when the
process ends, however it ends, so a crash leaves nothing to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hotline.errors import StateError


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
