"""`hotline demo`: a real end-to-end encrypted call between two terminals on this machine.

It commissions a line from nothing (two sites, a terminal each, a charter both sites sign),
starts an exchange and both terminals as separate processes on 127.0.0.1, places a call,
shows it live, forces nothing: the rekey comes from the charter's rekey interval, which the
demo sets short. It hangs up, verifies both call logs, cleans up, and exits 0 only if
decrypted media flowed both ways.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from hotline.charter import Policy, Role
from hotline.errors import CallError, HotlineError, UsageError
from hotline.localline import LocalLine
from hotline.terminal.control import ControlClient

LINE_ID = "moscow-washington"
CALLER = "sochi"
CALLEE = "situation-room"
START_TIMEOUT_S = 60.0
#: --browser: how long the demo waits for a person to open the link
PAGE_TIMEOUT_S = 300.0


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


def media_counts(call: dict[str, Any]) -> dict[str, int]:
    """Video and audio frames decrypted by one side, whichever its media engine: the Python
    sinks' counters, or (``--engine browser``) what its page reports per link."""
    peers = (call.get("peers") or {}).values()
    if (call.get("frames") or {}).get("engine") == "browser":
        pages = [peer.get("page") or {} for peer in peers]
        return {
            "video": sum(int(p.get("decrypted_video", 0)) for p in pages),
            "audio": sum(int(p.get("decrypted_audio", 0)) for p in pages),
        }
    frames = call.get("frames") or {}
    return {k: int((frames.get(k) or {}).get("decrypted", 0)) for k in ("video", "audio")}


async def print_link(url: str) -> None:
    """On stderr (stdout may carry the --json summary)."""
    sys.stderr.write(
        f"\n  Open this link in a browser on this machine to join the call as {CALLEE}"
        f" (camera and microphone):\n\n    {url}\n\n"
    )
    sys.stderr.flush()


