"""The link model without I/O: each stage of :class:`Direction` with time passed in."""

from __future__ import annotations

import random

from tests.netlab.impair import Direction, GilbertElliott, Impairment


def direction(**settings: object) -> Direction:
    return Direction(random.Random(7), Impairment().replace(**settings))


def test_clean_passes_at_once() -> None:
    d = direction()
    assert d.offer(100, 5.0) == 5.0
    assert d.counters.forwarded == 1 and d.counters.bytes == 100


def test_fifo_unless_reorder() -> None:
    fifo, free = (
        direction(delay_ms=50, jitter_ms=20),
        direction(delay_ms=50, jitter_ms=20, reorder=True),
    )
    outs = [fifo.offer(100, i / 1000) for i in range(200)]
    assert outs == sorted(outs)  # type: ignore[type-var]
    outs = [free.offer(100, i / 1000) for i in range(200)]
    assert outs != sorted(outs)  # type: ignore[type-var]


def test_token_bucket_rate_and_queue_limit() -> None:
    # 800 kbit/s = 100 000 bytes/s; 1000-byte packets leave 10 ms apart once the burst is spent
    d = direction(rate_kbit=800, burst_bytes=2000, queue_ms=50)
    outs = [d.offer(1000, 0.0) for _ in range(10)]
    assert outs[:2] == [0.0, 0.0]  # the bucket's depth
    assert outs[2:7] == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert outs[7:] == [None, None, None]  # would wait longer than 50 ms
    assert d.counters.dropped["queue"] == 3
    assert d.offer(1000, 1.0) == 1.0  # the bucket refilled


def test_outage_until_and_down() -> None:
    d = direction()
    d.down_until = 2.0
    assert d.offer(100, 1.9) is None and d.offer(100, 2.0) == 2.0
    assert d.counters.dropped["outage"] == 1


def test_gilbert_elliott_mean_and_bursts() -> None:
    ge = GilbertElliott.from_mean(0.036, burst=4)
    assert round(ge.p, 4) == 0.0093 and ge.r == 0.25
    d = direction(burst=ge)
    lost = [d.offer(100, 0.0) is None for _ in range(100_000)]
    assert 0.03 < sum(lost) / len(lost) < 0.042
    bursts = sum(1 for i in range(1, len(lost)) if lost[i] and not lost[i - 1])
    assert 3.3 < sum(lost) / bursts < 4.7


def test_random_loss_rate() -> None:
    d = direction(loss=0.02)
    lost = sum(d.offer(100, 0.0) is None for _ in range(50_000))
    assert 0.017 < lost / 50_000 < 0.023
