"""A line in the lab: the exchange and each terminal as CLI processes, each in its own host.

The line is commissioned as :class:`hotline.localline.LocalLine` does it, but the charter names
the exchange at its lab address (``wss://10.77.0.1:8443``, pinned), the exchange listens there
(``hotline exchange serve --listen``), and every terminal runs ``hotline terminal run
--interfaces <its lab address>`` in a host of its own, so that all exchange and media traffic
crosses the lab's link. The control API of a terminal listens on 127.0.0.1 inside its host;
the harness drives it as an operator would, with ``ip netns exec <host> hotline call ...``.

    async with lab_line(netlab, tmp_path) as line:        # exchange, alpha, bravo (auto-answer)
        netlab.link("alpha").set(delay_ms=60, jitter_ms=10)
        await line.dial("alpha", "bravo")
        statuses = await line.wait_media([("alpha", "bravo"), ("bravo", "alpha")])
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import ssl
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hotline.charter import DEFAULT_POLICY, Policy, Role
from hotline.errors import ExchangeUnavailable, HotlineError
from hotline.localline import START_TIMEOUT_S, LocalLine
from tests.netlab.lab import Host, Lab, in_namespace

EXCHANGE_PORT = 8443
POLL_S = 1.0  # each `hotline call status` is a fresh CLI process (~0.8 s of CPU)

Statuses = dict[str, dict[str, Any]]


def hotline_argv() -> list[str]:
    """The ``hotline`` command of this environment."""
    exe = Path(sys.executable).parent / "hotline"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("hotline")
    return [found] if found else [sys.executable, "-m", "hotline"]


def call_of(status: Mapping[str, Any]) -> dict[str, Any]:
    return dict(status.get("call") or {})


def sink(status: Mapping[str, Any], peer: str, kind: str) -> dict[str, Any]:
    """What ``status`` reports of the ``kind`` (video/audio) received from ``peer``."""
    peers = call_of(status).get("peers") or {}
    return dict((peers.get(peer) or {}).get(f"{kind}_sink") or {})


def frames(status: Mapping[str, Any], peer: str, kind: str) -> int:
    return int(sink(status, peer, kind).get("frames", 0))


class LabLine(LocalLine):
    """A :class:`LocalLine` whose processes run in the lab's hosts (one per process)."""

    def __init__(
        self,
        lab: Lab,
        root: Path,
        line_id: str,
        sites: Mapping[str, Sequence[tuple[str, Role]]],
        *,
        policy: Policy = DEFAULT_POLICY,
        exchange_host: str = "exchange",
    ) -> None:
        super().__init__(root, line_id, sites, policy=policy)
        self.lab = lab
        self.exchange_host = lab.hosts.get(exchange_host) or lab.add_host(exchange_host)
        self.exchange_port = EXCHANGE_PORT  # the exchange's namespace is its own: no clash
        self.exchange_url = f"wss://{self.exchange_host.addr}:{self.exchange_port}"

    def host(self, name: str) -> Host:
        """The host a process runs in: ``exchange`` or a terminal id (made on first use)."""
        if name == "exchange":
            return self.exchange_host
        return self.lab.hosts.get(name) or self.lab.add_host(name)

    # --- processes, each in its host -------------------------------------------------------

    async def spawn(self, name: str, *args: str) -> asyncio.subprocess.Process:
        with (self.root / f"{name}.log").open("ab") as log:
            proc = await self.host(name).spawn(
                [*hotline_argv(), *args],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    async def start_exchange(self) -> None:
        assert self.charter_path is not None, "commission() first"
        host = self.exchange_host
        await self.spawn(
            "exchange",
            "exchange",
            "serve",
            "--dir",
            str(self.exchange_dir),
            "--charter",
            str(self.charter_path),
            "--listen",
            f"{host.addr}:{self.exchange_port}",
            "--db",
            str(self.root / "exchange.sqlite"),
        )
        url = f"https://{host.addr}:{self.exchange_port}/healthz"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # a liveness probe only; terminals pin the certificate

        def probe() -> bool:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, context=ctx, timeout=1) as r,
            ):
                return bool(r.status == 200)
            return False

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive("exchange")
            if await asyncio.to_thread(in_namespace, host.ns, probe):
                return
            await asyncio.sleep(0.2)
        raise ExchangeUnavailable("the exchange did not start in time; see exchange.log")

    async def start_terminal(self, terminal_id: str, *extra: str) -> None:
        await super().start_terminal(
            terminal_id, "--interfaces", self.host(terminal_id).addr, *extra
        )

    async def restart_exchange(self) -> None:
        """Stop the exchange (SIGTERM) and start it again on the same address and database."""
        await self.stop("exchange")
        await self.start_exchange()

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a process of the line (``exchange`` or a terminal id)."""
        proc = self.procs[name]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            await proc.wait()

    # --- the operator's commands, inside the terminal's host ---------------------------------

    async def call_cli(self, terminal_id: str, *args: str, timeout: float = 60.0) -> Any:
        """``hotline call ARGS --terminal DIR --json`` in the terminal's host; its JSON."""
        argv = [*hotline_argv(), "call", *args, "--terminal", str(self.terminal_dir(terminal_id))]
        proc = await self.host(terminal_id).spawn(
            [*argv, "--json"],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise HotlineError(f"{terminal_id}: hotline call {args[0]} timed out") from None
        if proc.returncode != 0:
            text = (err or out).decode(errors="replace").strip()
            raise HotlineError(f"{terminal_id}: hotline call {args[0]} failed: {text}")
        return json.loads(out)

    async def status(self, terminal_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call_cli(terminal_id, "status")
        return result

    async def snapshot(self, terminal_ids: Sequence[str]) -> Statuses:
        """Every terminal's ``call status --json``, taken concurrently."""
        results = await asyncio.gather(*(self.status(t) for t in terminal_ids))
        return dict(zip(terminal_ids, results, strict=True))

    async def dial(self, caller: str, target: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call_cli(caller, "dial", target)
        return result

    async def hangup(self, terminal_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call_cli(terminal_id, "hangup")
        return result

    async def wait_for(
        self,
        terminal_ids: Sequence[str],
        check: Callable[[Statuses], bool],
        what: str,
        timeout: float = 60.0,
    ) -> Statuses:
        """Poll the terminals' status until ``check`` holds; fail with the last statuses."""
        deadline = time.monotonic() + timeout
        statuses: Statuses = {}
        while time.monotonic() < deadline:
            self.lab.check()
            for name in terminal_ids:
                self.check_alive(name)
            with contextlib.suppress(HotlineError):
                statuses = await self.snapshot(terminal_ids)
                if check(statuses):
                    return statuses
            await asyncio.sleep(POLL_S)
        raise AssertionError(f"timed out waiting for {what}; last statuses: {statuses}")

    async def wait_online(self, terminal_ids: Sequence[str]) -> None:
        def online(statuses: Statuses) -> bool:
            return all(
                s["exchange"]["connected"] and set(terminal_ids) <= set(s["exchange"]["online"])
                for s in statuses.values()
            )

        await self.wait_for(terminal_ids, online, "the terminals online", START_TIMEOUT_S)

    async def wait_media(
        self, pairs: Sequence[tuple[str, str]], min_frames: int = 20, timeout: float = 60.0
    ) -> Statuses:
        """Until every (receiver, sender) pair shows ``min_frames`` decrypted video and audio
        frames (the frame counters of the receiver's sinks, which count only decrypted ones)."""
        tids = sorted({t for pair in pairs for t in pair})

        def flowing(statuses: Statuses) -> bool:
            return all(
                frames(statuses[rx], tx, "video") >= min_frames
                and frames(statuses[rx], tx, "audio") >= min_frames
                for rx, tx in pairs
            )

        return await self.wait_for(tids, flowing, f"media on {pairs}", timeout)

    async def dial_and_wait_media(
        self, caller: str, target: str, timeout: float = 60.0
    ) -> Statuses:
        """Dial (``target`` answers, e.g. ``--auto-answer``) and wait for media both ways."""
        await self.dial(caller, target)
        return await self.wait_media([(caller, target), (target, caller)], timeout=timeout)


@contextlib.asynccontextmanager
async def lab_line(
    lab: Lab,
    root: Path,
    *,
    policy: Policy = DEFAULT_POLICY,
    terminals: Sequence[tuple[str, str, Role]] = (
        ("east", "alpha", Role.PRINCIPAL),
        ("west", "bravo", Role.PRINCIPAL),
    ),
    auto_answer: Sequence[str] = ("bravo",),
    extra: Mapping[str, Sequence[str]] | None = None,
) -> AsyncIterator[LabLine]:
    """A commissioned line with its exchange and terminals running in the lab, online."""
    sites: dict[str, list[tuple[str, Role]]] = {}
    for site, tid, role in terminals:
        sites.setdefault(site, []).append((tid, role))
    line = LabLine(lab, root, "lab-line", sites, policy=policy)
    line.commission()
    tids = [tid for _, tid, _ in terminals]
    try:
        await line.start_exchange()
        for tid in tids:
            args = [*(["--auto-answer"] if tid in auto_answer else []), *(extra or {}).get(tid, ())]
            await line.start_terminal(tid, *args)
        await line.wait_online(tids)
        yield line
    finally:
        await line.stop()
