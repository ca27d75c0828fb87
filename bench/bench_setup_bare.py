"""Baseline for the call set-up ratio: bare aiortc, offer -> first decoded frame at both ends.

Two RTCPeerConnections in one process on 127.0.0.1 (iceServers=[]), VP8 + Opus, synthetic
640x360@30 video and audio; no signalling, no E2EE, no codec seams (only the loopback host
address setting). The clock starts just before ``createOffer`` and stops when *both* ends
have decoded their first remote video frame.

Other benchmarks import it as their baseline::

    from bench.bench_setup_bare import bare_setup_samples
    samples_ms = bare_setup_samples(runs=5)            # fresh process per run (like a terminal)
    one = asyncio.run(measure_bare_setup())             # in this process

Run alone: ``.venv/bin/python -m bench.bench_setup_bare --runs 5``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from hotline.media import aiortc_patch, engine
from hotline.media.sources import SyntheticAudioTrack, SyntheticVideoTrack

ROOT = Path(__file__).resolve().parent.parent


async def _first_frame(track: MediaStreamTrack, when: asyncio.Future[float]) -> None:
    try:
        await track.recv()
        if not when.done():
            when.set_result(time.perf_counter())
        while True:  # keep draining so the receiver never backs up
            await track.recv()
    except MediaStreamError:
        pass


async def measure_bare_setup(
    width: int = 640, height: int = 360, fps: int = 30, timeout: float = 20.0
) -> dict[str, float]:
    """One bare set-up in this process. Returns ``setup_ms`` (both ends) and each end's."""
    aiortc_patch.install_host_addresses()  # loopback only; the codec seams stay untouched
    if aiortc_patch.installed():
        raise RuntimeError("the E2EE seams are installed in this process: not a bare baseline")
    pcs = [RTCPeerConnection(engine.rtc_configuration()) for _ in range(2)]
    return await _measure(pcs, width, height, fps, timeout)


async def measure_seam_setup(
    width: int = 640, height: int = 360, fps: int = 30, timeout: float = 20.0
) -> dict[str, float]:
    """The same with the E2EE seams installed and an AES-GCM frame crypto bound to both ends
    (still no signalling): what the media layer alone adds to set-up."""
    sys.path.insert(0, str(ROOT))
    from tests.media.aesgcm_crypto import crypto_pair

    pcs = [engine.create_peer_connection(c) for c in crypto_pair()]
    return await _measure(pcs, width, height, fps, timeout)


async def _measure(
    pcs: list[RTCPeerConnection], width: int, height: int, fps: int, timeout: float
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    firsts = [loop.create_future() for _ in pcs]
    tasks: list[asyncio.Task[None]] = []
    for pc, fut in zip(pcs, firsts, strict=True):

        def on_track(track: MediaStreamTrack, fut: asyncio.Future[float] = fut) -> None:
            if track.kind == "video":
                tasks.append(asyncio.ensure_future(_first_frame(track, fut)))

        pc.on("track", on_track)
    a, b = pcs
    a.addTrack(SyntheticAudioTrack())
    a.addTrack(SyntheticVideoTrack("bare-a", width, height, fps))
    # the answerer's source exists before the clock starts, as a running terminal's does
    b_tracks = [SyntheticAudioTrack(), SyntheticVideoTrack("bare-b", width, height, fps)]
    try:
        start = time.perf_counter()
        engine.force_e2ee_codecs(a)
        await a.setLocalDescription(await a.createOffer())
        offer = a.localDescription
        await b.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type))
        for track in b_tracks:
            b.addTrack(track)
        engine.force_e2ee_codecs(b)
        await b.setLocalDescription(await b.createAnswer())
        answer = b.localDescription
        await a.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))
        t_a, t_b = await asyncio.wait_for(asyncio.gather(*firsts), timeout)
        return {
            "setup_ms": (max(t_a, t_b) - start) * 1000,
            "a_first_frame_ms": (t_a - start) * 1000,
            "b_first_frame_ms": (t_b - start) * 1000,
        }
    finally:
        await asyncio.gather(*(pc.close() for pc in pcs))
        for task in tasks:
            task.cancel()


def bare_setup_samples(
    runs: int = 5, fresh_process: bool = True, *, seams: bool = False
) -> list[float]:
    """``runs`` bare set-up times in ms, each in a fresh Python process by default.

    ``seams=True`` measures :func:`measure_seam_setup` instead (always in fresh processes).
    """
    out = []
    for _ in range(runs):
        if fresh_process or seams:
            flag = ["--once-seams"] if seams else ["--once"]
            proc = subprocess.run(
                [sys.executable, "-m", "bench.bench_setup_bare", *flag],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            out.append(float(json.loads(proc.stdout)["setup_ms"]))
        else:
            out.append(asyncio.run(measure_bare_setup())["setup_ms"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--once", action="store_true", help="one run here, JSON on stdout")
    parser.add_argument("--once-seams", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", action="store_true", help="all runs in this process")
    parser.add_argument(
        "--compare-seams",
        action="store_true",
        help="alternate with runs that have the E2EE seams and crypto bound; print the ratio",
    )
    args = parser.parse_args()
    if args.once or args.once_seams:
        measure = measure_seam_setup if args.once_seams else measure_bare_setup
        print(json.dumps(asyncio.run(measure())))
        return
    if not args.compare_seams:
        samples = bare_setup_samples(args.runs, fresh_process=not args.in_process)
        summary = {
            "bare_setup_ms": [round(s, 1) for s in samples],
            "median_ms": round(statistics.median(samples), 1),
        }
        print(json.dumps(summary, indent=2))
        return
    bare: list[float] = []
    seams: list[float] = []
    for _ in range(args.runs):
        bare += bare_setup_samples(1)
        seams += bare_setup_samples(1, seams=True)
    summary = {
        "bare_setup_ms": [round(s, 1) for s in bare],
        "seams_setup_ms": [round(s, 1) for s in seams],
        "bare_median_ms": round(statistics.median(bare), 1),
        "seams_median_ms": round(statistics.median(seams), 1),
        "ratio": round(statistics.median(seams) / statistics.median(bare), 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
