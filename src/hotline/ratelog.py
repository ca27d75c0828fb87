"""Rate limits for log lines and events that someone else can trigger at will.

A hostile exchange (or a flood of bad requests) can make a terminal refuse thousands of
things a second. Every refusal is counted exactly; :class:`LogGate` decides which of them
also get a log line or an event: at most one per key per interval, the next one saying how
many were held back. Pure: time is passed in or read from the given clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: at most one line per key in this many seconds
DEFAULT_INTERVAL_S = 1.0
#: keys remembered at once (the oldest is forgotten first)
DEFAULT_MAX_KEYS = 256
#: longest text of someone else's making that goes into a line or an event
MAX_DETAIL = 300


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LogGate:
    """At most one pass per key per ``interval_s``; counts what it holds back."""

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._interval = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """Whether to log ``key`` now, and how many were held back since the last pass."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last.pop(key, None)
        self._last[key] = now
        while len(self._last) > self._max_keys:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._held.pop(oldest, None)
        return True, self._held.pop(key, 0)
