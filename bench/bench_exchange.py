"""Exchange benchmark: routing throughput per core against a bare relay, memory per idle
connection, and 10,000 idle authenticated connections.

    python bench/bench_exchange.py                 # full run; prints JSON (--out FILE: also there)
    python bench/bench_exchange.py --quick         # smaller, for a smoke test

Both servers run as their own process (``python -m hotline exchange serve`` and the bare
relay below); this process is the load: pre-signed envelopes sent by raw protocol clients,
counted by raw receivers that acknowledge as real terminals do. Throughput is envelopes
routed per CPU-second of the server process (/proc/PID/stat), so the figure does not depend
on how fast the load generator is; memory is the server's resident set (/proc/PID/status).

The bare relay does the same routing with the same code (the exchange's frame and envelope
readers, then look up the recipient and write a deliver frame) with no authentication,
signature, membership, sequence or size check, no store and no acknowledgements. Each
throughput figure is the median of ``--rounds`` runs, the relay and the exchange taking
turns. The cost of one Ed25519 verification (which the exchange does once per envelope and
the relay never does) is measured in the same run and reported beside the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from hotline.charter import (
    DEFAULT_POLICY,
    Charter,
    Role,
    SignedCharter,
    Site,
    Terminal,
    enrolment_bytes,
    write_charter,
)
from hotline.envelope import Envelope
from hotline.exchange.frames import (
    Ack,
    Challenge,
    Deliver,
    Hello,
    Send,
    Welcome,
    auth_message,
    decode_client_frame,
    decode_server_frame,
    encode_deliver,
    encode_frame,
)
from hotline.keys import SigningKey

CLK_TCK = os.sysconf("SC_CLK_TCK")
ACK_DELAY_S = 0.05  # as ExchangeClient's default ack_delay_s
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- lines ------------------------------------------------------------------------------------


@dataclass
class BenchLine:
    signed: SignedCharter
    keys: dict[str, SigningKey]


def make_line(line_id: str, n: int, sites: tuple[SigningKey, SigningKey]) -> BenchLine:
    """A two-site line of ``n`` terminals, signed in memory (no key files: bench only)."""
    site_ids = ("east", "west")
    keys: dict[str, SigningKey] = {}
    terminals = []
    for i in range(n):
        site_id = site_ids[i % 2]
        tid = f"t{i}"
        key = keys[tid] = SigningKey.generate()
        sig = sites[i % 2].sign(enrolment_bytes(site_id, tid, tid, Role.AIDE, key.public))
        terminals.append(Terminal(tid, site_id, tid, Role.AIDE, key.public, sig))
    charter = Charter(
        line_id=line_id,
        version=1,
        sites=tuple(Site(s, s, k.public) for s, k in zip(site_ids, sites, strict=True)),
        terminals=tuple(sorted(terminals, key=lambda t: (t.site_id, t.terminal_id))),
        exchanges=(),
        turn_relays=(),
        policy=DEFAULT_POLICY,
        created_at=int(time.time()),
    )
    body = charter.to_bytes()
    signed = SignedCharter(charter, {s: k.sign(body) for s, k in zip(site_ids, sites, strict=True)})
    return BenchLine(signed, keys)


# --- process helpers --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def spawn(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=sys.stderr.fileno()
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 300)
    if not line:
        raise RuntimeError(f"{args} did not start")
    return proc, json.loads(line)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def start_exchange(work: Path, charters: Path, *extra: str) -> tuple[Any, str]:
    proc, ready = await spawn(
        sys.executable, "-m", "hotline", "exchange", "serve",
        "--dir", str(work), "--charter", str(charters),
        "--listen", "127.0.0.1:0", "--insecure-loopback", "--json", "--log-level", "error",
        "--rate", "1000000", "--burst", "1000000", "--max-queue", "1000000",
        "--max-connections-per-source", "20000", "--max-connections", "20000",
        *extra,
    )  # fmt: skip
    return proc, str(ready["url"])


async def start_relay() -> tuple[Any, str]:
    proc, ready = await spawn(sys.executable, __file__, "relay")
    return proc, str(ready["url"])


# --- the bare relay ---------------------------------------------------------------------------


def run_relay() -> None:
    """Route by recipient with no checks at all: the baseline."""
    peers: dict[str, web.WebSocketResponse] = {}
    counter = [0]

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        first = await ws.receive()
        name = str(first.data)
        peers[name] = ws
        try:
            async for msg in ws:
                frame = decode_client_frame(msg.data, 1 << 20)
                assert isinstance(frame, Send)
                raw = frame.envelope
                env = Envelope.from_bytes(raw)
                to = env.recipient
                targets = (
                    [peers[to]]
                    if to is not None
                    else [p for n, p in peers.items() if n != env.sender]
                )
                for target in targets:
                    counter[0] += 1
                    await target.send_bytes(encode_deliver(counter[0], raw))
        finally:
            peers.pop(name, None)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/exchange", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"url": f"ws://127.0.0.1:{port}/v1/exchange", "port": port}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- raw terminals ----------------------------------------------------------------------------


async def connect(
    http: aiohttp.ClientSession, url: str, line: BenchLine, terminal: str, *, bare: bool
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url, max_msg_size=1 << 20, compress=0)
    if bare:
        await ws.send_str(terminal)
        return ws
    challenge = decode_server_frame((await ws.receive()).data, 1 << 16)
    assert isinstance(challenge, Challenge)
    sig = line.keys[terminal].sign(
        auth_message(challenge.challenge, challenge.exchange_id, line.signed.line_id, terminal)
    )
    await ws.send_bytes(encode_frame(Hello(line.signed.line_id, terminal, sig, 0, 1)))
    welcome = decode_server_frame((await ws.receive()).data, 1 << 16)
    assert isinstance(welcome, Welcome), welcome
    return ws


async def receiver(ws: aiohttp.ClientWebSocketResponse, expect: int, bare: bool) -> int:
    """Count deliveries; acknowledge like ExchangeClient does (every ACK_DELAY_S)."""
    got = 0
    last_ack = time.monotonic()
    while got < expect:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise RuntimeError(f"receiver closed: {msg}")
        frame = decode_server_frame(msg.data, 1 << 20)
        if isinstance(frame, Deliver):
            got += 1
            now = time.monotonic()
            if not bare and (now - last_ack >= ACK_DELAY_S or got == expect):
                await ws.send_bytes(encode_frame(Ack(frame.delivery_id)))
                last_ack = now
    return got


async def sender(ws: aiohttp.ClientWebSocketResponse, frames: list[bytes]) -> None:
    for frame in frames:
        await ws.send_bytes(frame)


async def throughput(
    url: str, pid: int, line: BenchLine, pairs: int, per_sender: int, *, bare: bool
) -> dict[str, float]:
    names = sorted(line.keys, key=lambda t: int(t[1:]))
    now_ms = int(time.time() * 1000)
    plan = []
    for p in range(pairs):
        src, dst = names[2 * p], names[2 * p + 1]
        frames = [
            encode_frame(
                Send(
                    Envelope.create(
                        line.keys[src],
                        line_id=line.signed.line_id,
                        sender=src,
                        recipient=dst,
                        seq=(now_ms << 20) + i,
                        timestamp_ms=now_ms,
                        msg_type="call.ice",
                        body=os.urandom(200),
                    ).to_bytes()
                )
            )
            for i in range(per_sender)
        ]
        plan.append((src, dst, frames))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        socks = {}
        for src, dst, _ in plan:
            socks[dst] = await connect(http, url, line, dst, bare=bare)
            socks[src] = await connect(http, url, line, src, bare=bare)
        await asyncio.sleep(0.5)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        receivers = [asyncio.create_task(receiver(socks[d], per_sender, bare)) for _, d, _ in plan]
        await asyncio.gather(*(sender(socks[s], f) for s, _, f in plan))
        total = sum(await asyncio.gather(*receivers))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        for ws in socks.values():
            await ws.close()
    return {
        "envelopes": total,
        "wall_s": round(wall, 3),
        "server_cpu_s": round(cpu, 3),
        "per_core_per_s": round(total / cpu),
        "wall_per_s": round(total / wall),
    }


async def idle(
    url: str, pid: int, lines: list[BenchLine], count: int, *, bare: bool
) -> dict[str, float]:
    """Open ``count`` idle (authenticated) connections; the server's memory before/after."""
    await asyncio.sleep(1.0)
    before = rss_bytes(pid)
    targets = [(line, t) for line in lines for t in sorted(line.keys)][:count]
    socks: list[aiohttp.ClientWebSocketResponse] = []
    sem = asyncio.Semaphore(100)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(line: BenchLine, terminal: str) -> None:
            async with sem:
                socks.append(await connect(http, url, line, terminal, bare=bare))

        await asyncio.gather(*(one(line, t) for line, t in targets))
        setup = time.perf_counter() - t0
        await asyncio.sleep(3.0)  # let presence pushes and buffers settle
        after = rss_bytes(pid)
        alive = sum(1 for ws in socks if not ws.closed)
        for ws in socks:
            await ws.close()
    return {
        "connections": alive,
        "setup_s": round(setup, 1),
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "per_connection_kb": round((after - before) / max(1, alive) / 1024, 1),
    }


