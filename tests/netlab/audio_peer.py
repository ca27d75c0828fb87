"""One end of an E2EE audio-only call on the network lab, for speech-quality measurement.

Run inside a lab host by :mod:`tests.netlab.audio`; the two ends exchange SDP and keys through
files in DIR (the namespaces share the file system). The offer sends the clip DIR/clip.raw
(48 kHz mono s16) in a loop and writes when it started (CLOCK_MONOTONIC, which the hosts
share); the answer sends the synthetic tone back, waits ``--warmup`` seconds after its first
frame, then captures what it plays out (frames placed at their timestamps, as
:func:`tests.media.audio_loss.run_call` does) until ``--copies`` whole copies of the clip
are in it, writes DIR/capture.raw and DIR/result.json, and exits. ``--mode aiortc`` runs
aiortc's own audio path (``set_audio_path(pc, False)``), ``hotline`` Hotline's; SFrame is on
in both. With ``--tone`` the offer sends the synthetic tone instead and writes when each
of its once-a-second chirps left (DIR/chirps.json, on SIGTERM), and the answer notes when
each was played out for ``--seconds`` after the warm-up: the one-way latency, on one clock.

    python -m tests.netlab.audio_peer --role offer|answer --mode hotline|aiortc --dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from array import array
from pathlib import Path
from typing import Any

from aiortc import RTCSessionDescription
from bench.netlab_bare import read_json, write_json  # the same file hand-over

from hotline.e2ee.media import MediaCrypto
from hotline.media import aiortc_patch, engine
from hotline.media.sinks import PcmCapture
from hotline.media.sources import SyntheticAudioTrack
from tests.media.audio_loss import RATE, SAMPLES, ChirpTimedTrack, ClipTrack
from tests.media.harness import close, make_side

ROSTER = ("a", "b")


def crypto(role: str, keys: dict[str, str]) -> MediaCrypto:
    me, other = ("a", "b") if role == "offer" else ("b", "a")
    c = MediaCrypto()
    c.activate_send(1, ROSTER.index(me), bytes.fromhex(keys[me]))
    c.install_receive_keys(1, ROSTER, {other: bytes.fromhex(keys[other])})
    return c


async def run(args: argparse.Namespace) -> None:
    folder: Path = args.dir
    engine.set_ice_addresses(["host"])  # the host's lab address (the default is loopback)
    keys = json.loads((folder / "keys.json").read_text())
    side = make_side(args.role, crypto(args.role, keys), audio_path=args.mode == "hotline")
    pc = side.pc
    clip = array("h")
    clip.frombytes((folder / "clip.raw").read_bytes())
    try:
        if args.role == "offer":
            track = ChirpTimedTrack() if args.tone else ClipTrack(clip)
            pc.addTrack(track)
            side.tracks.append(track)
            engine.force_e2ee_codecs(pc)
            await pc.setLocalDescription(await pc.createOffer())
            write_json(folder / "offer.json", {"sdp": pc.localDescription.sdp})
            answer = await read_json(folder / "answer.json")
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            if isinstance(track, ClipTrack):
                while track._start is None:
                    await asyncio.sleep(0.01)
                write_json(folder / "start.json", {"monotonic": track._start})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.timeout)
            if isinstance(track, ChirpTimedTrack):
                write_json(folder / "chirps.json", {"sent_ms": track.chirps_sent_ms})
        else:
            offer = await read_json(folder / "offer.json")
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            back = SyntheticAudioTrack()
            pc.addTrack(back)
            side.tracks.append(back)
            engine.force_e2ee_codecs(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            write_json(folder / "answer.json", {"sdp": pc.localDescription.sdp})
            if args.tone:
                await answer_and_time(args, side)
            else:
                await answer_and_capture(args, side, clip)
    finally:
        await close(side)


async def wait_audio(args: argparse.Namespace, side: Any) -> None:
    deadline = time.monotonic() + args.timeout
    while side.audio_sink.frames < 10:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no audio: {side.audio_sink.to_dict()}")
        await asyncio.sleep(0.05)


async def answer_and_time(args: argparse.Namespace, side: Any) -> None:
    await wait_audio(args, side)
    await asyncio.sleep(args.warmup)
    chirps0 = len(side.audio_sink.chirp_times_ms)
    await asyncio.sleep(args.seconds)
    paths = aiortc_patch.audio_receivers(side.pc)
    write_json(
        args.dir / "result.json",
        {
            "chirps_played_ms": side.audio_sink.chirp_times_ms[chirps0:],
            "gap_ms": 0,
            "path": paths[0].stats() if paths else None,
            "sink": side.audio_sink.to_dict(),
        },
    )


async def answer_and_capture(args: argparse.Namespace, side: Any, clip: array[int]) -> None:
    folder: Path = args.dir
    await wait_audio(args, side)
    start = (await read_json(folder / "start.json"))["monotonic"]
    await asyncio.sleep(args.warmup)
    # where the sender is in its loop now (one clock), as run_call counts it from the track
    sent = int((time.monotonic() - start) * RATE / SAMPLES)
    to_next = (len(clip) - (sent * SAMPLES) % len(clip)) % len(clip)
    seconds = (to_next + args.copies * len(clip)) / RATE + 0.8
    capture = PcmCapture(None, by_pts=True)
    side.audio_sink.capture = capture
    await asyncio.sleep(seconds)
    side.audio_sink.capture = None
    (folder / "capture.raw").write_bytes(capture.pcm.tobytes())
    paths = aiortc_patch.audio_receivers(side.pc)
    write_json(
        folder / "result.json",
        {
            "gap_ms": round(capture.gap_samples * 1000 / RATE),
            "captured_s": round(len(capture.pcm) / RATE, 2),
            "path": paths[0].stats() if paths else None,
            "sink": side.audio_sink.to_dict(),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=("offer", "answer"), required=True)
    parser.add_argument("--mode", choices=("hotline", "aiortc"), required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--tone", action="store_true", help="time the tone's chirps instead")
    parser.add_argument("--seconds", type=float, default=10.0, help="--tone: how long")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
