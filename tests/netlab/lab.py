"""The network lab: hosts are network namespaces joined by a userspace link in this process.

Each host is a namespace with ``lo`` up, IPv6 off, and a TUN device ``lab0`` holding one
address of 10.77.0.0/24. A forwarder thread reads every IPv4 packet a host sends into its
TUN device and writes it into the TUN device of the host that owns the destination address,
after the sender's link ``egress`` direction and the receiver's link ``ingress`` direction
(:mod:`tests.netlab.impair`) have delayed or dropped it. Drops happen inside the forwarder, so
a sender never sees an error (no EPERM, no ENETUNREACH): a lost packet is silently lost, as on
a real path. Settings change at once, during a run.

Namespaces are named ``hlab<pid>x<4 hex>-<host>``: parallel runs never collide. The lab
deletes them on close; a reaper process (:mod:`tests.netlab.reaper`) does it if the test
process dies, and the next lab sweeps any left by a process that no longer exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import heapq
import ipaddress
import itertools
import os
import random
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.netlab import reaper
from tests.netlab.impair import CLEAN, Counters, Direction, Impairment

T = TypeVar("T")

SUBNET = "10.77.0"
TUN_NAME = "lab0"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
_MAX_PACKET = 65536


def prerequisites() -> str | None:
    """Why the lab cannot run here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "the network lab needs root (namespaces, TUN)"
    if not os.path.exists("/dev/net/tun"):
        return "the network lab needs /dev/net/tun"
    if subprocess.run(["ip", "-V"], capture_output=True, check=False).returncode != 0:
        return "the network lab needs iproute2 (ip)"
    return None


