"""An E2EE audio call across the network lab, and what the answering end played out.

Shared by ``tests/netlab/test_audio_calls.py`` and ``bench/bench_audio_loss.py --lab``. The
two ends are processes (:mod:`tests.netlab.audio_peer`) in two lab hosts; the sender's link
carries ``impairment`` both ways, so every packet between them, media and RTCP, crosses it once.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from tests.media.audio_loss import chirp_latencies_ms
from tests.netlab import Impairment, Lab

ROOT = Path(__file__).resolve().parent.parent.parent


async def lab_audio_call(
    lab: Lab,
    folder: Path,
    impairment: Impairment,
    *,
    mode: str,
    clip: array[int],
    copies: int = 1,
    warmup: float = 3.0,
    sender: str = "alpha",
    receiver: str = "bravo",
    timeout: float = 120.0,
    tone_seconds: float = 0.0,
) -> dict[str, Any]:
    """One call, ``sender`` offering and sending ``clip`` in a loop, ``receiver`` capturing
    ``copies`` whole copies of it after ``warmup`` s. Returns the capture ("pcm"), the
    receiver's figures and the loss the link applied to the sender's packets. With
    ``tone_seconds``, the synthetic tone instead, and "latency_ms": each chirp's play time
    minus its send time over that long after the warm-up (no capture)."""
    folder.mkdir(parents=True)
    keys = {"a": os.urandom(32).hex(), "b": os.urandom(32).hex()}
    (folder / "keys.json").write_text(json.dumps(keys))
    (folder / "clip.raw").write_bytes(clip.tobytes())
    link = lab.link(sender)
    link.set(impairment)
    before = link.counters()
    procs = []
    common = ["--mode", mode, "--dir", str(folder), "--timeout", str(timeout)]
    for host, role in ((sender, "offer"), (receiver, "answer")):
        argv = [sys.executable, "-m", "tests.netlab.audio_peer", "--role", role, *common]
        if tone_seconds:
            argv += ["--tone", "--seconds", str(tone_seconds)]
        if role == "answer":
            argv += ["--warmup", str(warmup), "--copies", str(copies)]
        with (folder / f"{role}.log").open("ab") as log:
            procs.append(lab[host].popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    offer, answer = procs
    try:
        start = time.monotonic()
        while answer.poll() is None:
            if offer.poll() is not None:
                raise RuntimeError(f"the sender exited; see {folder}/offer.log")
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the call did not finish; see {folder}/*.log")
            await asyncio.sleep(0.1)
        if answer.returncode != 0:
            tail = (folder / "answer.log").read_text()[-2000:]
            raise RuntimeError(f"the receiver failed ({answer.returncode}): {tail}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    after = link.counters()
    egress = after["egress"]
    sent = egress.forwarded + egress.dropped_total
    sent -= before["egress"].forwarded + before["egress"].dropped_total
    dropped = egress.dropped_total - before["egress"].dropped_total
    pcm = array("h")
    result = json.loads((folder / "result.json").read_text())
    if tone_seconds:
        chirps = json.loads((folder / "chirps.json").read_text())["sent_ms"]
        result["latency_ms"] = chirp_latencies_ms(chirps, result.pop("chirps_played_ms"))
    else:
        pcm.frombytes((folder / "capture.raw").read_bytes())
    return {
        "mode": mode,
        "pcm": pcm,
        "loss": round(dropped / max(1, sent), 4),
        "elapsed_s": round(time.monotonic() - start, 1),
        **result,
    }
