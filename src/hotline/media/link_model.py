"""An impaired one-way link, decided packet by packet (pure, seeded, ``now`` passed in).

Used in process by tests and benchmarks (``aiortc_patch.impair_ingress``): every datagram a
peer connection receives asks :meth:`LinkModel.fate` whether it is lost and, if not, how long
it is delayed. Loss is random (Bernoulli) or bursty (Gilbert-Elliott: a good state without
loss and a bad state that loses ``bad_loss`` of the packets), plus outages set by the caller.
Delay is ``delay_ms ± jitter_ms`` (uniform) and the link stays FIFO, like a real queue. The
same seed gives the same loss pattern for the same packet sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkSpec:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  #: random loss probability per packet
    ge_p: float = 0.0  #: Gilbert-Elliott: probability good -> bad per packet
    ge_r: float = 0.25  #: Gilbert-Elliott: probability bad -> good per packet
    bad_loss: float = 1.0  #: loss probability in the bad state

    @property
    def mean_loss(self) -> float:
        bad = self.ge_p / (self.ge_p + self.ge_r) if self.ge_p else 0.0
        return 1 - (1 - self.loss) * (1 - bad * self.bad_loss)


#: 2 % random loss (issue 8's first lossy link)
RANDOM_2 = LinkSpec(delay_ms=60, jitter_ms=10, loss=0.02)
#: bursty loss, Gilbert-Elliott p=1 %, r=25 %: ~3.8 % mean in bursts of 4 (the network lab's)
BURSTY = LinkSpec(delay_ms=60, jitter_ms=10, ge_p=0.01, ge_r=0.25)


class LinkModel:
    def __init__(self, spec: LinkSpec, seed: int = 0) -> None:
        self.spec = spec
        self.seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - a replayable loss pattern, not a secret
        self._bad = False
        self._down: list[tuple[float, float]] = []
        self._last_delivery = 0.0
        self.packets = 0
        self.lost = 0
        self.lost_in_outage = 0

    def set_spec(self, spec: LinkSpec) -> None:
        self.spec = spec

    def outage(self, start: float, duration: float) -> None:
        """Lose every packet that arrives in ``[start, start + duration)``."""
        self._down.append((start, start + duration))

    def is_down(self, now: float) -> bool:
        return any(a <= now < b for a, b in self._down)

    def fate(self, now: float) -> float | None:
        """``None``: the packet is lost; else its delay in seconds from ``now``."""
        self.packets += 1
        s = self.spec
        # draw every random number for every packet, so a seed means one loss pattern
        u_loss, u_state, u_bad, u_delay = (self._rng.random() for _ in range(4))
        if s.ge_p:
            self._bad = u_state >= s.ge_r if self._bad else u_state < s.ge_p
        if self.is_down(now):
            self.lost += 1
            self.lost_in_outage += 1
            return None
        if u_loss < s.loss or (self._bad and u_bad < s.bad_loss):
            self.lost += 1
            return None
        delay = max(0.0, s.delay_ms + (2 * u_delay - 1) * s.jitter_ms) / 1000
        at = max(now + delay, self._last_delivery + 1e-6)  # FIFO
        self._last_delivery = at
        return at - now
