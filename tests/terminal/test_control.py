"""The control API answers only the operator's own tools on 127.0.0.1: a web page in the
operator's browser cannot reach it, not even by DNS rebinding (issue 9, point 16)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from hotline.charter import Role
from hotline.cli import main
from hotline.localline import LocalLine
from hotline.terminal.control import ControlClient, make_runner, write_control_file
from hotline.terminal.daemon import TerminalDaemon
from hotline.terminal.main import build_config

TOKEN = "t0ken-for-the-test"
DAEMONS: dict[Path, TerminalDaemon] = {}


@pytest.fixture
async def control_url(tmp_path: Path) -> AsyncIterator[str]:
    """A real daemon's control API on a real 127.0.0.1 socket (the daemon is not started:
    the checks under test run before any handler)."""
    line = LocalLine(tmp_path, "east-west", {"east": [("alpha", Role.PRINCIPAL)]})
    line.commission()
    assert line.charter_path is not None
    config = build_config(
        terminal_dir=line.terminal_dir("alpha"),
        charter_path=line.charter_path,
        exchange_url=None,
        passphrase_file=None,
        auto_answer=False,
        interfaces="loopback",
        width=320,
        height=180,
        fps=5,
    )
    daemon = TerminalDaemon(config)
    DAEMONS[tmp_path] = daemon
    runner = make_runner(daemon, TOKEN)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        daemon.source.stop()
        daemon.call_log.close()


async def raw_get(url: str, headers: dict[str, str]) -> int:
    """A GET with exactly these headers (aiohttp would set Host itself)."""
    lines = ["GET /status HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return await raw_request(url, ("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode())


async def raw_request(url: str, request: bytes) -> int:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    return int(status_line.split(b" ", 2)[1])


async def test_the_cli_client_still_gets_in(control_url: str) -> None:
    async with ControlClient(control_url, TOKEN) as control:
        status = await control.request("GET", "/status")
    assert status["terminal"] == "alpha"


async def test_a_foreign_host_is_refused_even_with_the_token(control_url: str) -> None:
    """DNS rebinding: the browser talks to 127.0.0.1 but names the attacker's host."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    port = control_url.rsplit(":", 1)[1]
    assert await raw_get(control_url, {"Host": f"127.0.0.1:{port}", **auth}) == 200
    for host in (f"evil.example:{port}", "evil.example", f"localhost:{port}", "127.0.0.1"):
        assert await raw_get(control_url, {"Host": host, **auth}) == 403, host
    assert await raw_get(control_url, auth) in (400, 403)  # no Host at all


async def test_any_origin_is_refused(control_url: str) -> None:
    """A page's fetch() carries an Origin; our own tools never send one."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for origin in ("http://evil.example", control_url, "null"):
            async with http.get(control_url + "/status", headers={"Origin": origin}) as resp:
                assert resp.status == 403, origin
                assert "origin" in (await resp.json())["error"].lower()
            async with http.post(
                control_url + "/hangup", headers={"Origin": origin}, data=b"{}"
            ) as resp:
                assert resp.status == 403, origin


async def test_malformed_http_is_one_counted_line(
    control_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 100 KB header or a broken request: 400, no traceback, one WARNING line at most,
    counted in the terminal's refusals (issue 9, point 14)."""
    caplog.set_level(logging.DEBUG)
    port = control_url.rsplit(":", 1)[1]
    big = f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Big: {'a' * 100_000}\r\n\r\n"
    bad = f"POST /hangup HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: -1\r\n\r\n"
    for request in (big, bad):
        caplog.clear()
        assert await raw_request(control_url, request.encode()) == 400
        await asyncio.sleep(0.05)
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(noisy) <= 1 and all(r.levelno == logging.WARNING for r in noisy), noisy
        assert not any(r.exc_info for r in caplog.records)
    rejected = DAEMONS[tmp_path].rejected
    assert rejected.get("control_header_too_large") == 1
    assert rejected.get("control_bad_request") == 1
    # a web page's requests are counted too, and a flood of them is not a flood of lines
    caplog.clear()
    for _ in range(20):
        assert await raw_get(control_url, {"Host": "evil.example", "Origin": "x"}) == 403
    assert rejected.get("control_not_local") == 20
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 2


async def test_call_status_shows_the_refusals(
    control_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hotline call status` (and --json) show what the terminal refused, by reason
    (issue 9, point 8)."""
    daemon = DAEMONS[tmp_path]
    assert await raw_get(control_url, {"Host": "evil.example", "Origin": "x"}) == 403
    write_control_file(daemon.config.state, control_url, TOKEN, os.getpid())
    terminal = str(daemon.config.terminal_dir)

    def cli(*args: str) -> str:
        capsys.readouterr()
        old = sys.argv
        sys.argv = ["hotline", "call", "status", "--terminal", terminal, *args]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        finally:
            sys.argv = old
        return capsys.readouterr().out

    text = await asyncio.to_thread(cli)
    assert "refused" in text and "control_not_local 1" in text
    as_json = json.loads(await asyncio.to_thread(cli, "--json"))
    assert as_json["rejected"] == {"control_not_local": 1}
