"""An E2EE call over an impaired in-process link, measured as a person would see it.

Shared by ``tests/media/test_video_loss.py`` and ``bench/bench_video_loss.py``. Two peer
connections in one process on 127.0.0.1, SFrame on, each end's ingress impaired by its own
seeded :class:`~hotline.media.link_model.LinkModel`. What B shows of A's video is measured
over a window after warm-up: frames shown, corrupt frames shown, the longest freeze between
fresh frames, one-way latency; for an outage also how soon fresh frames come back.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

from hotline.media.frame_id import monotonic_ms
from hotline.media.link_model import LinkSpec
from hotline.media.stats import percentile
from tests.media.harness import close, connect, impair, make_side, sframe_pair


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: LinkSpec
    seconds: float  #: measuring window
    outage_at: float | None = None  #: seconds into the window
    outage_s: float = 0.0


def _window(log: list[tuple[int, int]], start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    return [e for e in log if start_ms <= e[0] < end_ms]


def _longest_gap(times: list[int], start_ms: int, end_ms: int) -> int:
    points = [start_ms, *times, end_ms]
    return max(b - a for a, b in itertools.pairwise(points))


async def run(
    scenario: Scenario,
    *,
    guard: bool,
    seed: int = 1,
    width: int = 320,
    height: int = 180,
    fps: int = 15,
    warmup: float = 2.0,
) -> dict[str, Any]:
    ca, cb = sframe_pair()
    a = make_side("a", ca, video_guard=guard)
    b = make_side("b", cb, video_guard=guard)
    try:
        await connect(a, b, width=width, height=height, fps=fps)
        link_b = impair(b, scenario.spec, seed)  # what B receives (A's media)
        link_a = impair(a, scenario.spec, seed + 1000)  # what A receives (B's RTCP, media)
        if not await b.video_sink.wait_for(5, timeout=20):
            raise AssertionError(f"no video at all: {b.video_sink.to_dict()}")
        await asyncio.sleep(warmup)
        sink = b.video_sink
        corrupt0, shown0 = sink.corrupt, sink.frames
        start_ms = monotonic_ms()
        restore_ms = None
        if scenario.outage_at is not None:
            at = time.monotonic() + scenario.outage_at
            for link in (link_a, link_b):
                link.outage(at, scenario.outage_s)
            restore_ms = start_ms + int((scenario.outage_at + scenario.outage_s) * 1000)
        await asyncio.sleep(scenario.seconds)
        end_ms = monotonic_ms()
        fresh = _window(list(sink.fresh_log), start_ms, end_ms)
        latencies = [r - s for r, s in fresh]
        out: dict[str, Any] = {
            "scenario": scenario.name,
            "mode": "guard" if guard else "aiortc",
            "seed": seed,
            "seconds": round((end_ms - start_ms) / 1000, 2),
            "shown": sink.frames - shown0,
            "fresh": len(fresh),
            "corrupt_shown": sink.corrupt - corrupt0,
            "longest_freeze_ms": _longest_gap([r for r, _ in fresh], start_ms, end_ms),
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p95_ms": percentile(latencies, 95),
            "latency_max_ms": max(latencies, default=None),
            "loss": round(link_b.lost / max(1, link_b.packets), 4),
            "guard": b.stats.video_guard(),
            "keyframe_requests": b.stats.keyframe_requests("video"),
        }
        if restore_ms is not None:
            back = [(r, s) for r, s in fresh if s >= restore_ms]
            out["first_fresh_after_return_ms"] = back[0][0] - restore_ms if back else None
            settled = [r - s for r, s in back if r >= restore_ms + 1000]
            out["latency_p95_after_1s_ms"] = percentile(settled, 95)
            out["latency_max_after_return_ms"] = max(
                (r - s for r, s in fresh if r >= restore_ms), default=None
            )
            out["outage_freeze_ms"] = _longest_gap(
                [r for r, _ in fresh], start_ms, end_ms
            )  # includes the outage itself
        return out
    finally:
        await close(a, b)
