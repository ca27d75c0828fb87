"""A real coturn relay for tests: ``turnserver -c FILE`` in the foreground, on 127.0.0.1.

The test writes the whole configuration (its own port, loopback peers allowed, no TLS, no
CLI, log to stdout) in a folder of its own; the fixture skips when ``turnserver`` is missing
and fails in CI. :class:`LoopbackCapture` records the UDP datagrams to and from a port, to
check what a relay could see.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hotline.localline import free_port
from tests.conftest import require

REALM = "hotline.test"
TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"


def stun_binding_answers(port: int, timeout: float = 0.2) -> bool:
    """Whether a STUN binding request to 127.0.0.1:port gets a success response."""
    txid = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, ("127.0.0.1", port))
            data = sock.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == txid


@dataclass
class TurnServer:
    """One coturn process. ``users`` for lt-cred-mech, or ``shared_secret`` for
    use-auth-secret (coturn's time-limited REST API credentials)."""

    folder: Path
    users: dict[str, str] = field(default_factory=dict)
    shared_secret: str | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    @property
    def log_path(self) -> Path:
        return self.folder / "turnserver.log"

    def config(self) -> str:
        lines = [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={self.port}",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-tcp-relay",
            "no-multicast-peers",
            "allow-loopback-peers",
            "fingerprint",
            f"realm={REALM}",
            f"userdb={self.folder / 'turndb'}",
            f"pidfile={self.folder / 'turnserver.pid'}",
            "log-file=stdout",
            "simple-log",
            "no-software-attribute",
            "verbose",  # session lines: who allocated, and usage counters
        ]
        if self.shared_secret is not None:
            lines += ["use-auth-secret", f"static-auth-secret={self.shared_secret}"]
        else:
            lines.append("lt-cred-mech")
            lines += [f"user={name}:{password}" for name, password in self.users.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "turnserver.conf"
        conf.write_text(self.config())
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [TURNSERVER, "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while not stun_binding_answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"turnserver did not start:\n{self.log_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def require_turnserver() -> None:
    require(os.access(TURNSERVER, os.X_OK), "coturn's turnserver is not installed")


@contextlib.contextmanager
def running_turnserver(folder: Path, **kwargs: object) -> Iterator[TurnServer]:
    require_turnserver()
    server = TurnServer(folder, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- what the relay sees --------------------------------------------------------------------

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class LoopbackCapture:
    """UDP datagrams on ``lo`` to or from ``port`` (AF_PACKET: root only), in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.datagrams: list[tuple[int, int, bytes]] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:  # each loopback packet is seen leaving and arriving
                continue
            self._parse(frame[14:])

    def _parse(self, packet: bytes) -> None:
        if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
            return
        ihl = (packet[0] & 0x0F) * 4
        src, dst = struct.unpack("!HH", packet[ihl : ihl + 4])
        if self.port in (src, dst):
            self.datagrams.append((src, dst, packet[ihl + 8 :]))


def can_capture() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
    except (OSError, AttributeError):
        return False
    return True
