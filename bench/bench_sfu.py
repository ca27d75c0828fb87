"""The same conference as a full mesh and through a real Janus (VideoRoom, ``require_e2ee``),
in one run: set-up time, CPU per terminal, one-way video latency (and what the SFU adds).

Every terminal is an aiortc media stack in this process with its own synthetic source and
the real frame crypto (keys from a real key agreement); the mesh has one peer connection per
pair (``MediaCrypto.for_peer`` on each), the conference one upstream to Janus and one
downstream per other member (``hotline.sfu.conference``). Both run inside one network
namespace of the lab (Janus does not gather ICE on loopback; see ``tests.janus.server``), so
no packet crosses a real network. Needs root, /dev/net/tun and Debian's ``janus``.

- set-up: from the first member starting (mesh: first offer; SFU: creating the room) until
  every member has shown a video frame of every other member.
- CPU: this process's CPU time over a steady window divided by the number of terminals
  (mesh: all of it; SFU: the terminals' share, and Janus's own CPU from /proc beside it).
- latency: the frame id of each shown frame carries its send time (one clock: one process);
  p50 over every receiving pair. "Added by the SFU" = SFU p50 minus mesh p50.

    nice .venv/bin/python -m bench.bench_sfu --members 4 --window 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

from tests.janus.conference import (
    FPS,
    HEIGHT,
    WIDTH,
    conference,
    keyed_members,
    room_id,
    run_in_host,
)
from tests.janus.server import JanusServer, running_janus
from tests.netlab import Host, Lab, prerequisites

from hotline.e2ee.media import MediaCrypto
from hotline.media import engine
from hotline.media.sinks import VideoFrameIdSink
from hotline.media.sources import MediaSource, SyntheticAudioTrack, SyntheticVideoTrack
from hotline.media.stats import MediaCryptoStats

NAMES = ("berlin", "london", "paris", "rome", "tokyo", "ottawa", "delhi", "brasilia")
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _source(name: str) -> MediaSource:
    return MediaSource(SyntheticAudioTrack(), SyntheticVideoTrack(name, WIDTH, HEIGHT, FPS), name)


async def _wait_all(sinks: dict[tuple[str, str], VideoFrameIdSink], timeout: float) -> None:
    await asyncio.gather(*(s.wait_for(1, timeout) for s in sinks.values()))
    missing = [pair for pair, s in sinks.items() if s.readable == 0]
    if missing:
        raise RuntimeError(f"no video between {missing}")


async def _steady(
    sinks: dict[tuple[str, str], VideoFrameIdSink], window: float, members: int
) -> tuple[float, float, dict[str, Any]]:
    """CPU per terminal over ``window`` and the latency p50 over all pairs in it."""
    for s in sinks.values():
        s.latency = type(s.latency)()  # only the steady window counts
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(window)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0) / members
    p50s = [p for s in sinks.values() if (p := s.latency.p(50)) is not None]
    frames = sum(s.latency.count for s in sinks.values())
    corrupt = sum(s.corrupt for s in sinks.values())
    detail = {"pairs": len(sinks), "frames": frames, "corrupt": corrupt}
    return cpu, statistics.median(p50s), detail


async def run_mesh(ids: list[str], window: float) -> dict[str, Any]:
    _, cryptos = keyed_members(ids, seed=7)
    sources = {i: _source(i) for i in ids}
    sinks: dict[tuple[str, str], VideoFrameIdSink] = {}
    pcs = []
    started = time.monotonic()

    def side(me: str, peer: str, crypto: MediaCrypto) -> Any:
        pc = engine.create_peer_connection(crypto.for_peer(peer), MediaCryptoStats())
        for track in sources[me].subscribe():
            pc.addTrack(track)
        sink = sinks[me, peer] = VideoFrameIdSink()

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                sink.start(track)

        pcs.append(pc)
        return pc

    await asyncio.gather(
        *(
            engine.negotiate_direct(side(a, b, cryptos[a]), side(b, a, cryptos[b]))
            for a, b in combinations(ids, 2)
        )
    )
    await _wait_all(sinks, 60)
    setup_ms = (time.monotonic() - started) * 1000
    cpu, p50, detail = await _steady(sinks, window, len(ids))
    for s in sinks.values():
        await s.stop()
    await asyncio.gather(*(pc.close() for pc in pcs))
    for src in sources.values():
        src.stop()
    return {"setup_ms": setup_ms, "cpu_per_terminal": cpu, "latency_p50_ms": p50, **detail}


async def run_sfu(ids: list[str], window: float, janus: JanusServer) -> dict[str, Any]:
    _, cryptos = keyed_members(ids, seed=8)
    terminals = conference(janus.url, ids, cryptos, room_id(), secrets.token_hex(16))
    started = time.monotonic()
    try:
        await terminals[ids[0]].create_room(publishers=len(ids))
        await asyncio.gather(*(t.join() for t in terminals.values()))
        sinks = {(t.self_id, o): t.sinks_of(o)[0] for t in terminals.values() for o in t.members}
        await _wait_all(sinks, 60)
        setup_ms = (time.monotonic() - started) * 1000
        assert janus.proc is not None
        janus0 = proc_cpu_s(janus.proc.pid)
        wall0 = time.monotonic()
        cpu, p50, detail = await _steady(sinks, window, len(ids))
        janus_cpu = (proc_cpu_s(janus.proc.pid) - janus0) / (time.monotonic() - wall0)
        rejected = sum(t.crypto_stats().rejected_total for t in terminals.values())
    finally:
        await asyncio.gather(*(t.close() for t in terminals.values()))
    return {
        "setup_ms": setup_ms,
        "cpu_per_terminal": cpu,
        "janus_cpu": janus_cpu,
        "latency_p50_ms": p50,
        "rejected": rejected,
        **detail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--members", type=int, nargs="+", default=[2, 4], help="conference sizes to run"
    )
    parser.add_argument("--window", type=float, default=15.0, help="steady seconds measured")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    problem = prerequisites()
    if problem:
        raise SystemExit(f"bench_sfu: {problem}")
    results = []
    with tempfile.TemporaryDirectory(prefix="hotline-bench-sfu-") as tmp, Lab(seed=1) as lab:
        host: Host = lab.add_host("sfu")
        with running_janus(Path(tmp) / "janus", host) as janus:
            for n in args.members:
                ids = list(NAMES[:n])
                mesh = run_in_host(host, lambda ids=ids: run_mesh(ids, args.window))
                sfu = run_in_host(host, lambda ids=ids: run_sfu(ids, args.window, janus))
                results.append(
                    {
                        "members": n,
                        "mesh": mesh,
                        "sfu": sfu,
                        "sfu_added_latency_p50_ms": sfu["latency_p50_ms"] - mesh["latency_p50_ms"],
                        "cpu_ratio_sfu_over_mesh": sfu["cpu_per_terminal"]
                        / mesh["cpu_per_terminal"],
                    }
                )
    video = f"{WIDTH}x{HEIGHT}@{FPS} VP8 + Opus, SFrame AES_128_GCM_SHA256_128"
    if args.json:
        print(json.dumps({"video": video, "window_s": args.window, "runs": results}, indent=2))
        return
    print(f"{video}, steady window {args.window:.0f} s, {os.cpu_count()} cores")
    print(
        f"{'':14} {'set-up ms':>10} {'CPU/terminal':>13} {'Janus CPU':>10} "
        f"{'latency p50 ms':>15} {'corrupt':>8}"
    )
    for r in results:
        for name in ("mesh", "sfu"):
            m = r[name]
            janus_cpu = f"{m['janus_cpu'] * 100:9.1f}%" if "janus_cpu" in m else f"{'-':>10}"
            print(
                f"{r['members']} {name:12} {m['setup_ms']:10.0f} "
                f"{m['cpu_per_terminal'] * 100:12.1f}% {janus_cpu} "
                f"{m['latency_p50_ms']:15.1f} {m['corrupt']:8d}"
            )
        print(
            f"{r['members']} terminals: latency added by the SFU (p50) "
            f"{r['sfu_added_latency_p50_ms']:+.1f} ms; CPU per terminal SFU/mesh "
            f"{r['cpu_ratio_sfu_over_mesh']:.2f}"
        )


if __name__ == "__main__":
    main()
