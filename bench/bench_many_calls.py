"""Call N of a long-running terminal against call 1 of the same terminal processes.

An exchange and two terminals (alpha, bravo answering at once) as CLI processes on 127.0.0.1;
alpha places ``--calls`` calls one after the other, each measured over 1 s once media flows
both ways, then hung up. Reported per call: set-up (dial to media both ways, as polled through
the control API every 0.25 s), received video and audio frame rates; and the ratios of the last
call to the first (the target: 1 ± 0.2). The baseline is call 1 in the same run.

    .venv/bin/python -m bench.bench_many_calls [--calls 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from tests.terminal.test_calls import running_line
from tests.terminal.test_many_calls import one_call

from hotline.charter import Policy


async def run(calls: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        async with running_line(Path(tmp), Policy()) as line:
            return [await one_call(line) for _ in range(calls)]


def report(results: list[dict[str, float]]) -> dict[str, Any]:
    first, last = results[0], results[-1]
    ratios = {key: round(last[key] / first[key], 3) for key in first if first[key]}
    setups = [r["setup_s"] for r in results]
    return {
        "calls": len(results),
        "first": {k: round(v, 3) for k, v in first.items()},
        "last": {k: round(v, 3) for k, v in last.items()},
        "last_over_first": ratios,
        "setup_s_median_first5": round(statistics.median(setups[:5]), 3),
        "setup_s_median_last5": round(statistics.median(setups[-5:]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = report(asyncio.run(run(args.calls)))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['calls']} calls in one terminal process")
    for key, ratio in out["last_over_first"].items():
        print(f"  {key:18} first {out['first'][key]:8.2f}  last {out['last'][key]:8.2f}  "
              f"ratio {ratio:.2f}")  # fmt: skip
    print(f"  set-up median, first 5 calls {out['setup_s_median_first5']:.3f} s, "
          f"last 5 {out['setup_s_median_last5']:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