class Demo:
    def __init__(
        self,
        root: Path,
        duration: float,
        rekey_s: int,
        live: bool,
        json_out: bool,
        *,
        browser: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.line = LocalLine(
            root,
            LINE_ID,
            {"kremlin": [(CALLER, Role.PRINCIPAL)], "white-house": [(CALLEE, Role.PRINCIPAL)]},
            policy=Policy(rekey_interval_s=rekey_s),
        )
        self.duration = duration
        self.live = live
        self.json_out = json_out
        self.result = DemoResult()
        self.log_lines: list[str] = []
        self.event_seq: dict[str, int] = {}
        #: with --browser: the callee's media is a page; this is given its one-time link
        self.browser = browser

    def say(self, text: str) -> None:
        self.log_lines.append(text)
        if not self.live and not self.json_out:
            print(text, flush=True)

    # --- the call --------------------------------------------------------------------------

    async def call(self) -> None:
        signed = self.line.commission()
        self.say(
            f"line {LINE_ID} commissioned: charter v{signed.charter.version} signed by "
            + " and ".join(s.name for s in signed.charter.sites)
        )
        await self.line.start_exchange()
        await self.line.start_terminal(CALLER)
        browser_args = ("--ui", "127.0.0.1:0", "--engine", "browser") if self.browser else ()
        await self.line.start_terminal(CALLEE, "--auto-answer", *browser_args)
        await self.line.wait_online([CALLER, CALLEE])
        self.say("exchange and both terminals running as separate processes on 127.0.0.1")
        if self.browser is not None:
            await self.wait_for_page()
        statuses: dict[str, dict[str, Any]] = {}
        async with self.line.control(CALLER) as a, self.line.control(CALLEE) as b:
            clients = {CALLER: a, CALLEE: b}
            t0 = time.monotonic()
            await a.request("POST", "/call", {"target": CALLEE})
            self.say(f"{CALLER} rings {CALLEE}")
            live = (
                Live(self.render(statuses), refresh_per_second=4, transient=False)
                if self.live
                else None
            )
            if live:
                live.start()
            try:
                end_at: float | None = None
                while True:
                    for tid, client in clients.items():
                        statuses[tid] = await client.request("GET", "/status")
                        await self._events(tid, client)
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
                        raise CallError(
                            f"no decrypted media both ways within {START_TIMEOUT_S:.0f} s"
                        )
                    if end_at is not None and time.monotonic() >= end_at:
                        break
                    await asyncio.sleep(0.25)
                final = {tid: st for tid, st in statuses.items()}
                await a.request("POST", "/hangup")
                self.say(f"{CALLER} hangs up")
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    for tid, client in clients.items():
                        statuses[tid] = await client.request("GET", "/status")
                        await self._events(tid, client)
                    if all((st.get("call") or {}).get("cosigned") for st in statuses.values()):
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise CallError("the call summary was not co-signed by both sides")
                if live:
                    live.update(self.render(statuses))
            finally:
                if live:
                    live.stop()
        self.collect(final)

    async def wait_for_page(self) -> None:
        """--browser: hand out the callee's one-time link, wait until its page is open."""
        assert self.browser is not None
        async with self.line.control(CALLEE) as control:
            url = (await control.request("POST", "/ui/link"))["url"]
            await self.browser(url)
            deadline = time.monotonic() + PAGE_TIMEOUT_S
            while not (await control.request("GET", "/status")).get("page_engine"):
                if time.monotonic() > deadline:
                    raise CallError(f"no page opened the link within {PAGE_TIMEOUT_S:.0f} s")
                await asyncio.sleep(0.2)
        self.say(f"{CALLEE}'s screen is open in a browser: its media engine")

    async def _events(self, tid: str, client: ControlClient) -> None:
        """Narrate what a terminal reports: ringing, answered, epochs, refusals, hang-up."""
        since = self.event_seq.get(tid, 0)
        for event in await client.request("GET", f"/events?since={since}"):
            self.event_seq[tid] = event["seq"]
            kind = event["kind"]
            if kind == "ringing":
                self.say(f"{tid}: ringing (from {event['from']})")
            elif kind == "answered":
                self.say(f"{tid}: answered by {event['by']}")
            elif kind == "epoch":
                self.say(
                    f"{tid}: end-to-end encrypted, epoch {event['epoch']}, "
                    f"security code {event['security_code']}"
                )
            elif kind == "unauthenticated_frame":
                self.say(f"{tid}: ALARM: {event['message']}")
            elif kind in ("rejected", "frame_rejected", "lagging", "e2ee_failed"):
                detail = {k: v for k, v in event.items() if k not in ("seq", "time", "kind")}
                self.say(f"{tid}: {kind} {detail}")
            elif kind == "ended":
                self.say(f"{tid}: call ended ({event['reason']})")
            elif kind == "cosigned":
                self.say(f"{tid}: call summary co-signed by {event['by']}")

    def _decrypting_both(self, statuses: dict[str, dict[str, Any]]) -> bool:
        if len(statuses) < 2:
            return False
        for st in statuses.values():
            call = st.get("call") or {}
            peers = call.get("peers") or {}
            if not peers:
                return False
            counts = media_counts(call)
            if not counts["video"] or not counts["audio"]:
                return False
        return True

    def collect(self, statuses: dict[str, dict[str, Any]]) -> None:
        """The summary, from each side's own last status before hang-up."""
        ok = True
        for tid, st in statuses.items():
            call = st.get("call") or {}
            e2ee = call.get("e2ee") or {}
            counts = media_counts(call)
            self.result.frames[tid] = {
                "sent": int(e2ee.get("protected", 0)),
                "decrypted": int(e2ee.get("unprotected", 0)),
                "rejected": int(sum((e2ee.get("rejected") or {}).values())),
                "video_decrypted": counts["video"],
                "audio_decrypted": counts["audio"],
            }
            self.result.security_code[tid] = call.get("security_code")
            for peer in (call.get("peers") or {}).values():
                latency = (peer.get("video_sink") or {}).get("latency") or {}
                self.result.video_latency_ms[tid] = {
                    "p50": latency.get("p50_ms"),
                    "p95": latency.get("p95_ms"),
                }
            self.result.epochs[tid] = [int(e) for e in call.get("epochs", [])]
            got = self.result.frames[tid]
            ok = ok and got["video_decrypted"] > 0 and got["audio_decrypted"] > 0
        codes = set(self.result.security_code.values())
        ok = ok and len(codes) == 1 and None not in codes
        self.result.ok = ok
        if not ok and self.result.failure is None:
            self.result.failure = "media did not flow decrypted both ways with equal codes"

    def verify_logs(self) -> None:
        for tid in (CALLER, CALLEE):
            try:
                report = self.line.verify_log(tid)
                if not report.cosignatures:
                    raise HotlineError("no co-signed call summary in the log")
                self.result.log_verified[tid] = True
            except HotlineError as exc:
                self.result.log_verified[tid] = False
                self.result.ok = False
                self.result.failure = f"{tid}: call log does not verify: {exc}"
        if all(self.result.log_verified.values()):
            self.say("both call logs verify, each with the other side's signature on the summary")

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
        for label, key in (
            ("frames protected", "protected"),
            ("frames decrypted", "unprotected"),
        ):
            table.add_row(
                label, cell(CALLER, "call", "e2ee", key), cell(CALLEE, "call", "e2ee", key)
            )

        def rejected(tid: str) -> str:
            counts = ((statuses.get(tid, {}).get("call") or {}).get("e2ee") or {}).get("rejected")
            if not counts:
                return "0"
            return f"{sum(counts.values())} " + ", ".join(f"{k} {v}" for k, v in counts.items())

        table.add_row("frames rejected", rejected(CALLER), rejected(CALLEE))

        def latency(tid: str) -> str:
            peers = (statuses.get(tid, {}).get("call") or {}).get("peers") or {}
            for peer in peers.values():
                latency = (peer.get("video_sink") or {}).get("latency") or {}
                if latency.get("p50_ms") is not None:
                    return f"p50 {latency['p50_ms']:.0f} ms, p95 {latency['p95_ms']:.0f} ms"
            return "—"

        table.add_row("video latency", latency(CALLER), latency(CALLEE))
        lines = "\n".join(self.log_lines[-14:])
        return Group(table, Panel(lines or "starting…", title="events"))


async def run_demo(
    duration: float = 15.0,
    rekey_s: int = 5,
    keep: Path | None = None,
    live: bool = True,
    json_out: bool = False,
    *,
    browser: Callable[[str], Awaitable[None]] | None = None,
) -> DemoResult:
    """``browser``: join as the callee from a browser page (``hotline demo --browser``):
    called with the page's one-time link (``print_link`` prints it)."""
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise UsageError(f"{keep}: not empty; give a new folder to --keep")
    root = keep or Path(tempfile.mkdtemp(prefix="hotline-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, duration, rekey_s, live and not json_out, json_out, browser=browser)
    demo.say(f"working in {root}" + ("" if keep else " (removed afterwards)"))
    try:
        await demo.call()
        await demo.line.stop()
        demo.verify_logs()
    except HotlineError as exc:
        demo.result.ok = False
        demo.result.failure = str(exc)
    finally:
        await demo.line.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if json_out:
        doc = {"schema": 1, **demo.result.to_json()}  # like every --json document of the CLI
        print(json.dumps(doc, indent=2, sort_keys=True))
    return demo.result
