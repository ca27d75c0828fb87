"""Calls on the network lab under outages and loss: Hotline, and bare aiortc in the same run.

For every scenario, a fresh lab (tests.netlab) joins hosts ``alpha`` and ``bravo`` (and
``exchange``); alpha's link has 60 ± 10 ms each way, so a packet between the two terminals
takes 60 ± 10 ms one way. Then, once per system:

- ``hotline``: an exchange and two terminals as CLI processes in their hosts (bravo answers
  automatically); the figures are what ``hotline call status --json`` reports;
- ``bare``: two plain aiortc peers (no Hotline: no E2EE, VP8 + Opus, the same synthetic source
  with a frame id, the same sinks; ``bench.netlab_bare``).

The call runs ``--warmup`` seconds, a snapshot is taken ("before"), the scenario is applied to
alpha's link (both directions), and a second snapshot follows (``after``). The report gives, per
receiving end, the difference: video frames shown, corrupt frames (frame id unreadable), missing
ids, freezes (> 250 ms), the longest gap between two shown frames, audio frames (50 a second
expected), the video latency percentiles (over the whole call: the sinks keep no window) and
the transport state before → after; and the video and audio frame rates, and corrupt frames,
over the last 5 s (is media flowing at the end?). For outages, ``video_back_after_ms`` (the
longest gap minus the outage) is how long video took to come back after the link did.
Everything shares 2 CPUs: read tails with care.

    .venv/bin/python -m bench.bench_netlab [--only outage-2s,loss-2pct] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.netlab import GilbertElliott, Impairment, Lab
from tests.netlab.line import call_of, lab_line

ROOT = Path(__file__).resolve().parent.parent
BASE = Impairment(delay_ms=60, jitter_ms=10)
PAIRS = (("alpha", "bravo"), ("bravo", "alpha"))  # (receiver, sender)


@dataclass(frozen=True)
class Scenario:
    name: str
    outage_s: float = 0.0
    """Link down this long (both directions), then ``settle_s`` to recover."""
    impairment: Impairment | None = None
    """Else: this on the link for ``settle_s``."""
    settle_s: float = 10.0


SCENARIOS = (
    Scenario("outage-2s", outage_s=2, settle_s=10),
    Scenario("outage-5s", outage_s=5, settle_s=10),
    Scenario("outage-30s", outage_s=30, settle_s=15),
    Scenario("loss-2pct", impairment=BASE.replace(loss=0.02), settle_s=20),
    Scenario(
        "bursty-3.6pct",
        impairment=BASE.replace(burst=GilbertElliott.from_mean(0.036, burst=4)),
        settle_s=20,
    ),
)

# --- snapshots: one shape for both systems --------------------------------------------------


def hotline_view(status: dict[str, Any], sender: str) -> dict[str, Any]:
    call = call_of(status)
    peer = (call.get("peers") or {}).get(sender) or {}
    video = ((call.get("frames") or {}).get("video")) or {}
    return {
        "video": peer.get("video_sink") or {},
        "audio": peer.get("audio_sink") or {},
        "transport": peer.get("transport"),
        "state": call.get("state"),
        "epoch": call.get("epoch"),
        "decrypted_video": video.get("decrypted"),
        "rejected_video": video.get("rejected_total"),
    }


def bare_view(folder: Path, receiver: str) -> dict[str, Any]:
    role = "offer" if receiver == "alpha" else "answer"
    data = json.loads((folder / f"stats-{role}.json").read_text())
    return {"video": data["video_sink"], "audio": data["audio_sink"], "transport": data["ice"]}


def compare(before: dict[str, Any], after: dict[str, Any], sc: Scenario) -> dict[str, Any]:
    v0, v1, a0, a1 = before["video"], after["video"], before["audio"], after["audio"]

    def delta(a: dict[str, Any], b: dict[str, Any], key: str) -> int:
        return int(b.get(key, 0)) - int(a.get(key, 0))

    row: dict[str, Any] = {
        "video_frames": delta(v0, v1, "frames"),
        "corrupt": delta(v0, v1, "ids_unreadable"),
        "missing_ids": delta(v0, v1, "missing"),
        "freezes": delta(v0, v1, "freezes"),
        "freeze_ms": delta(v0, v1, "freeze_total_ms"),
        "max_gap_ms": v1.get("max_gap_ms"),
        "latency_p50_ms": (v1.get("latency") or {}).get("p50_ms"),
        "latency_p95_ms": (v1.get("latency") or {}).get("p95_ms"),
        "latency_max_ms": (v1.get("latency") or {}).get("max_ms"),
        "audio_frames": delta(a0, a1, "frames"),
        "transport": f"{before['transport']} -> {after['transport']}",
    }
    if sc.outage_s and v1.get("max_gap_ms"):
        row["video_back_after_ms"] = int(v1["max_gap_ms"] - sc.outage_s * 1000)
    if "state" in after:
        row["state"] = f"{before['state']} -> {after['state']}"
        row["epoch"] = f"{before['epoch']} -> {after['epoch']}"
        row["decrypted_video"] = (after["decrypted_video"] or 0) - (before["decrypted_video"] or 0)
        row["rejected_video"] = (after["rejected_video"] or 0) - (before["rejected_video"] or 0)
    return row


#: the window at the end of each scenario over which the end rates are taken
END_WINDOW_S = 5.0

Views = dict[str, dict[str, Any]]  # receiver -> view


async def measure(
    lab: Lab, sc: Scenario, take: Callable[[], Awaitable[Views]]
) -> dict[str, dict[str, Any]]:
    """Snapshot, apply the scenario to alpha's link, snapshot ``END_WINDOW_S`` before its end
    and at its end; one row per direction."""
    link = lab.link("alpha")
    before = await take()
    if sc.outage_s:
        link.outage(sc.outage_s)
        await asyncio.sleep(sc.outage_s + sc.settle_s - END_WINDOW_S)
    else:
        assert sc.impairment is not None
        link.set(sc.impairment)
        await asyncio.sleep(sc.settle_s - END_WINDOW_S)
    late = await take()
    t_late = time.monotonic()
    await asyncio.sleep(END_WINDOW_S)
    after = await take()
    window = time.monotonic() - t_late
    link.set(BASE)
    rows = {}
    for rx, tx in PAIRS:
        row = compare(before[rx], after[rx], sc)
        end = compare(late[rx], after[rx], sc)
        row["video_fps_end"] = round(end["video_frames"] / window, 1)
        row["audio_fps_end"] = round(end["audio_frames"] / window, 1)
        row["corrupt_end"] = end["corrupt"]
        if sc.outage_s and not row["video_fps_end"]:
            row.pop("video_back_after_ms", None)  # never came back: the gap is still open
        rows[f"{rx}<-{tx}"] = row
    return rows


# --- the two systems ---------------------------------------------------------------------


async def run_hotline(lab: Lab, sc: Scenario, warmup: float, root: Path) -> dict[str, Any]:
    async with lab_line(lab, root) as line:
        lab.link("alpha").set(BASE)
        start = time.monotonic()
        await line.dial_and_wait_media("alpha", "bravo")
        setup_s = time.monotonic() - start
        await asyncio.sleep(warmup)

        async def take() -> Views:
            snap = await line.snapshot(["alpha", "bravo"])
            return {rx: hotline_view(snap[rx], tx) for rx, tx in PAIRS}

        out: dict[str, Any] = dict(await measure(lab, sc, take))
        out["setup_s"] = round(setup_s, 1)
        await line.hangup("alpha")
        return out


async def run_bare(lab: Lab, sc: Scenario, warmup: float, root: Path) -> dict[str, Any]:
    folder = root / "bare"
    folder.mkdir()
    lab.link("alpha").set(BASE)
    procs = []
    for host, role in (("alpha", "offer"), ("bravo", "answer")):
        with (root / f"bare-{role}.log").open("ab") as log:
            argv = [sys.executable, "-m", "bench.netlab_bare", "--role", role, "--dir", str(folder)]
            procs.append(lab[host].popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    try:
        start = time.monotonic()
        while True:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a bare peer exited; see {root}/bare-*.log")
            try:
                views = {rx: bare_view(folder, rx) for rx, _ in PAIRS}
            except (FileNotFoundError, json.JSONDecodeError):
                views = {}
            if views and all(
                v["video"].get("frames", 0) >= 20 and v["audio"].get("frames", 0) >= 20
                for v in views.values()
            ):
                break
            if time.monotonic() - start > 60:
                raise RuntimeError("the bare call did not start")
            await asyncio.sleep(0.2)
        setup_s = time.monotonic() - start
        await asyncio.sleep(warmup)

        async def take() -> Views:
            await asyncio.sleep(0.6)  # the peers write their figures every 0.5 s
            return {rx: bare_view(folder, rx) for rx, _ in PAIRS}

        out: dict[str, Any] = dict(await measure(lab, sc, take))
        out["setup_s"] = round(setup_s, 1)
        return out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def run_scenario(sc: Scenario, warmup: float, seed: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for system, runner in (("hotline", run_hotline), ("bare", run_bare)):
        with Lab(seed=seed) as lab, tempfile.TemporaryDirectory(prefix="netlab-") as tmp:
            for name in ("exchange", "alpha", "bravo"):
                lab.add_host(name)
            result[system] = await runner(lab, sc, warmup, Path(tmp))
            result[system]["link"] = lab.report()["alpha"]
    return result


COLUMNS = (
    "video_frames", "corrupt", "missing_ids", "freezes", "max_gap_ms", "video_back_after_ms",
    "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "audio_frames", "video_fps_end",
    "audio_fps_end", "corrupt_end", "transport", "state", "epoch",
)  # fmt: skip
#: a corrupt frame whose id passes the CRC-8 by chance makes the sink count a huge jump
IMPLAUSIBLE_MISSING = 100_000


def describe(sc: Scenario) -> str:
    if sc.outage_s:
        return f"outage {sc.outage_s:g} s, then {sc.settle_s:g} s"
    imp = sc.impairment
    assert imp is not None
    what = f"{imp.loss:.0%} random loss" if imp.loss else ""
    if imp.burst is not None:
        what = (
            f"Gilbert-Elliott p={imp.burst.p:.4f} r={imp.burst.r} (mean {imp.burst.mean_loss:.1%})"
        )
    return f"{what} for {sc.settle_s:g} s"


def print_scenario(sc: Scenario, result: dict[str, Any]) -> None:
    print(f"\n== {sc.name}: {describe(sc)}, on 60 ± 10 ms each way ==")
    for system, rows in result.items():
        print(f"  {system} (set-up {rows['setup_s']} s)")
        for direction in (f"{rx}<-{tx}" for rx, tx in PAIRS):
            row = rows[direction]
            if row["missing_ids"] > IMPLAUSIBLE_MISSING:
                row["missing_ids"] = "?"
            cells = [f"{k}={row[k]}" for k in COLUMNS if k in row]
            print(f"    {direction}: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print all figures as JSON")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    everything = {}
    for sc in chosen:
        result = asyncio.run(run_scenario(sc, args.warmup, args.seed))
        everything[sc.name] = result
        print_scenario(sc, result)
    if args.json:
        print(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
