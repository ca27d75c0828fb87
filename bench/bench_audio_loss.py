"""Speech quality under packet loss (PESQ-WB): Hotline's audio path against aiortc's.

Each run is an E2EE call (SFrame on), audio only, between two aiortc peer connections in one
process on 127.0.0.1, each end's ingress passed through a seeded in-process link
(``aiortc_patch.impair_ingress`` + ``media.link_model``; RTCP is impaired too): 60 ± 10 ms
each way, and 0 % / 2 % / 5 % random loss or bursty loss (Gilbert-Elliott p = 1 %, r = 25 %:
~3.8 % mean in bursts of ~4). A sends real recorded speech (Debian ``alsa-utils``' clips,
joined, ~12.4 s with 0.5 s of silence at each end; the synthetic speech-like signal if the
package is missing) in a loop; B captures every frame it plays out, placed at its timestamp.
Each whole copy of the clip in the capture is one PESQ sample (P.862.2 wideband at 16 kHz,
``pesq`` from PyPI), aligned by cross-correlation: ``hotline.media.speech``, the scoring the
readiness checks use.

``hotline`` is Hotline's audio path (``media.audio_path``: jitter buffer, libopus FEC/PLC,
FEC encoder at 64 kbit/s mono; between two Hotline peers RED with the two previous frames
and Opus at 48 kbit/s while loss is reported, ``media.red``); ``aiortc`` is the same call
with aiortc's own audio path (its jitter buffer, PyAV's Opus at 96 kbit/s, no FEC, no
concealment:
``set_audio_path(pc, False)``). Both modes run with the same seeds, alternating, in one
process.

Then one call per mode with the synthetic tone on the clean and the 5 % link measures the
one-way latency of what B plays out: each once-a-second chirp's play time minus its send time
(both ends share the monotonic clock).

With ``--lab`` the same calls cross the network lab instead (``tests.netlab``: namespaces and
a userspace TUN link, needs root): the two ends are processes in hosts ``alpha`` and
``bravo`` (``tests.netlab.audio_peer``), alpha's link carries the scenario both ways (60 ± 10
ms, random loss, or Gilbert-Elliott p = 1 %, r = 25 %), one lab for the whole run; modes
alternate call by call. ``loss`` is then what the link dropped of the sender's packets. The
latency calls run there too (the processes share CLOCK_MONOTONIC).

Targets (issue 11): Hotline >= 4.4 / 3.9 / 3.8 at 0 / 2 / 5 %, >= 3.6 bursty; one-way audio
latency on the 60 ms link <= 100 ms p50.

    .venv/bin/pip install -e '.[quality]'   # numpy + pesq (pesq builds from source with gcc)
    .venv/bin/python -m bench.bench_audio_loss --calls 3 --copies 2
    sudo .venv/bin/python -m bench.bench_audio_loss --lab --calls 3 --copies 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import tempfile
from array import array
from pathlib import Path
from typing import Any

from tests.media.audio_loss import RATE, run_call
from tests.netlab import GilbertElliott, Impairment, Lab
from tests.netlab.audio import lab_audio_call

from hotline.media.link_model import LinkSpec
from hotline.media.sources import synthetic_second
from hotline.media.speech import alsa_speech, score_copies

SCENARIOS: dict[str, LinkSpec] = {
    "0%": LinkSpec(delay_ms=60, jitter_ms=10),
    "2%": LinkSpec(delay_ms=60, jitter_ms=10, loss=0.02),
    "5%": LinkSpec(delay_ms=60, jitter_ms=10, loss=0.05),
    "bursty": LinkSpec(delay_ms=60, jitter_ms=10, ge_p=0.01, ge_r=0.25),
}
MODES = ("aiortc", "hotline")
#: the same scenarios on the network lab's link
LAB_SCENARIOS: dict[str, Impairment] = {
    "0%": Impairment(delay_ms=60, jitter_ms=10),
    "2%": Impairment(delay_ms=60, jitter_ms=10, loss=0.02),
    "5%": Impairment(delay_ms=60, jitter_ms=10, loss=0.05),
    "bursty": Impairment(delay_ms=60, jitter_ms=10, burst=GilbertElliott(p=0.01, r=0.25)),
}


def clip() -> tuple[array[int], str]:
    speech = alsa_speech()
    if speech is not None:
        return speech, "alsa-utils speech"
    one = array("h", synthetic_second("speech", chirp=False))
    out = array("h", bytes(RATE))  # 0.5 s silence
    for _ in range(10):
        out.extend(one)
    out.frombytes(bytes(RATE))
    return out, "synthetic speech-like signal (alsa-utils missing)"


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "n": len(values),
    }


async def one_call(
    args: argparse.Namespace, lab: Lab | None, name: str, mode: str, *, seed: int, ref: array[int]
) -> dict[str, Any]:
    if lab is not None:
        folder = Path(args.keep) / f"{name}-{mode}-{seed}"
        return await lab_audio_call(
            lab,
            folder,
            LAB_SCENARIOS[name],
            mode=mode,
            clip=ref,
            copies=args.copies,
            warmup=args.warmup,
        )
    r = await run_call(
        SCENARIOS[name],
        audio_path=mode == "hotline",
        seconds=0,
        seed=seed,
        clip=ref,
        copies=args.copies,
        warmup=args.warmup,
    )
    return r


async def calls(
    args: argparse.Namespace,
    lab: Lab | None,
    names: list[str],
    reference: array[int],
    runs: list[dict[str, Any]],
) -> None:
    for name in names:
        for call in range(args.calls):
            for mode in MODES:
                seed = 100 * call + 7
                r = await one_call(args, lab, name, mode, seed=seed, ref=reference)
                scores = score_copies(r["pcm"], reference, args.copies)
                entry = {
                    "scenario": name,
                    "mode": mode,
                    "seed": seed,
                    "pesq": [round(v, 3) for v in scores],
                    "loss": r["loss"],
                    "gap_ms": r["gap_ms"],
                    "path": r["path"],
                    "sender_expected_loss": r.get("sent_fec_loss"),
                }
                runs.append(entry)
                print(json.dumps(entry), flush=True)


def percentiles(values: list[int]) -> dict[str, Any]:
    values = sorted(values)
    return {
        "p50_ms": values[len(values) // 2] if values else None,
        "min_ms": values[0] if values else None,
        "max_ms": values[-1] if values else None,
        "n": len(values),
    }


async def lab_latency(args: argparse.Namespace, lab: Lab, ref: array[int]) -> dict[str, Any]:
    """One tone call per mode on the clean and the 5 % link: each chirp's one-way latency."""
    latency: dict[str, Any] = {}
    for name in ("0%", "5%"):
        for mode in MODES:
            r = await lab_audio_call(
                lab,
                Path(args.keep) / f"latency-{name}-{mode}",
                LAB_SCENARIOS[name],
                mode=mode,
                clip=ref,
                warmup=args.warmup,
                tone_seconds=args.latency_seconds,
            )
            latency[f"{name} {mode}"] = percentiles(r["latency_ms"])
            print(json.dumps({"latency": f"{name} {mode}", **latency[f"{name} {mode}"]}))
    return latency


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    reference, source = clip()
    names = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    results: dict[str, Any] = {"clip": source, "clip_s": round(len(reference) / RATE, 2)}
    results["link"] = "network lab" if args.lab else "in-process"
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        lab = None
        if args.lab:
            lab = stack.enter_context(Lab(seed=1))
            lab.add_host("alpha")
            lab.add_host("bravo")
            if not args.keep:
                args.keep = stack.enter_context(tempfile.TemporaryDirectory(prefix="netaudio-"))
        await calls(args, lab, names, reference, runs)
        if lab is not None and args.latency_seconds > 0:
            results["one_way_latency"] = await lab_latency(args, lab, reference)
    table: dict[str, Any] = {}
    for name in names:
        table[name] = {}
        for mode in MODES:
            mine = [r for r in runs if r["scenario"] == name and r["mode"] == mode]
            table[name][mode] = summary([v for r in mine for v in r["pesq"]])
            table[name][mode]["loss"] = round(
                statistics.mean(r["loss"] for r in mine or [{"loss": 0}]), 4
            )
            table[name][mode]["call_medians"] = [
                round(statistics.median(r["pesq"]), 2) for r in mine if r["pesq"]
            ]
    results["table"] = table
    if args.latency_seconds > 0 and not args.lab:
        # one-way latency of what is played out: the synthetic tone's chirps (one clock)
        latency: dict[str, Any] = {}
        for name in ("0%", "5%"):
            for mode in MODES:
                r = await run_call(
                    SCENARIOS[name],
                    audio_path=mode == "hotline",
                    seconds=args.latency_seconds,
                    seed=11,
                    warmup=args.warmup,
                )
                values = sorted(r["latency_ms"])
                latency[f"{name} {mode}"] = {
                    "p50_ms": values[len(values) // 2] if values else None,
                    "min_ms": values[0] if values else None,
                    "max_ms": values[-1] if values else None,
                    "n": len(values),
                }
                print(json.dumps({"latency": f"{name} {mode}", **latency[f"{name} {mode}"]}))
        results["one_way_latency"] = latency
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3, help="calls per scenario and mode")
    parser.add_argument("--copies", type=int, default=2, help="clip copies scored per call")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--scenarios", default="", help="comma-separated: 0%%,2%%,5%%,bursty")
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="tone call per mode (0: skip)"
    )
    parser.add_argument("--lab", action="store_true", help="across the network lab (root)")
    parser.add_argument("--keep", default="", help="--lab: keep each call's files here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(main_async(args))
    print(json.dumps(results, indent=2))
    print(text(results))


def text(results: dict[str, Any]) -> str:
    lines = [f"PESQ-WB, {results['link']} link, {results['clip']} ({results['clip_s']} s)"]
    lines.append("scenario  mode     median  range        n  link loss")
    for name, modes in results["table"].items():
        for mode, row in modes.items():
            if not row.get("n"):
                lines.append(f"{name:<9} {mode:<8} -")
                continue
            lines.append(
                f"{name:<9} {mode:<8} {row['median']:<7} {row['min']:.2f}-{row['max']:.2f}"
                f"  {row['n']:>3}  {row['loss']:.1%}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
