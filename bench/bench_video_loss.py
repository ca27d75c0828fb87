"""What a person sees of the video under loss and outages: the guard against aiortc's path.

Each run is an E2EE call (SFrame on) between two aiortc peer connections in one process on
127.0.0.1, each end's ingress passed through a seeded in-process link
(``aiortc_patch.impair_ingress`` + ``media.link_model``): 60 ± 10 ms each way, and

- ``random2``: 2 % random loss;
- ``bursty``: Gilbert-Elliott loss (p = 1 %, r = 25 %: ~3.8 % mean, bursts of ~4);
- ``outage2`` / ``outage5``: no loss, the link down both ways for 2 s / 5 s.

``guard`` is Hotline's receive path (``media.video_guard``); ``aiortc`` is the same call with
aiortc's own jitter buffer, NACK generator and PLI logic (``set_video_guard(pc, False)``),
i.e. the path before issue 8. Both modes run with the same seeds, alternating, in one
process. Measured on B's display of A's video over the window: corrupt frames shown, the
longest freeze between fresh frames, one-way latency p50/p95 (shared monotonic clock), and
after an outage: the first fresh frame after the link's return and the worst latency shown.

Targets (issue 8): 0 corrupt; freeze <= 500 ms and p95 <= 250 ms under loss; after an
outage, fresh frames within 1 s and latency back to normal within 1 s.

    .venv/bin/python -m bench.bench_video_loss --rounds 2 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
from typing import Any

from tests.media.video_loss import Scenario, run

from hotline.media.link_model import BURSTY, RANDOM_2, LinkSpec

CLEAN = LinkSpec(delay_ms=60, jitter_ms=10)
MODES = ("guard", "aiortc")


def scenarios(seconds: float) -> dict[str, Scenario]:
    return {
        "random2": Scenario("random2", RANDOM_2, seconds),
        "bursty": Scenario("bursty", BURSTY, seconds),
        "outage2": Scenario("outage2", CLEAN, 15.0, outage_at=3.0, outage_s=2.0),
        "outage5": Scenario("outage5", CLEAN, 18.0, outage_at=3.0, outage_s=5.0),
    }


KEYS = (
    "corrupt_shown",
    "longest_freeze_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "first_fresh_after_return_ms",
    "latency_max_after_return_ms",
    "latency_p95_after_1s_ms",
)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(rows)}
    for key in KEYS:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {
                "median": round(statistics.median(values), 1),
                "worst": round(max(values), 1),
            }
    out["fresh_fps"] = round(statistics.median(r["fresh"] / r["seconds"] for r in rows), 1)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    table = scenarios(args.seconds)
    chosen = [table[name] for name in args.scenarios]
    rows: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        for scenario in chosen:
            for mode in MODES if round_no % 2 == 0 else MODES[::-1]:
                r = await run(
                    scenario,
                    guard=mode == "guard",
                    seed=args.seed + round_no,
                    width=args.width,
                    height=args.height,
                    fps=args.fps,
                    warmup=args.warmup,
                )
                rows.append(r)
                print(json.dumps(r), flush=True)
    summary: dict[str, Any] = {}
    for scenario in chosen:
        for mode in MODES:
            mine = [r for r in rows if r["scenario"] == scenario.name and r["mode"] == mode]
            summary.setdefault(scenario.name, {})[mode] = _summary(mine)
    return {
        "setup": {
            "size": f"{args.width}x{args.height}@{args.fps}",
            "rounds": args.rounds,
            "window_s": args.seconds,
            "seed": args.seed,
        },
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="window under loss")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--scenarios", nargs="+", default=["random2", "bursty", "outage2", "outage5"]
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
