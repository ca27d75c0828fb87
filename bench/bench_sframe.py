"""SFrame protect + unprotect per frame, as a ratio to bare AES-GCM encrypt + decrypt.

Run: ``.venv/bin/python bench/bench_sframe.py`` (``--json`` for machine output).

For each frame size (1 KB, 10 KB, 50 KB) and in the same run:

* **baseline**: ``AESGCM.encrypt`` then ``AESGCM.decrypt`` of the same bytes with a
  12-byte nonce and a 5-byte AAD (the size of our SFrame header), key object made once;
  this is the only place outside the crypto modules that touches ``cryptography.hazmat``,
  because it *is* the primitive we measure against;
* **sframe**: ``SFrameSender.protect`` then ``KeyStore.unprotect`` (RFC 9605 core: header,
  nonce, AAD, replay window);
* **media**: ``MediaCrypto.protect`` then ``MediaCrypto.unprotect`` for Opus ("audio") and
  a VP8 delta frame ("video") — the whole path the media engine calls, with its lock,
  counters and clear prefix.

The four loops are interleaved, round after round (best of 3 runs of ``n`` calls each).
Times shown are the fastest seen over all rounds; ratios are the median over rounds of
each round's own ratio to the baseline measured just before it, which cancels most of the
noise of a shared machine. The target is ``media / baseline <= 1.5``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hotline.e2ee import sframe
from hotline.e2ee.media import MediaCrypto

SIZES = (1024, 10 * 1024, 50 * 1024)
TARGET = 1.5


def per_call(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def measure(size: int, rounds: int) -> dict[str, float]:
    n = max(1000, 400_000 // size)
    payload = os.urandom(size)
    key = os.urandom(16)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    aad = os.urandom(5)

    def baseline() -> None:
        aead.decrypt(nonce, aead.encrypt(nonce, payload, aad), aad)

    base = os.urandom(32)
    kid = sframe.make_kid(1, 0)
    sender = sframe.SFrameSender(sframe.SFrameKey(sframe.DEFAULT_SUITE, kid, base))
    store = sframe.KeyStore(sframe.DEFAULT_SUITE)
    store.add(kid, "alice", base)

    def core() -> None:
        store.unprotect(sender.protect(payload))

    tx, rx = MediaCrypto(), MediaCrypto()
    tx.activate_send(1, 0, base)
    rx.install_receive_keys(1, ["alice", "bob"], {"alice": base})
    vp8 = b"\x31\x02\x00" + payload[3:]

    def media_audio() -> None:
        rx.unprotect("audio", tx.protect("audio", payload))

    def media_video() -> None:
        rx.unprotect("video", tx.protect("video", vp8))

    results: dict[str, list[float]] = {"baseline": [], "sframe": [], "audio": [], "video": []}
    ratios: dict[str, list[float]] = {"sframe": [], "audio": [], "video": []}
    for _ in range(rounds):  # interleaved, so that a busy moment hits neighbours alike
        b = per_call(baseline, n)
        results["baseline"].append(b)
        for name, fn in (("sframe", core), ("audio", media_audio), ("video", media_video)):
            t = per_call(fn, n)
            results[name].append(t)
            ratios[name].append(t / b)
    out = {k: min(v) for k, v in results.items()}
    out.update({f"{k}_ratio": statistics.median(v) for k, v in ratios.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        r = measure(size, args.rounds)
        rows.append(
            {
                "size": size,
                "baseline_us": r["baseline"] * 1e6,
                "sframe_us": r["sframe"] * 1e6,
                "media_audio_us": r["audio"] * 1e6,
                "media_video_us": r["video"] * 1e6,
                "sframe_ratio": r["sframe_ratio"],
                "media_audio_ratio": r["audio_ratio"],
                "media_video_ratio": r["video_ratio"],
            }
        )
    if args.json:
        print(json.dumps({"target_ratio": TARGET, "rows": rows}, indent=2))
        return
    print(
        f"{'frame':>7} {'AES-GCM':>9} {'sframe':>9} {'media a':>9} {'media v':>9}   "
        f"{'ratio sframe':>12} {'audio':>6} {'video':>6}  (target <= {TARGET})"
    )
    for row in rows:
        print(
            f"{row['size'] // 1024:>5}KB {row['baseline_us']:>7.2f}us {row['sframe_us']:>7.2f}us "
            f"{row['media_audio_us']:>7.2f}us {row['media_video_us']:>7.2f}us   "
            f"{row['sframe_ratio']:>12.2f} {row['media_audio_ratio']:>6.2f} "
            f"{row['media_video_ratio']:>6.2f}"
        )


if __name__ == "__main__":
    main()
