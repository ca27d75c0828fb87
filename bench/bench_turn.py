"""Calls through TURN (a real coturn on 127.0.0.1): set-up time direct, relay-only, and
relay-only with the charter's first relay down, in the same invocation; and the time of one
relay probe (a TURN allocation, released at once).

Set-up is measured as in ``bench.bench_call_setup``: a commissioned line, a real exchange
process, two terminal daemons in one process; from ``dial`` until both ends decoded their
first remote video frame. Each sample runs in a fresh process; the relay (``use-auth-secret``,
time-limited credentials from each terminal's ``terminal.toml``) is started before the clock.

    .venv/bin/python -m bench.bench_turn --runs 5
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

from tests.turnserver import TurnServer, free_port

from hotline.charter import Policy, Role
from hotline.localline import LocalLine
from hotline.media.turn import SharedSecretCredentials, TurnRelay, probe_relay

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = ("direct", "relay", "first-relay-down")
SECRET = "bench-secret"


async def measure_once(condition: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        root = Path(tmp)
        relay = TurnServer(root / "relay", shared_secret=SECRET)
        relay.start()
        dead = f"turn:127.0.0.1:{free_port()}?transport=udp"
        relays = {"direct": (), "relay": (relay.url,), "first-relay-down": (dead, relay.url)}
        line = LocalLine(
            root,
            "bench",
            {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
            policy=Policy(relay_only=condition != "direct"),
            turn_relays=relays[condition],
        )
        line.commission()
        for tid in ("alpha", "bravo"):
            path = line.terminal_dir(tid) / "terminal.toml"
            path.write_text(
                "".join(
                    f"[[turn.relay]]\nurl = '{url}'\nshared_secret = '{SECRET}'\n"
                    for url in relays[condition]
                )
            )
            path.chmod(0o600)
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
            assert alpha.call is not None
            path = (await alpha.call.stats())["peers"]["bravo"]["path"]
            expected = "host" if condition == "direct" else "relay"
            if path != {"local": expected, "remote": expected}:
                raise RuntimeError(f"{condition}: the call went {path}")
            return {"setup_ms": max(firsts.values())}
        finally:
            await alpha.stop()
            await bravo.stop()
            await line.stop()
            relay.stop()


async def probe_times(n: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        relay = TurnServer(Path(tmp) / "relay", shared_secret=SECRET)
        relay.start()
        try:
            target = TurnRelay(relay.url, SharedSecretCredentials(SECRET.encode(), "probe"))
            return [await probe_relay(target) * 1000 for _ in range(n)]
        finally:
            relay.stop()


def sample(condition: str) -> float:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_turn", "--once", condition],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["setup_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--once", choices=CONDITIONS, help="one run here, JSON out")
    args = parser.parse_args()
    if args.once:
        print(json.dumps(asyncio.run(measure_once(args.once))))
        return
    samples: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    for i in range(args.runs):
        for condition in CONDITIONS:  # alternating, so that load affects all alike
            samples[condition].append(sample(condition))
        print(f"run {i + 1}: " + ", ".join(f"{c} {v[-1]:.0f} ms" for c, v in samples.items()),
              file=sys.stderr)  # fmt: skip
    probes = asyncio.run(probe_times(50))
    summary = {
        "runs": args.runs,
        **{f"{c}_ms": [round(x, 1) for x in v] for c, v in samples.items()},
        **{f"{c}_median_ms": round(statistics.median(v), 1) for c, v in samples.items()},
        "probe_median_ms": round(statistics.median(probes), 2),
        "probe_max_ms": round(max(probes), 2),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
