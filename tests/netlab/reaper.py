"""Cleans up a network lab's namespaces: kills every process inside them, then deletes them.

Stdlib only and runnable on its own: ``python reaper.py PREFIX`` waits until its stdin closes
(the lab closed it, or the test process died, even by SIGKILL), then removes every namespace
whose name starts with PREFIX. The lab also calls :func:`cleanup` itself when it closes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

#: lab namespace names: hlab<pid of the test process>x<4 hex>-<host>
NAME = re.compile(r"^(hlab(\d+)x[0-9a-f]{4}-)")


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def kill_all(names: list[str], grace_s: float) -> None:
    """SIGTERM every process in the namespaces, SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for ns in names for p in pids(ns)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 2.0)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for ns in names for p in pids(ns)]
        if not left:
            return


def cleanup(prefix: str, grace_s: float = 2.0) -> list[str]:
    """Kill the processes in, and delete, every namespace named PREFIX...; returns the names."""
    names = [ns for ns in namespaces() if ns.startswith(prefix)]
    if names:
        kill_all(names, grace_s)
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    return names


def sweep_stale() -> list[str]:
    """Remove labs left behind by test processes that no longer exist."""
    removed: list[str] = []
    for prefix in {m.group(1) for ns in namespaces() if (m := NAME.match(ns))}:
        pid = int(NAME.match(prefix).group(2))  # type: ignore[union-attr]
        if not os.path.exists(f"/proc/{pid}"):
            removed += cleanup(prefix, grace_s=0.5)
    return removed


def main() -> None:
    prefix = sys.argv[1]
    if not NAME.match(prefix):
        raise SystemExit(f"not a lab prefix: {prefix!r}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the lab's process closes the pipe or dies
    cleanup(prefix)


if __name__ == "__main__":
    main()
