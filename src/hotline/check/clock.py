"""The clock of the readiness regime: one object that the check schedule, the check
history (the call log's check entries and rollups), alarms and expiry warnings read.

Production uses :data:`SYSTEM_CLOCK` (``time.time`` and ``time.monotonic``). A test gives a
:class:`SimulatedClock` and moves it by hand, so that years of hourly checks, rollups and
expiries run in seconds. Media timing (set-up time, frame rates, RTP) always uses the real
monotonic clock: a check measures what really happened.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (what is recorded and shown)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back (what schedules are kept in)."""
        ...


class SystemClock:
    """Real time."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()


class SimulatedClock:
    """A clock that moves only when told to (:meth:`advance`); both readings move together."""

    def __init__(self, wall: float, monotonic: float = 1_000.0) -> None:
        self._wall = float(wall)
        self._mono = float(monotonic)

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._wall += seconds
        self._mono += seconds
