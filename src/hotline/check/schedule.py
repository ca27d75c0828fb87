"""When a terminal runs its readiness checks, and what is alarmed (pure, ``now`` passed in).

Each pair of terminals is checked once per the charter's ``readiness_interval_s``; the lower
terminal id calls (so the two sides never collide), with ±10 % jitter so that many pairs do
not all call at once. The first check comes a short, random while after start. A check due
while a real call runs waits until it ends (that is not a miss). A red result — including a
check that could not run (peer not online, exchange unreachable, no answer) — opens an alarm
for that peer; the next green or amber result closes it.

The other end watches too: a terminal expects a check from each peer with a lower id at
least once per interval (+ its jitter, + a grace of a quarter interval and 10 s for a check
that is under way or waited for a call); when none came, that is a missed check there too,
and it opens an alarm for that peer, raised again each further interval. A check result the
peer sends (green, amber or red) closes or opens it like one's own. So a line whose calling
end is down, or cut off from the exchange, is alarmed at both ends.
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
    #: peer with a lower id -> monotonic time its next check must have come by
    expected: dict[str, float] = field(default_factory=dict)
    #: peer with a lower id -> monotonic time of its last check (or of the first look)
    heard: dict[str, float] = field(default_factory=dict)

    @property
    def missed_after_s(self) -> float:
        """How long after the last check from a calling peer its next one counts as missed."""
        return self.interval_s * (1 + JITTER) + self.interval_s / 4 + 10

    def callers(self, terminal_ids: list[str]) -> list[str]:
        """The peers that call this terminal for checks: those with a lower id."""
        return sorted(t for t in terminal_ids if t < self.self_id)

    def overdue(self, terminal_ids: list[str], now: float, wall: float) -> list[Alarm]:
        """Alarms for calling peers whose check did not come in time (each raised once per
        interval while it goes on); the clock of the first wait starts at the first call."""
        out = []
        for peer in self.callers(terminal_ids):
            self.heard.setdefault(peer, now)
            deadline = self.expected.setdefault(peer, now + self.missed_after_s)
            if now < deadline:
                continue
            waited = round(now - self.heard[peer])
            reason = (
                f"no readiness check from {peer} for {waited} s "
                f"(it calls this terminal every {self.interval_s:g} s)"
            )
            out.append(self._open(peer, wall, reason))
            self.expected[peer] = now + self.interval_s
        return out

    def waiting(self, terminal_ids: list[str], now: float) -> None:
        """This terminal is in a call: a check from a calling peer would be declined (busy),
        so its deadline moves on (that is not a miss)."""
        for peer in self.callers(terminal_ids):
            deadline = self.expected.get(peer)
            if deadline is not None and deadline - now < self.interval_s / 4:
                self.expected[peer] = now + self.interval_s / 4

    def checked_by(
        self, peer: str, now: float, verdict: str, reason: str, wall: float
    ) -> Alarm | None:
        """``peer`` ran a check to this terminal and sent its result. Only a calling peer's
        (a lower id) results open or close alarms here: the line to a peer this terminal
        calls is judged by this terminal's own checks (that peer cannot close them)."""
        if peer > self.self_id:
            return None
        self.expected[peer] = now + self.missed_after_s
        self.heard[peer] = now
        return self._result(peer, verdict, reason, wall)

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
        return self._result(peer, verdict, reason, wall)

    def _result(self, peer: str, verdict: str, reason: str, wall: float) -> Alarm | None:
        if verdict != RED:
            self.alarms.pop(peer, None)
            return None
        return self._open(peer, wall, reason)

    def _open(self, peer: str, wall: float, reason: str) -> Alarm:
        alarm = self.alarms.get(peer)
        if alarm is None:
            alarm = self.alarms[peer] = Alarm(peer, wall, reason)
        else:
            alarm.count += 1
            alarm.reason = reason
        return alarm