# --- main -------------------------------------------------------------------------------------


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    ordered = sorted(runs, key=lambda r: r["per_core_per_s"])
    out = dict(ordered[len(ordered) // 2])
    out["rounds_per_core_per_s"] = [r["per_core_per_s"] for r in runs]  # type: ignore[assignment]
    return out


def verify_cost_us(n: int = 2000) -> float:
    """One Ed25519 verification of a signalling-sized envelope, in this process."""
    key = SigningKey.generate()
    env = Envelope.create(
        key, line_id="l", sender="a", recipient="b", seq=1, timestamp_ms=1,
        msg_type="call.ice", body=os.urandom(200),
    )  # fmt: skip
    message, public = env.signed_bytes(), key.public
    t0 = time.perf_counter()
    for _ in range(n):
        public.verify(env.signature, message)
    return round((time.perf_counter() - t0) / n * 1e6, 1)


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, need))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fds = raise_fd_limit(2 * args.idle + 1000)  # inherited by the server processes
    if fds < args.idle + 200:
        raise SystemExit(f"the fd limit ({fds}) is too low for {args.idle} connections")
    work = Path(tempfile.mkdtemp(prefix="bench-exchange-"))
    try:
        sites = (SigningKey.generate(), SigningKey.generate())
        tput_line = make_line("bench-throughput", 2 * args.pairs, sites)
        idle_lines = [
            make_line(f"bench-idle-{i:04d}", 10, sites) for i in range((args.idle + 9) // 10)
        ]
        charters = work / "charters"
        charters.mkdir()
        for line in [tput_line, *idle_lines]:
            write_charter(charters / f"{line.signed.line_id}.charter.json", line.signed)
        results: dict[str, Any] = {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "pairs": args.pairs,
            "envelopes_per_sender": args.envelopes,
            "idle_target": args.idle,
        }

        relay, relay_url = await start_relay()
        exchange, url = await start_exchange(work / "exchange", charters)
        bare_runs, exchange_runs = [], []
        try:
            for _ in range(args.rounds):
                bare_runs.append(
                    await throughput(
                        relay_url, relay.pid, tput_line, args.pairs, args.envelopes, bare=True
                    )
                )
                exchange_runs.append(
                    await throughput(
                        url, exchange.pid, tput_line, args.pairs, args.envelopes, bare=False
                    )
                )
            results["bare_idle"] = await idle(
                relay_url, relay.pid, idle_lines, min(args.idle, 1000), bare=True
            )
        finally:
            await stop(relay)
        results["bare_throughput"] = median_run(bare_runs)
        results["exchange_throughput"] = median_run(exchange_runs)
        results["ed25519_verify_us"] = verify_cost_us()
        try:
            results["exchange_idle_1000"] = await idle(
                url, exchange.pid, idle_lines, min(args.idle, 1000), bare=False
            )
            results["exchange_idle_all"] = await idle(
                url, exchange.pid, idle_lines, args.idle, bare=False
            )
        finally:
            await stop(exchange)
        ex, bare = results["exchange_throughput"], results["bare_throughput"]
        results["ratio_per_core"] = round(ex["per_core_per_s"] / bare["per_core_per_s"], 3)
        ex_us, bare_us = 1e6 / ex["per_core_per_s"], 1e6 / bare["per_core_per_s"]
        results["exchange_us_per_envelope"] = round(ex_us, 1)
        results["bare_us_per_envelope"] = round(bare_us, 1)
        # what the ratio would be if the one signature check per envelope cost nothing
        results["ratio_without_signature_check"] = round(
            bare_us / max(1.0, ex_us - results["ed25519_verify_us"]), 3
        )
        big = results["exchange_idle_all"]
        results["idle_rss_mb"] = big["rss_after_mb"]
        results["targets_met"] = {
            "ratio_ge_0.5": results["ratio_per_core"] >= 0.5,
            "idle_under_1GB": big["rss_after_mb"] < 1024 and big["connections"] == args.idle,
        }
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        run_relay()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="sender/receiver pairs")
    parser.add_argument("--envelopes", type=int, default=5000, help="envelopes per sender")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to hold")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs of each server")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.envelopes, args.idle, args.rounds = 2, 500, 200, 1
    results = asyncio.run(run(args))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
