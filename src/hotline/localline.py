"""A whole line on this machine: commissioned from nothing, with an exchange and terminals as
real separate processes on 127.0.0.1. The demo and the integration tests both run on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import socket
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from hotline.calllog import CallLog, VerifyReport, log_path
from hotline.charter import (
    DEFAULT_POLICY,
    ExchangeEndpoint,
    Policy,
    SfuEndpoint,
    SignedCharter,
    load_charter,
)
from hotline.errors import ExchangeUnavailable, HotlineError
from hotline.exchange.tls import create_certificate
from hotline.provision import Member, create_line, line_terminal_dir
from hotline.terminal.control import ControlClient, read_control_file

if TYPE_CHECKING:
    from hotline.terminal.daemon import TerminalDaemon

START_TIMEOUT_S = 60.0


#: the kernel's range for the local ports of outgoing connections (and of bind to port 0)
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: free ports are picked at random from here up to the ephemeral range
LOW_PORT = 10_000


def free_port() -> int:
    """A port free for TCP and UDP on 127.0.0.1 now, to listen on a few seconds later.

    Picked below the kernel's ephemeral range where there is room: a port from that range
    (what a bind to port 0 gives) can be taken meanwhile as the local port of any outgoing
    connection, and the listener then fails with "address already in use"."""
    try:
        low = int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(LOW_PORT, low) if low > LOW_PORT + 1000 else 0
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", int(tcp.getsockname()[1])))
            except OSError:
                continue
            return int(tcp.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


class LocalLine:
    """Commission a line under ``root`` and run its exchange and terminals as processes."""

    def __init__(
        self,
        root: Path,
        line_id: str,
        sites: Mapping[str, Sequence[Member]],
        *,
        policy: Policy = DEFAULT_POLICY,
        exchanges: int = 1,
        turn_relays: Sequence[str] = (),
        sfus: Sequence[SfuEndpoint] = (),
    ) -> None:
        self.root = root
        self.turn_relays = tuple(turn_relays)
        self.sfus = tuple(sfus)
        self.line_id = line_id
        self.sites = sites
        self.policy = policy
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.controls: dict[str, tuple[str, str]] = {}
        #: the charter's exchanges, in order; the first is "exchange", the next "exchange2"…
        self.exchange_ports = [free_port() for _ in range(exchanges)]
        self.exchange_port = self.exchange_ports[0]
        self.exchange_url = f"wss://127.0.0.1:{self.exchange_port}"
        self.exchange_dir = root / "exchange"
        self.charter_path: Path | None = None

    # --- commissioning -------------------------------------------------------------------

    def commission(self) -> SignedCharter:
        urls = [self.exchange_url] + [f"wss://127.0.0.1:{p}" for p in self.exchange_ports[1:]]
        endpoints = tuple(
            ExchangeEndpoint(url, create_certificate(self._exchange_dir(i)))
            for i, url in enumerate(urls)
        )
        self.charter_path = create_line(
            self.root,
            self.line_id,
            {site: list(terminals) for site, terminals in self.sites.items()},
            exchanges=endpoints,
            policy=self.policy,
            turn_relays=self.turn_relays,
            sfus=self.sfus,
        )
        signed = load_charter(self.charter_path)
        signed.verify()
        return signed

    @property
    def charter(self) -> SignedCharter:
        assert self.charter_path is not None, "commission() first"
        return load_charter(self.charter_path)

    def terminal_dir(self, terminal_id: str) -> Path:
        return line_terminal_dir(self.root, terminal_id)

    # --- processes -------------------------------------------------------------------------

    async def spawn(self, name: str, *args: str) -> asyncio.subprocess.Process:
        with (self.root / f"{name}.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hotline",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[name] = proc
        return proc

    def _exchange_dir(self, index: int) -> Path:
        return self.exchange_dir if index == 0 else self.root / f"exchange{index + 1}"

    @staticmethod
    def exchange_name(index: int = 0) -> str:
        return "exchange" if index == 0 else f"exchange{index + 1}"

    async def start_exchange(self, index: int = 0) -> None:
        assert self.charter_path is not None, "commission() first"
        name = self.exchange_name(index)
        port = self.exchange_port if index == 0 else self.exchange_ports[index]
        await self.spawn(
            name,
            "exchange",
            "serve",
            "--dir",
            str(self._exchange_dir(index)),
            "--charter",
            str(self.charter_path),
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            str(self.root / f"{name}.sqlite"),
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # a liveness probe only; terminals pin the certificate
        deadline = time.monotonic() + START_TIMEOUT_S
        url = f"https://127.0.0.1:{port}/healthz"
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                self.check_alive(name)
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url, ssl=ctx) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise ExchangeUnavailable(f"the exchange did not start in time; see {name}.log")

    async def start_terminal(self, terminal_id: str, *extra: str) -> None:
        assert self.charter_path is not None, "commission() first"
        tdir = self.terminal_dir(terminal_id)
        with contextlib.suppress(FileNotFoundError):
            (tdir / "state" / "control.json").unlink()
        await self.spawn(
            terminal_id,
            "terminal",
            "run",
            "--terminal",
            str(tdir),
            "--charter",
            str(self.charter_path),
            *extra,
        )

    async def wait_control(self, terminal_id: str) -> None:
        """Wait until a terminal's control API answers (with or without the exchange)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive(terminal_id)
            with contextlib.suppress(HotlineError):
                url, token = read_control_file(self.terminal_dir(terminal_id))
                async with ControlClient(url, token) as control:
                    await control.request("GET", "/status")
                self.controls[terminal_id] = (url, token)
                return
            await asyncio.sleep(0.1)
        raise HotlineError(f"{terminal_id}'s control API did not answer; see its log")

    async def wait_online(self, terminal_ids: Sequence[str]) -> None:
        """Wait until every terminal's control API answers and sees all of them online."""
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = set(terminal_ids)
        while pending and time.monotonic() < deadline:
            for tid in sorted(pending):
                self.check_alive(tid)
                with contextlib.suppress(HotlineError):
                    url, token = read_control_file(self.terminal_dir(tid))
                    async with ControlClient(url, token) as control:
                        status = await control.request("GET", "/status")
                    online = set(status["exchange"]["online"])
                    if status["exchange"]["connected"] and set(terminal_ids) <= online:
                        self.controls[tid] = (url, token)
                        pending.discard(tid)
            await asyncio.sleep(0.1)
        if pending:
            raise ExchangeUnavailable(
                f"terminal(s) {', '.join(sorted(pending))} did not come online; see their logs"
            )

    async def start_in_process(
        self,
        terminal_id: str,
        *,
        auto_answer: bool = False,
        width: int = 640,
        height: int = 360,
        fps: int = 30,
        **overrides: Any,
    ) -> TerminalDaemon:
        """A terminal daemon in this process (tests inject faults into it; the benchmark
        times it), on loopback ICE, connected to this line's exchange. ``overrides``
        replace fields of its ``DaemonConfig`` (a readiness clock, retention, hook…)."""
        # aiortc loads only here: the demo's command line stays quick to start
        from hotline.media import aiortc_patch, engine  # noqa: PLC0415
        from hotline.terminal.daemon import TerminalDaemon  # noqa: PLC0415
        from hotline.terminal.main import build_config  # noqa: PLC0415

        assert self.charter_path is not None, "commission() first"
        config = build_config(
            terminal_dir=self.terminal_dir(terminal_id),
            charter_path=self.charter_path,
            exchange_url=None,
            passphrase_file=None,
            auto_answer=auto_answer,
            interfaces="loopback",
            width=width,
            height=height,
            fps=fps,
        )
        config = dataclasses.replace(config, **overrides)
        aiortc_patch.install()
        engine.set_ice_addresses(["loopback"])
        daemon = TerminalDaemon(config)
        await daemon.start()
        return daemon

    def control(self, terminal_id: str) -> ControlClient:
        return ControlClient(*self.controls[terminal_id])

    async def status(self, terminal_id: str) -> dict[str, Any]:
        async with self.control(terminal_id) as control:
            result: dict[str, Any] = await control.request("GET", "/status")
            return result

    def check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.returncode is not None:
            log = self.root / f"{name}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise HotlineError(f"{name} exited with {proc.returncode}: {' | '.join(tail)}")

    async def stop(self, name: str | None = None) -> None:
        """Stop one process (SIGTERM, then SIGKILL after 10 s), or all of them."""
        names = [name] if name else list(self.procs)
        for n in names:
            proc = self.procs[n]
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for n in names:
            proc = self.procs[n]
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    # --- audit -------------------------------------------------------------------------------

    def verify_log(self, terminal_id: str) -> VerifyReport:
        """Verify a terminal's call log with the charter's keys only (as an auditor would)."""
        charter = self.charter.charter
        keys = {t.terminal_id: t.identity_key for t in charter.terminals}
        with CallLog.open(log_path(self.terminal_dir(terminal_id)), terminal_id) as log:
            return log.verify(keys[terminal_id], keys)
