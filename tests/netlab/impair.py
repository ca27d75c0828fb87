"""The link model, without I/O: what one direction of a host's link does to a packet.

A :class:`Direction` is offered a packet's size and the time ``now`` (seconds, CLOCK_MONOTONIC)
and answers with the time at which the packet leaves it, or ``None`` and the reason it was
dropped. The order inside one direction is: outage, random loss, burst loss (Gilbert-Elliott),
rate limit (a token bucket feeding a FIFO queue with a time limit, like ``tbf``'s latency),
then delay and jitter. Randomness comes from the ``random.Random`` passed in, so a seed
replays a run. Settings can be replaced at any time (the forwarder holds a lock around both).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

#: the reasons a packet is dropped, as counted in :class:`Counters`
DROP_REASONS = ("outage", "loss", "burst", "queue")


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst loss: in the good state a packet is lost with ``loss_good``, in the bad
    state with ``loss_bad``; before each packet the state moves good→bad with ``p`` and
    bad→good with ``r``. With the defaults the mean loss is ``p / (p + r)`` and the mean burst
    length ``1 / r``."""

    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    @classmethod
    def from_mean(cls, mean: float, burst: float = 4.0) -> GilbertElliott:
        """Mean loss ``mean`` (0..1) in bursts of ``burst`` packets on average:
        ``from_mean(0.036)`` gives p≈0.0093, r=0.25."""
        r = 1.0 / burst
        return cls(p=mean * r / (1.0 - mean), r=r)

    @property
    def mean_loss(self) -> float:
        bad = self.p / (self.p + self.r) if self.p + self.r else 0.0
        return (1 - bad) * self.loss_good + bad * self.loss_bad


@dataclass(frozen=True)
class Impairment:
    """Settings of one direction of a link. Every field's default means "no impairment"."""

    delay_ms: float = 0.0
    """Fixed one-way delay added to every packet."""
    jitter_ms: float = 0.0
    """Delay varies by up to ± this much (uniform), or with this standard deviation (normal)."""
    jitter_dist: str = "uniform"
    """``uniform`` or ``normal``."""
    reorder: bool = False
    """Let jitter reorder packets. Off: a packet never leaves before the one before it (FIFO),
    as on a real path, which shifts the delay up a little when packets are closer together
    than the jitter."""
    loss: float = 0.0
    """Independent random loss, 0..1."""
    burst: GilbertElliott | None = None
    """Bursty loss on top of ``loss``."""
    rate_kbit: float = 0.0
    """Rate limit in kbit/s (0: none)."""
    burst_bytes: int = 3000
    """Token bucket depth: how many bytes may leave back to back at line speed."""
    queue_ms: float = 100.0
    """A packet that would wait longer than this for the rate limit is tail-dropped."""

    def replace(self, **changes: object) -> Impairment:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


CLEAN = Impairment()


@dataclass
class Counters:
    """What one direction of a link did: packets and bytes passed on, drops by reason."""

    forwarded: int = 0
    bytes: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, object]:
        return {"forwarded": self.forwarded, "bytes": self.bytes, "dropped": dict(self.dropped)}


class Direction:
    """One direction of a host's link: its settings, its state and its counters."""

    def __init__(self, rng: random.Random, settings: Impairment = CLEAN) -> None:
        self.rng = rng
        self.settings = settings
        self.down_until = 0.0  # outage until this time (inf: until brought up)
        self.counters = Counters()
        self._bad = False  # Gilbert-Elliott state
        self._tokens = float(settings.burst_bytes)
        self._bucket_at = 0.0  # time of the last token-bucket update (a departure)
        self._last_out = 0.0  # when the last packet left (FIFO order)

    def set(self, settings: Impairment) -> None:
        if settings.burst is None:
            self._bad = False
        self.settings = settings

    def is_down(self, now: float) -> bool:
        return now < self.down_until

    def drop(self, reason: str) -> None:
        self.counters.dropped[reason] += 1

    def offer(self, size: int, now: float) -> float | None:
        """When a packet of ``size`` bytes arriving at ``now`` leaves, or ``None`` (dropped)."""
        s = self.settings
        if self.is_down(now):
            self.drop("outage")
            return None
        if s.loss and self.rng.random() < s.loss:
            self.drop("loss")
            return None
        if s.burst is not None and self._burst_lost(s.burst):
            self.drop("burst")
            return None
        start = now
        if s.rate_kbit > 0:
            leaves = self._rate(size, now, s)
            if leaves is None:
                self.drop("queue")
                return None
            start = leaves
        out = start + self._delay(s) / 1000.0
        if not s.reorder:
            out = max(out, self._last_out)
        self._last_out = max(self._last_out, out)
        self.counters.forwarded += 1
        self.counters.bytes += size
        return out

    def _burst_lost(self, ge: GilbertElliott) -> bool:
        if self._bad:
            if self.rng.random() < ge.r:
                self._bad = False
        elif self.rng.random() < ge.p:
            self._bad = True
        return self.rng.random() < (ge.loss_bad if self._bad else ge.loss_good)

    def _rate(self, size: int, now: float, s: Impairment) -> float | None:
        rate = s.rate_kbit * 1000.0 / 8.0  # bytes per second
        depth = max(float(s.burst_bytes), float(size))
        start = max(now, self._bucket_at)  # FIFO: wait for the packets queued before
        tokens = min(depth, self._tokens + (start - self._bucket_at) * rate)
        leaves = start if tokens >= size else start + (size - tokens) / rate
        if leaves - now > s.queue_ms / 1000.0:
            return None
        self._tokens = max(0.0, tokens - size) if leaves == start else 0.0
        self._bucket_at = leaves
        return leaves

    def _delay(self, s: Impairment) -> float:
        if not s.jitter_ms:
            return s.delay_ms
        if s.jitter_dist == "normal":
            d = self.rng.gauss(s.delay_ms, s.jitter_ms)
        else:
            d = s.delay_ms + self.rng.uniform(-s.jitter_ms, s.jitter_ms)
        return max(0.0, d)