def in_namespace(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread that has joined namespace ``ns``. What it creates
    there (a TUN device, a socket) stays in ``ns``; this process's other threads do not move."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # handed to the caller below
            error.append(e)

    thread = threading.Thread(target=target, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _open_tun() -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def _ipv4_only() -> None:
    """No IPv6 in this namespace: the lab routes IPv4, and ICE then gathers no IPv6 candidate
    that could never connect. (/proc/sys/net is that of the calling thread's namespace.)"""
    for conf in ("all", "default"):
        with contextlib.suppress(FileNotFoundError):  # a kernel without IPv6
            Path(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6").write_text("1")


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


class Link:
    """A host's link to the lab: ``egress`` (what the host sends) and ``ingress`` (what it
    receives), each with its own settings. A packet from A to B crosses A's egress, then B's
    ingress."""

    def __init__(self, host: str, lock: threading.Lock, rng: random.Random) -> None:
        self.host = host
        self._lock = lock
        self.egress = Direction(random.Random(rng.random()))
        self.ingress = Direction(random.Random(rng.random()))

    def _directions(self, direction: str) -> list[Direction]:
        try:
            return {
                "both": [self.egress, self.ingress],
                "egress": [self.egress],
                "ingress": [self.ingress],
            }[direction]
        except KeyError:
            raise ValueError(f"direction must be both, egress or ingress: {direction!r}") from None

    def set(
        self, impairment: Impairment | None = None, *, direction: str = "both", **fields: Any
    ) -> None:
        """Replace the settings (``impairment``), or change some fields of the current ones
        (``set(delay_ms=60, jitter_ms=10)``), in one or both directions, at once."""
        with self._lock:
            for d in self._directions(direction):
                new = impairment if impairment is not None else d.settings
                d.set(new.replace(**fields) if fields else new)

    def clear(self, direction: str = "both") -> None:
        """No impairment (an outage in progress stays)."""
        self.set(CLEAN, direction=direction)

    def down(self, direction: str = "both") -> None:
        """Outage until :meth:`up`: every packet in the affected directions is dropped,
        including those already in flight towards this host."""
        with self._lock:
            for d in self._directions(direction):
                d.down_until = float("inf")

    def up(self, direction: str = "both") -> None:
        with self._lock:
            for d in self._directions(direction):
                d.down_until = 0.0

    def outage(self, seconds: float, direction: str = "both") -> float:
        """Outage for ``seconds`` from now; returns the CLOCK_MONOTONIC time it ends."""
        until = time.monotonic() + seconds
        with self._lock:
            for d in self._directions(direction):
                d.down_until = until
        return until

    @property
    def is_down(self) -> bool:
        now = time.monotonic()
        return self.egress.is_down(now) or self.ingress.is_down(now)

    def counters(self) -> dict[str, Counters]:
        """A copy of both directions' counters."""
        with self._lock:
            return {
                "egress": _copy(self.egress.counters),
                "ingress": _copy(self.ingress.counters),
            }


def _copy(c: Counters) -> Counters:
    return Counters(forwarded=c.forwarded, bytes=c.bytes, dropped=dict(c.dropped))


class Host:
    """A namespace of the lab with one address; commands and processes run inside it."""

    def __init__(self, lab: Lab, name: str, ns: str, *, addr: str, fd: int, link: Link) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.addr = addr
        self.fd = fd
        self.link = link

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.addr}, ns={self.ns})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside this host (``ip netns exec``, which then execs ``argv``:
        the process id is the command's own)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}

    def popen(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this host; it is killed when the lab closes."""
        proc = subprocess.Popen(self.argv(argv), env=self.env(env), **kwargs)
        self.lab.processes.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        timeout: float = 60.0,
        check: bool = True,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host to completion; its output as text."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(
            self.argv(argv), env=self.env(env), timeout=timeout, check=check, text=True, **kwargs
        )

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> asyncio.subprocess.Process:
        """Start ``argv`` inside this host as an asyncio subprocess (killed when the lab
        closes)."""
        proc = await asyncio.create_subprocess_exec(*self.argv(argv), env=self.env(env), **kwargs)
        self.lab.async_processes.append(proc)
        return proc

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket of this host, for the test process itself to use."""
        return in_namespace(self.ns, lambda: socket.socket(family, kind))


class Lab:
    """Hosts joined by the userspace link. Use as a context manager (or call :meth:`close`)."""

    def __init__(self, seed: int | None = None, subnet: str = SUBNET) -> None:
        problem = prerequisites()
        if problem:
            raise RuntimeError(problem)
        self.seed = seed if seed is not None else secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self.subnet = subnet
        self.prefix = f"hlab{os.getpid()}x{secrets.token_hex(2)}-"
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self.async_processes: list[asyncio.subprocess.Process] = []
        self.lock = threading.Lock()
        self.not_routed = 0  # IPv4 packets to an address no host has (and non-IPv4 ones)
        self._by_addr: dict[bytes, Host] = {}
        self._by_fd: dict[int, Host] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop = False
        self._closed = False
        self.failure: BaseException | None = None
        reaper.sweep_stale()
        self._reaper = subprocess.Popen(
            [sys.executable, str(Path(reaper.__file__)), self.prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives a Ctrl-C or a kill of the test's process group
        )
        self._thread = threading.Thread(target=self._forward, name="netlab", daemon=True)
        self._thread.start()

    # --- set-up ---------------------------------------------------------------------------

    def add_host(self, name: str) -> Host:
        """A new host: namespace, ``lo`` up, ``lab0`` with the next address of the subnet."""
        if name in self.hosts or not name.replace("-", "").isalnum():
            raise ValueError(f"bad or duplicate host name {name!r}")
        addr = f"{self.subnet}.{len(self.hosts) + 1}"
        ns = f"{self.prefix}{name}"
        _ip("netns", "add", ns)
        in_namespace(ns, _ipv4_only)
        fd = in_namespace(ns, _open_tun)
        try:
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", TUN_NAME)
            _ip("-n", ns, "link", "set", TUN_NAME, "txqueuelen", "1000", "up")
        except BaseException:
            os.close(fd)
            raise
        host = Host(self, name, ns, addr=addr, fd=fd, link=Link(name, self.lock, self.rng))
        with self.lock:
            self.hosts[name] = host
            self._by_addr[ipaddress.IPv4Address(addr).packed] = host
            self._by_fd[fd] = host
        os.write(self._wake_w, b"h")
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def link(self, name: str) -> Link:
        return self.hosts[name].link

    def counters(self) -> dict[str, dict[str, Counters]]:
        """A copy of every link's counters: ``counters()["alpha"]["egress"].forwarded``."""
        self.check()
        return {name: h.link.counters() for name, h in self.hosts.items()}

    def report(self) -> dict[str, dict[str, dict[str, object]]]:
        """Every link's counters as plain data (JSON)."""
        return {
            name: {k: c.to_dict() for k, c in links.items()}
            for name, links in self.counters().items()
        }

    # --- the forwarder --------------------------------------------------------------------

    def check(self) -> None:
        """Raise if the forwarder has failed (then no packet moves: say so, loudly)."""
        if self.failure is not None:
            raise RuntimeError(f"the lab's forwarder failed: {self.failure!r}") from self.failure

    def _forward(self) -> None:
        try:
            self._forward_loop()
        except BaseException as e:  # kept for check() and close(), and shown at once
            self.failure = e
            traceback.print_exc()

    def _forward_loop(self) -> None:
        heap: list[tuple[float, int, int, bytes, Host]] = []
        seq = itertools.count()
        while not self._stop:
            with self.lock:
                fds = [*self._by_fd, self._wake_r]
            timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else 0.5
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):  # a descriptor closed under us: closing
                continue
            now = time.monotonic()
            with self.lock:
                for fd in readable:
                    if fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 512)
                        continue
                    src = self._by_fd.get(fd)
                    for _ in range(64):  # bounded, so that no host starves the others
                        try:
                            packet = os.read(fd, _MAX_PACKET)
                        except (BlockingIOError, OSError):
                            break
                        if src is not None:
                            self._accept(packet, src, now, heap, seq)
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    at, _, stage, packet, dst = heapq.heappop(heap)
                    self._advance(at, stage, packet, dst, heap, seq)

    def _accept(
        self,
        packet: bytes,
        src: Host,
        now: float,
        heap: list[tuple[float, int, int, bytes, Host]],
        seq: itertools.count[int],
    ) -> None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            self.not_routed += 1  # IPv6 router solicitations and the like
            return
        dst = self._by_addr.get(packet[16:20])
        if dst is None:
            self.not_routed += 1
            return
        at = src.link.egress.offer(len(packet), now)
        if at is not None:
            heapq.heappush(heap, (at, next(seq), 1, packet, dst))

    def _advance(  # noqa: PLR0917 (the heap entry, unpacked)
        self,
        at: float,
        stage: int,
        packet: bytes,
        dst: Host,
        heap: list[tuple[float, int, int, bytes, Host]],
        seq: itertools.count[int],
    ) -> None:
        ingress = dst.link.ingress
        if stage == 1:  # crossed the sender's egress; now the receiver's ingress
            out = ingress.offer(len(packet), at)
            if out is not None:
                heapq.heappush(heap, (out, next(seq), 2, packet, dst))
            return
        if ingress.is_down(time.monotonic()):  # in flight when the receiver's link went down
            ingress.counters.forwarded -= 1
            ingress.counters.bytes -= len(packet)
            ingress.drop("outage")
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(dst.fd, packet)

    # --- tear-down ------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process started in the lab, delete its namespaces, stop the forwarder."""
        if self._closed:
            return
        self._closed = True
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for aproc in self.async_processes:
            if aproc.returncode is None:
                with contextlib.suppress(ProcessLookupError, RuntimeError):  # loop gone
                    aproc.terminate()
        for proc in self.processes:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reaper.cleanup(self.prefix)  # whatever else runs in the namespaces, then the namespaces
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for host in self.hosts.values():
            with contextlib.suppress(OSError):
                os.close(host.fd)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._reaper.stdin is not None:
            self._reaper.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._reaper.wait(10)
        self.check()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
