"""A UDP echo pair for measuring the lab's link, stdlib only, run inside lab hosts.

    probe.py echo PORT
        answers every datagram with the datagram plus its own arrival time (CLOCK_MONOTONIC,
        ns); prints "ready" once bound.
    probe.py send HOST PORT COUNT INTERVAL_MS SIZE [LINGER_S]
        sends COUNT datagrams of SIZE bytes, one every INTERVAL_MS, receives the echoes
        meanwhile and for LINGER_S after the last, then prints one JSON object:
        {"sent": [t_send...], "errors": n, "replies": [[seq, t_send, t_far, t_back]...]}

Namespaces on one machine share CLOCK_MONOTONIC, so ``t_far - t_send`` is the one-way delay
there and ``t_back - t_far`` the one-way delay back.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

HEAD = struct.Struct("!Iq")  # sequence number, send time (ns)
FAR = struct.Struct("!q")  # arrival time at the echo host (ns)


def echo(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(65536)
        t = time.monotonic_ns()
        sock.sendto(data[: HEAD.size] + FAR.pack(t) + data[HEAD.size + FAR.size :], peer)


def send(host: str, port: int, count: int, *, interval_ms: float, size: int, linger: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    pad = b"\0" * max(0, size - HEAD.size - FAR.size)
    sent: list[int] = []
    replies: list[list[int]] = []
    errors = 0

    def drain(until: float) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0 or not sel.select(left):
                if left <= 0:
                    return
                continue
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                t_back = time.monotonic_ns()
                seq, t_send = HEAD.unpack_from(data)
                (t_far,) = FAR.unpack_from(data, HEAD.size)
                replies.append([seq, t_send, t_far, t_back])

    start = time.monotonic() + 0.05
    for seq in range(count):
        drain(start + seq * interval_ms / 1000.0)
        t = time.monotonic_ns()
        try:
            sock.sendto(HEAD.pack(seq, t) + FAR.pack(0) + pad, (host, port))
        except OSError:
            errors += 1
        sent.append(t)
    drain(time.monotonic() + linger)
    print(json.dumps({"sent": sent, "errors": errors, "replies": replies}), flush=True)


# --- the test side: start the two ends in lab hosts, read the result ----------------------


class _Host(Protocol):  # tests.netlab.Host; this file imports nothing of the package
    addr: str

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]: ...


@dataclass
class Result:
    """What a sender saw; times in ns (CLOCK_MONOTONIC)."""

    sent: list[int]
    errors: int
    replies: list[list[int]]

    @property
    def received(self) -> set[int]:
        return {r[0] for r in self.replies}

    @property
    def lost(self) -> int:
        return len(self.sent) - len(self.received)

    def one_way_ms(self, since_ns: int = 0, until_ns: int | None = None) -> list[float]:
        """One-way delays out (send to far arrival) of packets sent in [since, until)."""
        end = until_ns if until_ns is not None else 1 << 62
        return [(r[2] - r[1]) / 1e6 for r in self.replies if since_ns <= r[1] < end]

    def far_order(self) -> list[int]:
        """Sequence numbers in the order they reached the far host."""
        return [r[0] for r in sorted(self.replies, key=lambda r: r[2])]


def start_echo(host: _Host, port: int = 7777) -> subprocess.Popen[Any]:
    proc = host.popen(
        [sys.executable, __file__, "echo", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the echo probe did not start")
    return proc


def start_send(
    host: _Host,
    to: _Host,
    count: int,
    interval_ms: float,
    *,
    size: int = 200,
    port: int = 7777,
    linger_s: float = 0.4,
) -> subprocess.Popen[Any]:
    argv = [sys.executable, __file__, "send", to.addr, str(port), str(count)]
    argv += [str(interval_ms), str(size), str(linger_s)]
    return host.popen(argv, stdout=subprocess.PIPE, text=True)


def result(sender: subprocess.Popen[Any], timeout: float = 60.0) -> Result:
    out, _ = sender.communicate(timeout=timeout)
    data = json.loads(out)
    return Result(data["sent"], data["errors"], data["replies"])


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "echo":
        echo(int(args[0]))
    elif mode == "send":
        linger = float(args[5]) if len(args) > 5 else 1.0
        send(
            args[0],
            int(args[1]),
            int(args[2]),
            interval_ms=float(args[3]),
            size=int(args[4]),
            linger=linger,
        )
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
