"""When a terminal runs its readiness checks, and what is alarmed (pure, ``now`` passed in).

Each pair of terminals is checked once per the charter's ``readiness_interval_s``; the lower
terminal id calls (so the two sides never collide), with ±10 % jitter so that many pairs do
not all call at once. The first check comes a short, random while after start. A check due
while a real call runs waits until it ends (that is not a miss). A red result — including a
check that could not run (peer not online, exchange unreachable, no answer) — opens an alarm
for that peer; the next green or amber result closes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hotline.check.metrics import RED

JITTER = 0.10
#: the first check after start: this share of the interval, at random
FIRST_CHECK = (0.02, 0.25)


@dataclass
class Alarm:
    peer: str
    since: float  #: wall-clock time of the first red result
    reason: str
    count: int = 1


@dataclass
class ReadinessSchedule:
    self_id: str
    interval_s: float
    rng: random.Random = field(default_factory=random.Random)
    due: dict[str, float] = field(default_factory=dict)  #: peer -> monotonic due time
    alarms: dict[str, Alarm] = field(default_factory=dict)

    def peers(self, terminal_ids: list[str]) -> list[str]:
        """The peers this terminal calls for checks: those with a higher id."""
        return sorted(t for t in terminal_ids if t > self.self_id)

    def next_due(self, terminal_ids: list[str], now: float) -> str | None:
        """The peer whose check is due now, if any (the earliest)."""
        best: tuple[float, str] | None = None
        for peer in self.peers(terminal_ids):
            if peer not in self.due:
                low, high = FIRST_CHECK
                self.due[peer] = now + self.interval_s * self.rng.uniform(low, high)
            when = self.due[peer]
            if when <= now and (best is None or when < best[0]):
                best = (when, peer)
        return best[1] if best else None

    def postpone(self, peer: str, now: float, seconds: float) -> None:
        self.due[peer] = now + seconds

    def done(self, peer: str, now: float, verdict: str, reason: str, wall: float) -> Alarm | None:
        """A check of ``peer`` finished; schedule the next. Returns the alarm it opened
        (or raised again), if red."""
        self.due[peer] = now + self.interval_s * self.rng.uniform(1 - JITTER, 1 + JITTER)
        if verdict != RED:
            self.alarms.pop(peer, None)
            return None
        alarm = self.alarms.get(peer)
        if alarm is None:
            alarm = self.alarms[peer] = Alarm(peer, wall, reason)
        else:
            alarm.count += 1
            alarm.reason = reason
        return alarm
