"""The in-process impaired link: seeded loss patterns, FIFO delay, outages (pure)."""

from __future__ import annotations

import pytest

from hotline.media.link_model import BURSTY, RANDOM_2, LinkModel, LinkSpec


def _pattern(spec: LinkSpec, seed: int, n: int = 5000) -> list[bool]:
    link = LinkModel(spec, seed)
    return [link.fate(i * 0.001) is None for i in range(n)]


def test_a_seed_is_one_loss_pattern() -> None:
    assert _pattern(RANDOM_2, 7) == _pattern(RANDOM_2, 7)
    assert _pattern(RANDOM_2, 7) != _pattern(RANDOM_2, 8)


@pytest.mark.parametrize("spec", [RANDOM_2, BURSTY])
def test_mean_loss_matches_the_spec(spec: LinkSpec) -> None:
    lost = _pattern(spec, 3, 40_000)
    assert sum(lost) / len(lost) == pytest.approx(spec.mean_loss, rel=0.15)


def test_gilbert_elliott_loses_in_bursts() -> None:
    lost = _pattern(BURSTY, 5, 40_000)
    runs, current = [], 0
    for x in lost:
        if x:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    assert sum(runs) / len(runs) == pytest.approx(1 / BURSTY.ge_r, rel=0.2)  # mean burst 4
    random_runs = _pattern(RANDOM_2, 5, 40_000)
    assert sum(random_runs) < sum(lost)


def test_delay_with_jitter_stays_fifo() -> None:
    link = LinkModel(LinkSpec(delay_ms=60, jitter_ms=10), 1)
    arrivals = []
    for i in range(1000):
        now = i * 0.0005  # faster than the jitter: a non-FIFO link would reorder
        delay = link.fate(now)
        assert delay is not None and delay >= 0.05 - 1e-9
        arrivals.append(now + delay)
    assert arrivals == sorted(arrivals) and len(set(arrivals)) == len(arrivals)


def test_outage_loses_everything_inside_it_only() -> None:
    link = LinkModel(LinkSpec(), 1)
    link.outage(1.0, 2.0)
    fates = [link.fate(t / 10) for t in range(40)]
    lost = [t / 10 for t, f in zip(range(40), fates, strict=True) if f is None]
    assert lost == [t / 10 for t in range(10, 30)]
    assert link.lost_in_outage == 20 and link.lost == 20
