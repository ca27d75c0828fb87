"""Time for a full rekey of a 10-member call, at each member (hybrid and X25519 KEMs).

Run: ``.venv/bin/python bench/bench_rekey.py`` (``--members N``, ``--rounds R``, ``--json``).

Ten :class:`CallKeySession` objects run in one process, connected by an in-memory loop
that delivers every message at once (no network). After the first epoch, the leader's
rekey timer fires and the whole epoch runs: start, ephemeral keys, roster, sender keys
(9 HPKE seals per member), acknowledgements. We time, for each member separately, the CPU
it spends inside the session (``handle_timer`` and ``receive``: key generation, seals,
opens, signatures, verifications, encoding) — the time that member needs for the rekey.
Delivery itself is not counted. The baseline in the same run is the raw crypto one member
cannot avoid: one KEM key generation, 9 HPKE seals, 9 opens and 4 signatures + 36
verifications (Ed25519), made directly with the same primitives through our sender_keys
module. Target: the slowest member < 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from hotline.e2ee.events import EpochActivated
from hotline.e2ee.sender_keys import EphemeralKeyPair, kem_by_name, seal
from hotline.e2ee.session import CallKeySession
from hotline.keys import SigningKey

TARGET_MS = 30.0


def build(n: int, kem: str) -> tuple[list[str], dict[str, CallKeySession]]:
    ids = [f"terminal-{i:02d}" for i in range(n)]
    keys = {i: SigningKey.generate() for i in ids}
    directory = {i: k.public for i, k in keys.items()}
    sessions = {
        i: CallKeySession(
            line_id="line",
            call_id="call",
            self_id=i,
            identity_key=keys[i],
            directory=directory,
            charter_version=1,
            kem=kem,
        )
        for i in ids
    }
    return ids, sessions


def pump(
    ids: list[str], sessions: dict[str, CallKeySession], spent: dict[str, float], now: float
) -> None:
    while True:
        queue = []
        for s in ids:
            for o in sessions[s].outgoing():
                targets = [o.recipient] if o.recipient else [r for r in ids if r != s]
                queue.extend((s, r, o.msg_type, o.body) for r in targets)
        if not queue:
            return
        for sender, recipient, msg_type, body in queue:
            t0 = time.perf_counter()
            sessions[recipient].receive(sender, msg_type, body, now)
            spent[recipient] += time.perf_counter() - t0


def one_rekey(n: int, kem: str) -> dict[str, float]:
    ids, sessions = build(n, kem)
    spent = dict.fromkeys(ids, 0.0)
    for s in ids:
        sessions[s].set_participants(ids, 0.0)
    pump(ids, sessions, spent, 0.0)
    assert len({sessions[s].epoch for s in ids}) == 1
    for s in ids:
        sessions[s].events()
    spent = dict.fromkeys(ids, 0.0)
    now = 300.0
    for s in ids:  # the leader's rekey timer fires; everyone's handle_timer runs
        t0 = time.perf_counter()
        sessions[s].handle_timer(now)
        spent[s] += time.perf_counter() - t0
    pump(ids, sessions, spent, now)
    activated = [e for s in ids for e in sessions[s].events() if isinstance(e, EpochActivated)]
    assert len(activated) == n and len({e.security_code for e in activated}) == 1
    return spent


def baseline(n: int, kem_name: str) -> float:
    """The raw crypto one member cannot avoid in one epoch, through the same primitives:
    one KEM key generation, n-1 HPKE seals, n-1 opens, 4 signatures, 4n-1 verifications."""
    kem = kem_by_name(kem_name)
    peers = [EphemeralKeyPair.generate(kem, os.urandom) for _ in range(n - 1)]
    key = SigningKey.generate()
    base = os.urandom(32)
    t0 = time.perf_counter()
    own = EphemeralKeyPair.generate(kem, os.urandom)
    for p in peers:
        seal(kem, p.public, base, b"info")
    elapsed = time.perf_counter() - t0
    to_open = [seal(kem, own.public, base, b"info") for _ in range(n - 1)]  # the peers' work
    sig = key.sign(b"message")
    t0 = time.perf_counter()
    for blob in to_open:
        own.open(blob, b"info")
    for _ in range(4):
        key.sign(b"message")
    for _ in range(4 * n - 1):
        key.public.verify(sig, b"message")
    return elapsed + time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = {}
    for kem in ("MLKEM768_X25519", "X25519"):
        per_round_max, per_round_mean, base = [], [], []
        for _ in range(args.rounds):
            spent = one_rekey(args.members, kem)
            per_round_max.append(max(spent.values()) * 1e3)
            per_round_mean.append(statistics.mean(spent.values()) * 1e3)
            base.append(baseline(args.members, kem) * 1e3)
        out[kem] = {
            "members": args.members,
            "slowest_member_ms": min(per_round_max),
            "mean_member_ms": min(per_round_mean),
            "raw_crypto_ms": min(base),
            "median_slowest_member_ms": statistics.median(per_round_max),
        }
    if args.json:
        print(json.dumps({"target_ms": TARGET_MS, "results": out}, indent=2))
        return
    print(f"full rekey of a {args.members}-member call, CPU per member (target < {TARGET_MS} ms)")
    for kem, r in out.items():
        print(
            f"  {kem:<16} slowest member {r['slowest_member_ms']:6.2f} ms "
            f"(median {r['median_slowest_member_ms']:6.2f}), mean member "
            f"{r['mean_member_ms']:6.2f} ms, raw crypto of one member {r['raw_crypto_ms']:6.2f} ms"
        )


if __name__ == "__main__":
    main()
