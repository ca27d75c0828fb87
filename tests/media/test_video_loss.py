"""Real E2EE calls over an impaired in-process link: no corrupt frame is ever shown.

Two aiortc peer connections in one process on 127.0.0.1, SFrame on, every datagram each end
receives passed through a seeded link model (60 ± 10 ms each way). Margins are generous for
a loaded 2-core host; ``bench/bench_video_loss.py`` measures the strict figures.
"""

from __future__ import annotations

import pytest

from hotline.media.link_model import BURSTY, RANDOM_2, LinkSpec
from tests.media.video_loss import Scenario, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FPS = 15
WINDOW = 8.0


def _assert_watchable(r: dict[str, object], seconds: float) -> None:
    assert r["corrupt_shown"] == 0, r
    assert isinstance(r["fresh"], int) and r["fresh"] >= 0.6 * FPS * seconds, r
    assert isinstance(r["longest_freeze_ms"], int) and r["longest_freeze_ms"] < 1000, r
    p95 = r["latency_p95_ms"]
    assert isinstance(p95, float) and p95 < 400, r


async def test_two_percent_random_loss_shows_no_corrupt_frame() -> None:
    r = await run(Scenario("random2", RANDOM_2, WINDOW), guard=True, seed=11)
    _assert_watchable(r, WINDOW)
    guard = r["guard"]
    assert isinstance(guard, dict)
    assert guard["nacked_packets"] >= 1 and guard["recovered"] >= 1  # NACK repaired losses


async def test_bursty_loss_shows_no_corrupt_frame() -> None:
    r = await run(Scenario("bursty", BURSTY, WINDOW), guard=True, seed=12)
    _assert_watchable(r, WINDOW)


async def test_after_a_two_second_outage_fresh_video_is_back_at_once() -> None:
    link = LinkSpec(delay_ms=60, jitter_ms=10)
    scenario = Scenario("outage2", link, 7.0, outage_at=2.0, outage_s=2.0)
    r = await run(scenario, guard=True, seed=13)
    assert r["corrupt_shown"] == 0, r
    back = r["first_fresh_after_return_ms"]
    assert isinstance(back, int) and back < 1500, r
    # no backlog: nothing from inside the 2 s outage is shown late after it
    late = r["latency_max_after_return_ms"]
    assert isinstance(late, int) and late < 1200, r
    settled = r["latency_p95_after_1s_ms"]
    assert isinstance(settled, float) and settled < 400, r
    guard = r["guard"]
    assert isinstance(guard, dict) and guard["stale_holes_skipped"] >= 1


async def test_without_the_guard_aiortc_plays_the_outage_backlog() -> None:
    """The measurement catches what issue 8 saw: stale frames played after the outage."""
    link = LinkSpec(delay_ms=60, jitter_ms=10)
    scenario = Scenario("outage2", link, 6.0, outage_at=2.0, outage_s=2.0)
    r = await run(scenario, guard=False, seed=13)
    late = r["latency_max_after_return_ms"]
    assert isinstance(late, int) and late > 1000, r  # frames from inside the outage, late
    assert r["guard"] == {}
