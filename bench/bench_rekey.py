"""Cost of one complete rekey epoch at conference sizes: CPU per member and bytes per epoch.

Run: ``.venv/bin/python bench/bench_rekey.py`` (``--members 2,5,10,25,50``, ``--rounds R``,
``--kem X25519``, ``--design leader|pairwise|both``, ``--json``).

For each member count, ``n`` real :class:`CallKeySession` objects run in one process,
connected by an in-memory loop that delivers every message at once (no network; a message
to all is copied to each other member, as the exchange does). After the first epoch the
leader's rekey timer fires and a whole epoch runs. We time, for each member separately, the
CPU it spends inside its own session (``handle_timer`` and ``receive``: key generation,
seals, opens, signatures, verifications, encoding, parsing); delivery is not counted. We
count the bytes of the epoch two ways: *sent* (each message once, as its signer hands it to
the exchange) and *delivered* (every copy the exchange hands to a member).

Two designs run side by side, round after round, in the same process:

* **leader** (this tree, protocol v2): the epoch's leader seals one fresh epoch secret to
  each other member (n − 1 HPKE seals per epoch); every sender's base key is derived from it.
* **pairwise** (the baseline, protocol v1): every member seals its own base key to every
  other member (n · (n − 1) seals per epoch). Its code is loaded from the git history of
  this repository at :data:`BASELINE_COMMIT` (the last commit with that design) into a
  separate package, so both run against the same ``cryptography`` and the same machine.

Ratios are leader / pairwise (per round, median over rounds). Targets: at 10 members the
slowest member < 30 ms; at 25 members < 100 ms per member and a few hundred KB per epoch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline.e2ee.session import CallKeySession
from hotline.keys import SigningKey

#: the last commit whose key agreement is the pairwise design (protocol v1)
BASELINE_COMMIT = "f90468cc4a8aaed046c87d2f966c7ead80a59a5c"
BASELINE_PACKAGE = "hotline_e2ee_pairwise"
TARGETS_MS = {10: 30.0, 25: 100.0}
TARGET_BYTES_25 = 500_000
E2EE_DIR = "src/hotline/e2ee/"
_IMPORT = re.compile(r"^(\s*)(from|import) hotline\.e2ee\b", re.M)
ROOT = Path(__file__).resolve().parent.parent

SessionClass = Callable[..., Any]


def load_pairwise() -> SessionClass:
    """The baseline's ``CallKeySession``: ``src/hotline/e2ee/`` at :data:`BASELINE_COMMIT`,
    written to a temporary directory as the package ``hotline_e2ee_pairwise`` (its imports of
    ``hotline.e2ee`` rewritten; everything else comes from this tree's ``hotline``)."""
    try:
        listing = subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", "--name-only", BASELINE_COMMIT, E2EE_DIR],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"bench_rekey: the baseline needs this repository's git history ({exc}); "
            "run with --design leader to measure only the current design"
        ) from None
    target = Path(tempfile.mkdtemp(prefix="bench-rekey-")) / BASELINE_PACKAGE
    target.mkdir()
    for path in listing:
        if not path.endswith(".py"):
            continue
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        text = _IMPORT.sub(rf"\1\2 {BASELINE_PACKAGE}", text)
        (target / Path(path).name).write_text(text)
    sys.path.insert(0, str(target.parent))
    module = importlib.import_module(f"{BASELINE_PACKAGE}.session")
    cls: SessionClass = module.CallKeySession
    return cls


@dataclass
class EpochCost:
    cpu_s: dict[str, float]
    sent: int = 0
    delivered: int = 0
    #: message type -> (messages sent, bytes sent, bytes delivered)
    by_type: dict[str, list[int]] = field(default_factory=dict)

    def count(self, msg_type: str, size: int, copies: int) -> None:
        self.sent += size
        self.delivered += size * copies
        row = self.by_type.setdefault(msg_type, [0, 0, 0])
        row[0] += 1
        row[1] += size
        row[2] += size * copies


def build(cls: SessionClass, n: int, kem: str) -> tuple[list[str], dict[str, Any]]:
    ids = [f"terminal-{i:02d}" for i in range(n)]
    keys = {i: SigningKey.generate() for i in ids}
    directory = {i: k.public for i, k in keys.items()}
    sessions = {
        i: cls(
            line_id="line-sochi-washington",
            call_id="call-2021-12-07",
            self_id=i,
            identity_key=keys[i],
            directory=directory,
            charter_version=1,
            kem=kem,
            max_members=max(n, 2),
        )
        for i in ids
    }
    return ids, sessions


def pump(ids: list[str], sessions: dict[str, Any], cost: EpochCost, now: float) -> None:
    while True:
        queue: list[tuple[str, str, str, bytes]] = []
        for s in ids:
            for o in sessions[s].outgoing():
                targets = [o.recipient] if o.recipient else [r for r in ids if r != s]
                cost.count(o.msg_type, len(o.body), len(targets))
                queue.extend((s, r, o.msg_type, o.body) for r in targets)
        if not queue:
            return
        for sender, recipient, msg_type, body in queue:
            t0 = time.process_time()
            sessions[recipient].receive(sender, msg_type, body, now)
            cost.cpu_s[recipient] += time.process_time() - t0


