"""One end of a bare aiortc call (no Hotline: no E2EE, no seams), for the network-lab baseline.

Run inside a lab host by ``bench.bench_netlab``; the two ends exchange SDP through files in
DIR (the namespaces share the file system). Each sends synthetic 640x360 VP8 video whose frames
carry a frame id and their send time, and an Opus tone with a chirp each second; each reads
what it receives with the same sinks a terminal uses, and writes their figures to
DIR/stats-ROLE.json every half second until SIGTERM.

    python -m bench.netlab_bare --role offer|answer --dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from hotline.media.sinks import AudioChirpSink, VideoFrameIdSink
from hotline.media.sources import SyntheticAudioTrack, SyntheticVideoTrack

CODECS = {"video": ("video/VP8", "video/rtx"), "audio": ("audio/opus",)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def read_json(path: Path, timeout: float = 60.0) -> dict[str, Any]:
    for _ in range(int(timeout / 0.05)):
        if path.exists():
            return dict(json.loads(path.read_text()))
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {path.name} from the other end")


def vp8_and_opus(pc: RTCPeerConnection) -> None:
    for transceiver in pc.getTransceivers():
        caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
        wanted = CODECS[transceiver.kind]
        transceiver.setCodecPreferences([c for c in caps if c.mimeType in wanted])


async def run(role: str, folder: Path, width: int, height: int, fps: int) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never a public STUN server
    video, audio = VideoFrameIdSink(), AudioChirpSink()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        (video if track.kind == "video" else audio).start(track)

    def add_tracks() -> None:
        pc.addTrack(SyntheticAudioTrack())
        pc.addTrack(SyntheticVideoTrack(f"bare-{role}", width, height, fps))
        vp8_and_opus(pc)

    if role == "offer":
        add_tracks()
        await pc.setLocalDescription(await pc.createOffer())
        write_json(folder / "offer.json", {"sdp": pc.localDescription.sdp, "type": "offer"})
        answer = await read_json(folder / "answer.json")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    else:
        offer = await read_json(folder / "offer.json")
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        add_tracks()
        await pc.setLocalDescription(await pc.createAnswer())
        write_json(folder / "answer.json", {"sdp": pc.localDescription.sdp, "type": "answer"})

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        write_json(
            folder / f"stats-{role}.json",
            {
                "video_sink": video.to_dict(),
                "audio_sink": audio.to_dict(),
                "transport": pc.connectionState,
                "ice": pc.iceConnectionState,
            },
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    await asyncio.gather(video.stop(), audio.stop())
    await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=("offer", "answer"), required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(run(args.role, args.dir, args.width, args.height, args.fps))


if __name__ == "__main__":
    main()
