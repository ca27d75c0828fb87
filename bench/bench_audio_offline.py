"""Speech under loss without a network or a clock: FEC alone against RED, seeded, repeatable.

The same components as a call (``FecOpusEncoder`` on libopus with its loss feedback, RED
blocks, ``AudioReceivePath``: the jitter buffer and libopus FEC/PLC decoding), driven by a
simulated clock in 1 ms steps: frame ``i`` is sent at ``20 ms * i`` through
``media.link_model`` (60 ± 10 ms, FIFO; the benchmark's scenarios) and pushed when it
arrives. SFrame is left out (it neither adds nor drops a frame here). What the receiver plays
is scored as in ``bench_audio_loss`` (PESQ-WB, each whole copy of the clip after the first
second). A host that stalls changes nothing here, so the differences between modes are the
codec and buffer alone; ``bench_audio_loss`` is the real call.

    .venv/bin/python -m bench.bench_audio_offline --seeds 8 --scenarios bursty
"""

from __future__ import annotations

import argparse
import fractions
import json
import statistics
from array import array
from typing import Any

import av

from bench.bench_audio_loss import SCENARIOS, clip, score
from hotline.media import audio_path
from hotline.media.audio_path import AudioReceivePath, AudioSteps, FecOpusEncoder, LossFeedback
from hotline.media.link_model import LinkModel, LinkSpec

N = 960
OPUS_PT = 96


def run(
    reference: array[int], spec: LinkSpec, seed: int, red: bool, loops: int = 3
) -> dict[str, Any]:
    link = LinkModel(spec, seed)
    feedback = LossFeedback()
    for _ in range(30):  # the far end's reports: the link's mean loss
        feedback.on_report(round(spec.mean_loss * 256))
    encoder = FecOpusEncoder(feedback, lambda p: p, OPUS_PT if red else None)
    frames = [reference[i : i + N] for i in range(0, len(reference) - N + 1, N)] * loops
    arrivals: list[tuple[float, int, bytes]] = []
    sent_bytes = 0
    for i, pcm in enumerate(frames):
        frame = av.AudioFrame(format="s16", layout="mono", samples=N)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = 48000
        frame.pts = i * N
        frame.time_base = fractions.Fraction(1, 48000)
        for payload in encoder.encode(frame)[0]:
            sent_bytes += len(payload)
            delay = link.fate(i * 0.02)
            if delay is not None:
                arrivals.append((i * 0.02 + delay, i, payload))
    arrivals.sort()
    clock = [0.0]
    path = AudioReceivePath(lambda p: p, lambda: clock[0])
    out = array("h")
    k = 0
    t = 0.0
    while t < len(frames) * 0.02 + 0.5:
        clock[0] = t
        while k < len(arrivals) and arrivals[k][0] <= t:
            _, i, payload = arrivals[k]
            k += 1
            if red:
                path.on_red(i, i * N, payload, None, OPUS_PT)
            else:
                path.on_packet(i, i * N, payload, None)
        steps = path.pull()
        if steps:
            for played in path.decode(AudioSteps(steps)):
                assert isinstance(played, av.AudioFrame)
                out.extend(array("h", bytes(played.planes[0])[: 4 * played.samples])[::2])
        t += 0.001
    return {
        "pesq": score(out[N * 50 :], reference, loops - 1),
        "kbps": sent_bytes * 8 / (len(frames) * 0.02) / 1000,
        "loss": link.lost / max(1, link.packets),
        "path": path.stats(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds 7, 107, 207, ...")
    parser.add_argument("--scenarios", default="bursty", help="comma-separated: 0%%,2%%,5%%,bursty")
    args = parser.parse_args()
    reference, source = clip()
    table: dict[str, Any] = {"clip": source, "opus_kbps": audio_path.BITRATE // 1000}
    for name in args.scenarios.split(","):
        for mode in ("fec", "red"):
            runs = [
                run(reference, SCENARIOS[name], 100 * s + 7, mode == "red")
                for s in range(args.seeds)
            ]
            values = [v for r in runs for v in r["pesq"]]
            row = {
                "median": round(statistics.median(values), 2),
                "min": round(min(values), 2),
                "max": round(max(values), 2),
                "n": len(values),
                "kbps": round(statistics.mean(r["kbps"] for r in runs), 1),
                "loss": round(statistics.mean(r["loss"] for r in runs), 3),
                "pesq": [round(v, 2) for v in values],
                "plc": sum(r["path"]["plc"] for r in runs),
                "fec": sum(r["path"]["fec"] for r in runs),
                "red_recovered": sum(r["path"]["red_recovered"] for r in runs),
            }
            table[f"{name} {mode}"] = row
            print(json.dumps({"scenario": name, "mode": mode, **row}), flush=True)
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