def one_rekey(cls: SessionClass, n: int, kem: str) -> EpochCost:
    """Set up an ``n``-member call, then measure one complete rekey epoch."""
    ids, sessions = build(cls, n, kem)
    warm = EpochCost(dict.fromkeys(ids, 0.0))
    for s in ids:
        sessions[s].set_participants(ids, 0.0)
    pump(ids, sessions, warm, 0.0)
    assert len({sessions[s].epoch for s in ids}) == 1, "the first epoch did not complete"
    for s in ids:
        sessions[s].events()
    cost = EpochCost(dict.fromkeys(ids, 0.0))
    now = 300.0
    for s in ids:  # the leader's rekey timer fires; everyone's handle_timer runs
        t0 = time.process_time()
        sessions[s].handle_timer(now)
        cost.cpu_s[s] += time.process_time() - t0
    pump(ids, sessions, cost, now)
    codes = {sessions[s].security_code for s in ids}
    epochs = {sessions[s].epoch for s in ids}
    assert epochs == {2} and len(codes) == 1, f"the rekey did not complete: {epochs}"
    return cost


def summarize(costs: list[EpochCost]) -> dict[str, Any]:
    return {
        "slowest_member_ms": min(max(c.cpu_s.values()) for c in costs) * 1e3,
        "median_slowest_member_ms": statistics.median(max(c.cpu_s.values()) for c in costs) * 1e3,
        "mean_member_ms": min(statistics.mean(c.cpu_s.values()) for c in costs) * 1e3,
        "sent_bytes": costs[0].sent,
        "delivered_bytes": costs[0].delivered,
        "by_type": costs[0].by_type,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="2,5,10,25", help="comma-separated member counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kem", default="MLKEM768_X25519", choices=["MLKEM768_X25519", "X25519"])
    parser.add_argument("--design", default="both", choices=["both", "leader", "pairwise"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.members.split(",")]
    except ValueError:
        parser.error("--members must be comma-separated integers, e.g. 2,5,10,25")
    if any(not 2 <= n <= 256 for n in sizes) or args.rounds < 1:
        parser.error("member counts must be in 2..256 and --rounds at least 1")
    designs: dict[str, SessionClass] = {}
    if args.design in ("both", "leader"):
        designs["leader"] = CallKeySession
    if args.design in ("both", "pairwise"):
        designs["pairwise"] = load_pairwise()
    results: dict[str, dict[str, Any]] = {}
    for n in sizes:
        costs: dict[str, list[EpochCost]] = {d: [] for d in designs}
        for _ in range(args.rounds):  # interleaved: one epoch of each design per round
            for name, cls in designs.items():
                costs[name].append(one_rekey(cls, n, args.kem))
        row: dict[str, Any] = {name: summarize(c) for name, c in costs.items()}
        if len(designs) == 2:
            ratios = [
                max(a.cpu_s.values()) / max(b.cpu_s.values())
                for a, b in zip(costs["leader"], costs["pairwise"], strict=True)
            ]
            row["ratio_slowest_member"] = statistics.median(ratios)
            row["ratio_sent_bytes"] = row["leader"]["sent_bytes"] / row["pairwise"]["sent_bytes"]
            row["ratio_delivered_bytes"] = (
                row["leader"]["delivered_bytes"] / row["pairwise"]["delivered_bytes"]
            )
        results[str(n)] = row
    if args.json:
        out = {"kem": args.kem, "rounds": args.rounds, "targets_ms": TARGETS_MS, "results": results}
        print(json.dumps(out, indent=2))
        return
    print(f"one rekey epoch, {args.kem}, best of {args.rounds} rounds; CPU per member (ms)")
    print(
        f"{'members':>7} {'design':<9} {'slowest':>8} {'median':>8} {'mean':>8} "
        f"{'sent KB':>9} {'deliv. KB':>10}"
    )
    for size, row in results.items():
        for name in designs:
            r = row[name]
            print(
                f"{size:>7} {name:<9} {r['slowest_member_ms']:8.2f} "
                f"{r['median_slowest_member_ms']:8.2f} {r['mean_member_ms']:8.2f} "
                f"{r['sent_bytes'] / 1e3:9.1f} {r['delivered_bytes'] / 1e3:10.1f}"
            )
        if "ratio_slowest_member" in row:
            print(
                f"{'':>7} {'ratio':<9} {row['ratio_slowest_member']:8.3f} {'':>8} {'':>8} "
                f"{row['ratio_sent_bytes']:9.3f} {row['ratio_delivered_bytes']:10.3f}"
            )
    for n, limit in TARGETS_MS.items():
        if str(n) in results and "leader" in results[str(n)]:
            got = results[str(n)]["leader"]["slowest_member_ms"]
            print(f"target at {n} members: slowest member < {limit} ms: {got:.1f} ms")


if __name__ == "__main__":
    main()
