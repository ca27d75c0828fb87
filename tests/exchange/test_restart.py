"""A real ``python -m hotline exchange serve`` process, killed and restarted: what the
store holds survives (charters, pending envelopes, senders' sequence numbers)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hotline.exchange.frames import Accepted, Reject

from .harness import Harness, RawTerminal, envelope, receive_envelopes, wait_for
from .lines import make_line

pytestmark = pytest.mark.slow


class ServeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, object]) -> None:
        self.proc = proc
        self.ready = ready
        self.url = str(ready["url"])


async def _serve(*args: str) -> ServeProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotline",
        "exchange",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--insecure-loopback",
        "--json",
        "--log-level",
        "warning",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except TimeoutError:
        proc.kill()
        raise
    if not line:
        err = await proc.stderr.read() if proc.stderr else b""
        raise AssertionError(f"exchange did not start: {err.decode()}")
    ready = json.loads(line)
    assert ready["event"] == "listening" and ready["schema"] == 1
    return ServeProcess(proc, ready)


@pytest.fixture
async def processes() -> AsyncIterator[list[ServeProcess]]:
    procs: list[ServeProcess] = []
    yield procs
    for p in procs:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


async def test_restart_keeps_what_the_store_holds(
    tmp_path: Path, harness: Harness, processes: list[ServeProcess]
) -> None:
    line = make_line(tmp_path, 3)
    folder = tmp_path / "exchange"
    first = await _serve("--dir", str(folder), "--charter", str(line.path))
    processes.append(first)
    assert first.ready["lines"] == [line.line_id] and int(first.ready["port"]) > 0  # type: ignore[call-overload]
    a = await harness.client(first.url, line, "t0")
    for i in range(3):
        await a.send("t1", "n", f"kept {i}".encode())
    raw = RawTerminal(first.url)
    harness.raws.append(raw)
    await raw.open()
    await raw.hello(line.line_id, "t2", line.keys["t2"])
    await raw.welcomed()
    old = envelope(line, "t2", "t1", 7)
    await raw.send_envelope(old)
    await wait_for(lambda: a.outbox_size == 0)  # the exchange says: stored
    assert await raw.recv() == Accepted(7)
    # no goodbye: the process dies at once
    first.proc.send_signal(signal.SIGKILL)
    await first.proc.wait()
    await a.close()

    # started again with no --charter: the store has the line
    second = await _serve("--dir", str(folder))
    processes.append(second)
    assert second.ready["lines"] == [line.line_id]
    b = await harness.client(second.url, line, "t1")
    got = await receive_envelopes(b, 4)
    assert [e.body for e in got[:3]] == [b"kept 0", b"kept 1", b"kept 2"]
    assert got[3].seq == 7 and got[3].sender == "t2"
    # the old envelope sent again is refused: the exchange remembers t2's numbers
    raw2 = RawTerminal(second.url)
    harness.raws.append(raw2)
    await raw2.open()
    await raw2.hello(line.line_id, "t2", line.keys["t2"])
    welcome = await raw2.welcomed()
    assert welcome.last_seq == 7
    await raw2.send_envelope(old)
    assert await raw2.recv() == Reject(7, "replay")
    # SIGTERM stops it cleanly
    second.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.proc.wait(), 15) == 0


async def test_serve_refuses_bad_input(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    for args, message in [
        (
            ["--dir", str(tmp_path / "x"), "--charter", str(line.path), "--listen", "0.0.0.0:0"],
            "loopback",
        ),
        (["--dir", str(tmp_path / "y")], "no charter"),
    ]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hotline",
            "exchange",
            "serve",
            "--insecure-loopback",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, (out, err)
        assert message in err.decode() and "Traceback" not in err.decode()
