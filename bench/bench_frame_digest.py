"""Signed frame digests: per-frame cost, as a ratio to SFrame alone, and cost per digest.

Run: ``nice .venv/bin/python bench/bench_frame_digest.py`` (``--json`` for machine output).

For each frame (an Opus packet of 120 bytes, VP8 delta frames of 2 KB — 640x360 at
500 kbit/s — and 10 KB, a VP8 key frame of 50 KB), interleaved round after round in the same run:

* **baseline**: ``MediaCrypto.protect`` then ``MediaCrypto.unprotect`` with frame hashes off
  (``hash_buffer=0``): SFrame alone, the whole path the media engine calls;
* **digests**: the same with frame hashes on (one SHA-256 of the protected frame on each
  side, in the frame crypto's lock), plus each frame's share of what the call layer does
  with them: the sender's :class:`DigestSigner` and the receiver's :class:`DigestVerifier`
  (taking the hashes every 50 frames, as a 0.1 s tick would), without the signature.

Ratios are the median over rounds of each round's ``digests / baseline`` (the baseline
measured just before it). Separately: signing one ``e2ee.frame_digest`` of 75 frames (one
second of 50 audio + 25 video frames) and checking it at a receiver (parse, Ed25519
verification, matching), per digest. And what that adds up to for one stream (50 Opus
packets and 30 VP8 deltas of 2 KB a second, sent by one member and received by another),
in microseconds per second, to compare with encoding that stream (VP8 640x360: 2.3–3.6 ms
per frame, ~70–110 ms per second on these machines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from hotline.e2ee import messages as m
from hotline.e2ee.frame_digest import DigestSigner, DigestVerifier, FrameAuthenticity
from hotline.e2ee.media import AUDIO, VIDEO, MediaCrypto
from hotline.keys import SigningKey

FRAMES = (
    ("opus 120 B", AUDIO, b"\xfc" + os.urandom(119)),
    ("vp8 delta 2 KB", VIDEO, b"\xb1\x07\x00" + os.urandom(2045)),
    ("vp8 delta 10 KB", VIDEO, b"\xb1\x07\x00" + os.urandom(10 * 1024 - 3)),
    ("vp8 key 50 KB", VIDEO, bytes.fromhex("5003009d012a80026801") + os.urandom(50 * 1024 - 10)),
)
TICK_FRAMES = 50


def per_call(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def pair(hash_buffer: int) -> tuple[MediaCrypto, MediaCrypto]:
    base = os.urandom(32)
    tx = MediaCrypto(hash_buffer=hash_buffer)
    rx = MediaCrypto(hash_buffer=hash_buffer)
    tx.activate_send(1, 0, base)
    rx.install_receive_keys(1, ["alice", "bob"], {"alice": base})
    return tx, rx


def measure(kind: str, frame: bytes, rounds: int) -> dict[str, float]:
    n = max(500, 300_000 // len(frame))
    n -= n % TICK_FRAMES
    btx, brx = pair(0)
    dtx, drx = pair(1 << 16)
    signer = DigestSigner()
    verifier = DigestVerifier(strict=True)
    state = {"i": 0, "now": 0.0}

    def baseline() -> None:
        brx.unprotect(kind, btx.protect(kind, frame))

    def digests() -> None:
        drx.unprotect(kind, dtx.protect(kind, frame))
        state["i"] += 1
        if state["i"] % TICK_FRAMES == 0:  # the call layer's tick
            now = state["now"] = state["now"] + 0.1
            sent = dtx.take_frame_hashes().sent
            got = drx.take_frame_hashes().received
            signer.add(sent, now)
            verifier.frames(got, now)
            for r in signer.take(now):
                verifier.signed("alice", r.kid, r.first_ctr, r.hashes, now)
            verifier.poll(now)

    ratios: list[float] = []
    base_t: list[float] = []
    dig_t: list[float] = []
    for _ in range(rounds):
        b = per_call(baseline, n)
        d = per_call(digests, n)
        base_t.append(b)
        dig_t.append(d)
        ratios.append(d / b)
    assert verifier.stats().unauthenticated == {}, "the bench's own frames must verify"
    return {
        "baseline_us": min(base_t) * 1e6,
        "digests_us": min(dig_t) * 1e6,
        "ratio": statistics.median(ratios),
    }


def per_digest(rounds: int) -> dict[str, float]:
    """Sign one digest of a second's 75 frames; check it at a receiver."""
    ka, kb = SigningKey.generate(), SigningKey.generate()
    directory = {"alice": ka.public, "bob": kb.public}
    ctx = m.Context("line", "call", 1)
    hashes = [os.urandom(16) for _ in range(75)]
    kid = 1 << 8
    counter = {"first": 0}

    def sign() -> bytes:
        first = counter["first"]
        counter["first"] += 75
        return m.build_frame_digest(
            ka, ctx, epoch=1, signer="alice", kid=kid, first_ctr=first, hashes=hashes
        )

    bodies = [sign() for _ in range(200 * rounds)]
    bob = FrameAuthenticity(context=ctx, self_id="bob", identity_key=kb, directory=directory)
    it = iter(bodies)
    now = {"t": 0.0}

    def check() -> None:
        now["t"] += 0.001
        bob.receive("alice", next(it), now["t"])

    sign_s = min(per_call(sign, 100) for _ in range(rounds))
    check_s = min(per_call(check, 50) for _ in range(rounds))
    return {"sign_us": sign_s * 1e6, "check_us": check_s * 1e6, "bytes": float(len(bodies[0]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [{"frame": name, **measure(kind, frame, args.rounds)} for name, kind, frame in FRAMES]
    digest = per_digest(max(1, args.rounds // 2))
    extra = {r["frame"]: r["digests_us"] - r["baseline_us"] for r in rows}
    stream_us = 50 * extra["opus 120 B"] + 30 * extra["vp8 delta 2 KB"]
    stream_us += digest["sign_us"] + digest["check_us"]
    if args.json:
        out = {"rows": rows, "per_digest": digest, "stream_us_per_s": stream_us}
        print(json.dumps(out, indent=2))
        return
    print(f"{'frame':<16} {'SFrame alone':>13} {'+ digests':>10} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['frame']:<16} {r['baseline_us']:>11.2f}us {r['digests_us']:>8.2f}us "
            f"{r['ratio']:>6.2f}"
        )
    print(
        f"one digest of 75 frames ({digest['bytes']:.0f} B): sign {digest['sign_us']:.0f} us, "
        f"check at a receiver {digest['check_us']:.0f} us"
    )
    print(
        f"one stream (50 Opus + 30 VP8 2 KB frames/s, sent and received, one digest): "
        f"{stream_us:.0f} us per second ({stream_us / 1e4:.2f} % of a core)"
    )


if __name__ == "__main__":
    main()
