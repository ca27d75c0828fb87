"""`hotline demo`: a real end-to-end encrypted call between two terminals on this machine.

It commissions a line from nothing (two sites, a terminal each, a charter both sites sign),
starts an exchange and both terminals as separate processes on 127.0.0.1, places a call,
shows it live, forces nothing: the rekey comes from the charter's rekey interval, which the
demo sets short. It hangs up, verifies both call logs, cleans up, and exits 0 only if
decrypted media flowed both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from hotline.calllog import CallLog
from hotline.charter import ExchangeEndpoint, Policy, Role, load_charter
from hotline.errors import CallError, ExchangeUnavailable, HotlineError
from hotline.exchange.server import init_exchange
from hotline.provision import create_line
from hotline.terminal.control import ControlClient, read_control_file

LINE_ID = "moscow-washington"
CALLER = "sochi"
CALLEE = "situation-room"
START_TIMEOUT_S = 30.0


@dataclass
class DemoResult:
    ok: bool = False
    setup_ms: float | None = None
    security_code: dict[str, str | None] = field(default_factory=dict)
    frames: dict[str, dict[str, int]] = field(default_factory=dict)
    video_latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    epochs: dict[str, list[int]] = field(default_factory=dict)
    log_verified: dict[str, bool] = field(default_factory=dict)
    failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "setup_ms": self.setup_ms,
            "security_code": self.security_code,
            "frames": self.frames,
            "video_latency_ms": self.video_latency_ms,
            "epochs": self.epochs,
            "log_verified": self.log_verified,
            "failure": self.failure,
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(
        self, root: Path, duration: float, rekey_s: int, live: bool, json_out: bool
    ) -> None:
        self.root = root
        self.duration = duration
        self.rekey_s = rekey_s
        self.live = live
        self.json_out = json_out
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.result = DemoResult()
        self.terminal_dirs: dict[str, Path] = {}
        self.log_lines: list[str] = []

    def say(self, text: str) -> None:
        self.log_lines.append(text)
        if not self.live and not self.json_out:
            print(text, flush=True)

    # --- commissioning ----------------------------------------------------------------------

    def commission(self) -> Path:
        port = _free_port()
        exchange_dir = self.root / "exchange"
        fingerprint = init_exchange(exchange_dir)
        self.exchange_url = f"wss://127.0.0.1:{port}"
        self.exchange_port = port
        self.exchange_dir = exchange_dir
        policy = Policy(rekey_interval_s=self.rekey_s)
        charter_path = create_line(
            self.root,
            LINE_ID,
            {"kremlin": [(CALLER, Role.PRINCIPAL)], "white-house": [(CALLEE, Role.PRINCIPAL)]},
            exchanges=(ExchangeEndpoint(self.exchange_url, fingerprint),),
            policy=policy,
        )
        signed = load_charter(charter_path)
        signed.verify()
        for t in signed.charter.terminals:
            self.terminal_dirs[t.terminal_id] = self._find_terminal_dir(t.terminal_id)
        self.say(
            f"line {LINE_ID} commissioned: charter v{signed.charter.version} signed by "
            + ", ".join(s.name for s in signed.charter.sites)
        )
        return charter_path

    def _find_terminal_dir(self, terminal_id: str) -> Path:
        for candidate in self.root.rglob("*"):
            if candidate.is_dir() and candidate.name == terminal_id and (candidate / "identity.key").exists():
                return candidate
        raise HotlineError(f"terminal folder for {terminal_id} not found under {self.root}")

    # --- processes -------------------------------------------------------------------------

    async def spawn(self, name: str, *args: str) -> None:
        log_path = self.root / f"{name}.log"
        fh = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hotline", *args,
            stdout=fh, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        fh.close()
        self.procs[name] = proc

    async def start_processes(self, charter_path: Path) -> None:
        await self.spawn(
            "exchange", "exchange", "serve", "--dir", str(self.exchange_dir),
            "--charter", str(charter_path), "--listen", f"127.0.0.1:{self.exchange_port}",
            "--db", str(self.root / "exchange.sqlite"),
        )
        await self._wait_exchange()
        for tid, tdir in self.terminal_dirs.items():
            args = ["terminal", "run", "--terminal", str(tdir), "--charter", str(charter_path)]
            if tid == CALLEE:
                args.append("--auto-answer")
            await self.spawn(tid, *args)
        for tid, tdir in self.terminal_dirs.items():
            await self._wait_control(tid, tdir)
        self.say("exchange and both terminals running as separate processes on 127.0.0.1")

    async def _wait_exchange(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # only a liveness probe: no data is sent
        deadline = time.monotonic() + START_TIMEOUT_S
        url = f"https://127.0.0.1:{self.exchange_port}/healthz"
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                self._check_alive("exchange")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url, ssl=ctx) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise ExchangeUnavailable("the exchange did not start in time; see exchange.log")

    async def _wait_control(self, tid: str, tdir: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive(tid)
            with contextlib.suppress(HotlineError):
                url, token = read_control_file(tdir)
                async with ControlClient(url, token) as control:
                    status = await control.request("GET", "/status")
                    if status["exchange"]["connected"] and len(status["exchange"]["online"]) >= 2:
                        self.controls[tid] = (url, token)
                        return
            await asyncio.sleep(0.1)
        raise ExchangeUnavailable(f"terminal {tid} did not come online; see {tid}.log")

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.returncode is not None:
            tail = (self.root / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise HotlineError(f"{name} exited with {proc.returncode}: {' | '.join(tail)}")

    async def stop_processes(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    # --- the call --------------------------------------------------------------------------

    async def call(self) -> None:
        self.controls: dict[str, tuple[str, str]] = {}
        charter_path = self.commission()
        await self.start_processes(charter_path)
        statuses: dict[str, dict[str, Any]] = {}
        async with ControlClient(*self.controls[CALLER]) as a, ControlClient(*self.controls[CALLEE]) as b:
            clients = {CALLER: a, CALLEE: b}
            t0 = time.monotonic()
            await a.request("POST", "/call", {"target": CALLEE})
            self.say(f"{CALLER} rings {CALLEE}")
            live = Live(self.render(statuses), refresh_per_second=4, transient=False) if self.live else None
            if live:
                live.start()
            try:
                end_at: float | None = None
                while True:
                    for tid, client in clients.items():
                        statuses[tid] = await client.request("GET", "/status")
                    if self.result.setup_ms is None and self._decrypting_both(statuses):
                        self.result.setup_ms = round((time.monotonic() - t0) * 1000, 1)
                        end_at = time.monotonic() + self.duration
                        self.say(f"decrypted media both ways after {self.result.setup_ms:.0f} ms")
                    for tid, st in statuses.items():
                        call = st.get("call") or {}
                        if call.get("state") == "ended":
                            raise CallError(f"{tid}: the call ended early")
                    if live:
                        live.update(self.render(statuses))
                    if end_at is None and time.monotonic() - t0 > START_TIMEOUT_S:
                        raise CallError("no decrypted media both ways within 30 s")
                    if end_at is not None and time.monotonic() >= end_at:
                        break
                    await asyncio.sleep(0.25)
                final = {tid: st for tid, st in statuses.items()}
                await a.request("POST", "/hangup")
                self.say(f"{CALLER} hangs up")
                await asyncio.sleep(1.0)
                for tid, client in clients.items():
                    statuses[tid] = await client.request("GET", "/status")
                if live:
                    live.update(self.render(statuses))
            finally:
                if live:
                    live.stop()
        self.collect(final)

    def _decrypting_both(self, statuses: dict[str, dict[str, Any]]) -> bool:
        if len(statuses) < 2:
            return False
        for st in statuses.values():
            call = st.get("call") or {}
            peers = call.get("peers") or {}
            if not peers:
                return False
            for peer in peers.values():
                video, audio = peer.get("video") or {}, peer.get("audio") or {}
                if not video.get("frames") or not audio.get("frames"):
                    return False
        return True

    def collect(self, statuses: dict[str, dict[str, Any]]) -> None:
        ok = True
        for tid, st in statuses.items():
            call = st.get("call") or {}
            crypto = call.get("media_crypto") or {}
            frames = {
                "sent": int(crypto.get("protected", 0)),
                "decrypted": int(crypto.get("unprotected", 0)),
                "rejected": int(sum((crypto.get("rejected") or {}).values()))
                if isinstance(crypto.get("rejected"), dict)
                else int(crypto.get("rejected", 0)),
            }
            self.result.frames[tid] = frames
            self.result.security_code[tid] = call.get("security_code")
            latencies: list[float] = []
            for peer in (call.get("peers") or {}).values():
                video = peer.get("video") or {}
                if video.get("latency_p50_ms") is not None:
                    latencies.append(float(video["latency_p50_ms"]))
                self.result.video_latency_ms[tid] = {
                    "p50": video.get("latency_p50_ms"),
                    "p95": video.get("latency_p95_ms"),
                }
            self.result.epochs[tid] = [int(e) for e in call.get("epochs", [])] or (
                [int(call["epoch"])] if call.get("epoch") is not None else []
            )
            ok = ok and frames["decrypted"] > 0 and frames["sent"] > 0
        codes = set(self.result.security_code.values())
        ok = ok and len(codes) == 1 and None not in codes
        self.result.ok = ok
        if not ok and self.result.failure is None:
            self.result.failure = "media did not flow decrypted both ways with equal codes"
        _ = statistics  # latency aggregation is per side

    def verify_logs(self) -> None:
        signed = load_charter(self.root / f"{LINE_ID}.charter.json")
        for tid, tdir in self.terminal_dirs.items():
            key = signed.charter.terminal(tid).identity_key
            log = CallLog.open(tdir / "state" / "calllog.sqlite", tid)
            try:
                log.verify(key)
                self.result.log_verified[tid] = True
            except HotlineError as exc:
                self.result.log_verified[tid] = False
                self.result.ok = False
                self.result.failure = f"{tid}: call log does not verify: {exc}"
        if all(self.result.log_verified.values()):
            self.say("both call logs verify")

    def render(self, statuses: dict[str, dict[str, Any]]) -> Group:
        table = Table(title=f"Hotline demo — line {LINE_ID}", expand=True)
        table.add_column("")
        for tid in (CALLER, CALLEE):
            table.add_column(tid)

        def cell(tid: str, *path: str) -> str:
            value: Any = statuses.get(tid, {})
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            return "—" if value in (None, "") else str(value)

        table.add_row("call", cell(CALLER, "call", "state"), cell(CALLEE, "call", "state"))
        table.add_row("epoch", cell(CALLER, "call", "epoch"), cell(CALLEE, "call", "epoch"))
        table.add_row(
            "security code",
            cell(CALLER, "call", "security_code"),
            cell(CALLEE, "call", "security_code"),
        )
        for label, key in (("frames protected", "protected"), ("frames decrypted", "unprotected")):
            table.add_row(
                label,
                cell(CALLER, "call", "media_crypto", key),
                cell(CALLEE, "call", "media_crypto", key),
            )

        def latency(tid: str) -> str:
            peers = (statuses.get(tid, {}).get("call") or {}).get("peers") or {}
            for peer in peers.values():
                video = peer.get("video") or {}
                if video.get("latency_p50_ms") is not None:
                    return f"p50 {video['latency_p50_ms']:.0f} ms / p95 {video['latency_p95_ms']:.0f} ms"
            return "—"

        table.add_row("video latency", latency(CALLER), latency(CALLEE))
        lines = "\n".join(self.log_lines[-8:])
        return Group(table, Panel(lines or "starting…", title="events"))


async def run_demo(
    duration: float = 15.0, rekey_s: int = 5, keep: Path | None = None, live: bool = True,
    json_out: bool = False,
) -> DemoResult:
    root = keep or Path(tempfile.mkdtemp(prefix="hotline-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, duration, rekey_s, live and not json_out, json_out)
    try:
        await demo.call()
        await demo.stop_processes()
        demo.verify_logs()
    except HotlineError as exc:
        demo.result.ok = False
        demo.result.failure = str(exc)
    finally:
        await demo.stop_processes()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if json_out:
        print(json.dumps(demo.result.to_json(), indent=2, sort_keys=True))
    return demo.result
