"""The network lab: network namespaces joined by a userspace link with delay, jitter, loss
(random and bursty), rate limits and outages that change during a run. See docs/netlab.md.

    from tests.netlab import Lab, Impairment, GilbertElliott

    with Lab(seed=1) as lab:
        a, b = lab.add_host("alpha"), lab.add_host("bravo")
        a.link.set(delay_ms=60, jitter_ms=10, loss=0.02)   # alpha's link, both directions
        a.link.outage(2.0)
        b.run(["ip", "addr"])  # inside bravo's namespace
"""

from tests.netlab.impair import CLEAN, Counters, Direction, GilbertElliott, Impairment
from tests.netlab.lab import Host, Lab, Link, in_namespace, prerequisites

__all__ = [
    "CLEAN",
    "Counters",
    "Direction",
    "GilbertElliott",
    "Host",
    "Impairment",
    "Lab",
    "Link",
    "in_namespace",
    "prerequisites",
]
