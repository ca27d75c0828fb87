"""CPU and added one-way latency of per-frame E2EE, against bare aiortc, in one run.

Each sample is a fresh process holding a two-way call: two RTCPeerConnections on 127.0.0.1,
each sending synthetic 640x360@30 VP8 video (frame ids carry the send time) and Opus audio,
each receiving and decoding the other's. ``plain`` is bare aiortc (no seams installed);
``e2ee`` binds the project's SFrame ``MediaCrypto`` to both ends through media.aiortc_patch. After a
warm-up, the process CPU time (``time.process_time``: all threads) and the one-way video
latency of every decoded frame are recorded over a fixed window. Runs alternate between
the two modes so that load drifts on a shared host hit both alike.

Targets (issue 5): CPU ratio e2ee/plain <= 1.03; added latency p50 <= +3 ms.

    .venv/bin/python -m bench.bench_media --rounds 3 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from hotline.media import aiortc_patch, engine
from hotline.media.sinks import AudioChirpSink, VideoFrameIdSink
from hotline.media.sources import SyntheticAudioTrack, SyntheticVideoTrack
from hotline.media.stats import LatencyRecorder, MediaCryptoStats, percentile

ROOT = Path(__file__).resolve().parent.parent
MODES = ("plain", "e2ee")


def _frame_crypto_pair() -> tuple[Any, Any]:
    """The project's real frame crypto: two ``MediaCrypto`` (SFrame, RFC 9605, the default
    AES_128_GCM_SHA256_128 suite, VP8 clear prefix) holding each other's epoch-1 keys, as
    the key session leaves them once an epoch is active."""
    from hotline.e2ee.media import MediaCrypto
    from hotline.e2ee.sender_keys import BASE_KEY_SIZE

    roster = ("a", "b")
    keys = {member: os.urandom(BASE_KEY_SIZE) for member in roster}
    pair = (MediaCrypto(), MediaCrypto())
    for index, (member, crypto) in enumerate(zip(roster, pair, strict=True)):
        crypto.activate_send(1, index, keys[member])
        other = roster[1 - index]
        crypto.install_receive_keys(1, roster, {other: keys[other]})
    return pair


class _WallTimed:
    """Records the wall time of each video protect/unprotect: the latency the seam adds."""

    def __init__(self, inner: Any, protect_ns: list[int], unprotect_ns: list[int]) -> None:
        self.inner = inner
        self.protect_ns = protect_ns
        self.unprotect_ns = unprotect_ns

    def protect(self, kind: str, frame: bytes) -> bytes:
        start = time.perf_counter_ns()
        out: bytes = self.inner.protect(kind, frame)
        if kind == "video":
            self.protect_ns.append(time.perf_counter_ns() - start)
        return out

    def unprotect(self, kind: str, data: bytes) -> bytes:
        start = time.perf_counter_ns()
        out: bytes = self.inner.unprotect(kind, data)
        if kind == "video":
            self.unprotect_ns.append(time.perf_counter_ns() - start)
        return out


async def run_call(
    mode: str, *, seconds: float, warmup: float, width: int, height: int, fps: int
) -> dict[str, Any]:
    """One two-way call in this process; measures the window after ``warmup``."""
    aiortc_patch.install_host_addresses()
    stats = [MediaCryptoStats(), MediaCryptoStats()]
    protect_ns: list[int] = []
    unprotect_ns: list[int] = []
    if mode == "e2ee":
        cryptos = [_WallTimed(c, protect_ns, unprotect_ns) for c in _frame_crypto_pair()]
        pcs = [engine.create_peer_connection(c, s) for c, s in zip(cryptos, stats, strict=True)]
    else:
        pcs = [RTCPeerConnection(engine.rtc_configuration()) for _ in range(2)]
    video = [VideoFrameIdSink(), VideoFrameIdSink()]
    audio = [AudioChirpSink(), AudioChirpSink()]
    for pc, vs, aus in zip(pcs, video, audio, strict=True):

        def on_track(
            track: MediaStreamTrack, vs: VideoFrameIdSink = vs, aus: AudioChirpSink = aus
        ) -> None:
            (vs if track.kind == "video" else aus).start(track)

        pc.on("track", on_track)
    a, b = pcs
    a.addTrack(SyntheticAudioTrack())
    a.addTrack(SyntheticVideoTrack("bench-a", width, height, fps))
    engine.force_e2ee_codecs(a)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(
        RTCSessionDescription(a.localDescription.sdp, a.localDescription.type)
    )
    b.addTrack(SyntheticAudioTrack())
    b.addTrack(SyntheticVideoTrack("bench-b", width, height, fps))
    engine.force_e2ee_codecs(b)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(
        RTCSessionDescription(b.localDescription.sdp, b.localDescription.type)
    )
    await asyncio.sleep(warmup)
    del protect_ns[:], unprotect_ns[:]
    for sink in video:
        sink.latency = LatencyRecorder()
    frames0 = sum(s.frames for s in video)
    crypto0 = sum(s.crypto_cpu_ms() for s in stats)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    frames = sum(s.frames for s in video) - frames0
    crypto = sum(s.crypto_cpu_ms() for s in stats) - crypto0
    latencies = video[0].latency.samples + video[1].latency.samples
    result = {
        "mode": mode,
        "cpu_s": cpu1 - cpu0,
        "wall_s": wall1 - wall0,
        "cpu_share": (cpu1 - cpu0) / (wall1 - wall0),
        "video_frames": frames,
        "fps_per_direction": frames / 2 / (wall1 - wall0),
        "crypto_cpu_ms": crypto,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "video_protect_wall_us_p50": _us(percentile(protect_ns, 50)),
        "video_unprotect_wall_us_p50": _us(percentile(unprotect_ns, 50)),
        "audio_frames": sum(s.frames for s in audio),
        "rejected": sum(s.rejected("video") + s.rejected("audio") for s in stats),
    }
    await asyncio.gather(*(s.stop() for s in video), *(s.stop() for s in audio))
    await asyncio.gather(*(pc.close() for pc in pcs))
    return result


def _us(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1000, 1)


def _child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench.bench_media", "--child", mode,
            "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            "--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=args.seconds + args.warmup + 60,
        check=True,
    )  # fmt: skip
    return dict(json.loads(proc.stdout))


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows if r[key] is not None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="plain+e2ee pairs of runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = asyncio.run(
            run_call(
                args.child,
                seconds=args.seconds,
                warmup=args.warmup,
                width=args.width,
                height=args.height,
                fps=args.fps,
            )
        )
        print(json.dumps(out))
        return
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        for mode in order:
            row = _child(args, mode)
            runs[mode].append(row)
            print(
                f"round {r + 1} {mode:5s}: cpu {row['cpu_share'] * 100:5.1f}% of a core, "
                f"{row['fps_per_direction']:.1f} fps/direction, "
                f"latency p50 {row['latency_p50_ms']} ms, crypto {row['crypto_cpu_ms']:.1f} ms",
                file=sys.stderr,
            )
    plain, e2ee = runs["plain"], runs["e2ee"]
    cpu_ratio = _median(e2ee, "cpu_share") / _median(plain, "cpu_share")
    per_frame_ratio = statistics.median(
        (e["cpu_s"] / e["video_frames"]) / (p["cpu_s"] / p["video_frames"])
        for e, p in zip(e2ee, plain, strict=True)
    )
    added_p50 = _median(e2ee, "latency_p50_ms") - _median(plain, "latency_p50_ms")
    crypto_share = statistics.median(e["crypto_cpu_ms"] / 1000 / e["cpu_s"] for e in e2ee)
    seam_us = _median(e2ee, "video_protect_wall_us_p50") + _median(
        e2ee, "video_unprotect_wall_us_p50"
    )
    summary = {
        "config": {
            "size": f"{args.width}x{args.height}@{args.fps}",
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "plain": {
            "cpu_share_median": round(_median(plain, "cpu_share"), 4),
            "latency_p50_ms_median": _median(plain, "latency_p50_ms"),
            "latency_p95_ms_median": _median(plain, "latency_p95_ms"),
        },
        "e2ee": {
            "cpu_share_median": round(_median(e2ee, "cpu_share"), 4),
            "latency_p50_ms_median": _median(e2ee, "latency_p50_ms"),
            "latency_p95_ms_median": _median(e2ee, "latency_p95_ms"),
            "rejected": sum(e["rejected"] for e in e2ee),
        },
        "cpu_ratio": round(cpu_ratio, 4),
        "cpu_per_frame_ratio": round(per_frame_ratio, 4),
        "crypto_cpu_share_of_process": round(crypto_share, 5),
        "added_latency_p50_ms": round(added_p50, 2),
        "seam_latency_per_video_frame_us": round(seam_us, 1),
        "targets": {"cpu_ratio_max": 1.03, "added_latency_p50_ms_max": 3.0},
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
