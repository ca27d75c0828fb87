"""Call set-up: Hotline (dial → first decrypted video frame at both ends) against bare aiortc.

Hotline side: a commissioned line, a real exchange process (TLS, pinned), two terminal daemons
in one process (like the baseline's two peer connections). The clock starts at ``dial`` and
stops when *both* ends have decoded their first remote video frame, so it includes ringing,
auto-answer, the signed signalling through the exchange, the whole E2EE key agreement (the
charter's KEM, hybrid ML-KEM768+X25519 by default) and ICE + DTLS.

Baseline: ``bench.bench_setup_bare`` (two peer connections, no signalling, no encryption).
Both run alternately, each in a fresh process, in the same invocation; the figure is the
ratio of the medians (target ≤ 1.3).

    .venv/bin/python -m bench.bench_call_setup --runs 7 [--kem X25519]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_setup_bare import bare_setup_samples
from hotline.charter import Policy, Role
from hotline.localline import LocalLine

ROOT = Path(__file__).resolve().parent.parent


async def measure_once(kem: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        line = LocalLine(
            Path(tmp),
            "bench",
            {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
            policy=Policy(kem=kem),
        )
        line.commission()
        await line.start_exchange()
        alpha = await line.start_in_process("alpha")
        bravo = await line.start_in_process("bravo", auto_answer=True)
        try:
            deadline = time.monotonic() + 30
            while "bravo" not in alpha.client.online and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            start_ms = time.monotonic() * 1000
            await alpha.dial("bravo")
            firsts: dict[str, float] = {}
            while len(firsts) < 2 and time.monotonic() < deadline + 30:
                for name, daemon, peer in (("alpha", alpha, "bravo"), ("bravo", bravo, "alpha")):
                    call = daemon.call
                    link = call.peers.get(peer) if call is not None else None
                    if link is not None and link.video_sink.first_frame_ms is not None:
                        firsts[name] = link.video_sink.first_frame_ms - start_ms
                await asyncio.sleep(0.005)
            if len(firsts) < 2:
                raise RuntimeError("no decrypted video both ways")
            return {"setup_ms": max(firsts.values()), **{f"{k}_ms": v for k, v in firsts.items()}}
        finally:
            await alpha.stop()
            await bravo.stop()
            await line.stop()


def hotline_sample(kem: str) -> float:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_call_setup", "--once", "--kem", kem],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["setup_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--kem", default="MLKEM768_X25519", choices=["MLKEM768_X25519", "X25519"])
    parser.add_argument("--once", action="store_true", help="one Hotline run here, JSON out")
    args = parser.parse_args()
    if args.once:
        print(json.dumps(asyncio.run(measure_once(args.kem))))
        return
    bare: list[float] = []
    ours: list[float] = []
    for i in range(args.runs):
        bare += bare_setup_samples(1)
        ours.append(hotline_sample(args.kem))
        print(f"run {i + 1}: bare {bare[-1]:.0f} ms, hotline {ours[-1]:.0f} ms", file=sys.stderr)
    summary = {
        "kem": args.kem,
        "runs": args.runs,
        "bare_ms": [round(x, 1) for x in bare],
        "hotline_ms": [round(x, 1) for x in ours],
        "bare_median_ms": round(statistics.median(bare), 1),
        "hotline_median_ms": round(statistics.median(ours), 1),
        "ratio": round(statistics.median(ours) / statistics.median(bare), 3),
        "target": "<= 1.3",
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
