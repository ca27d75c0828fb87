"""The terminal's web UI: its security checks over real HTTP, and the page in Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hotline.charter import Policy, Role
from hotline.errors import UsageError
from hotline.localline import LocalLine
from hotline.ui.server import parse_ui_address
from tests.ui.browser import chromium

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def ui_line(
    root: Path,
    *ui_args: str,
    ui: str | tuple[str, ...] = "alpha",
    policy: Policy | None = None,
    turn_relays: tuple[str, ...] = (),
    site_config: str = "",
) -> AsyncIterator[LocalLine]:
    """An exchange, alpha and bravo (aiortc, answering by command); ``ui`` runs the web UI
    with ``ui_args``."""
    line = LocalLine(
        root,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        policy=policy or Policy(),
        turn_relays=turn_relays,
    )
    line.commission()
    if site_config:  # each terminal's terminal.toml (TURN credentials)
        for name in ("alpha", "bravo"):
            path = line.terminal_dir(name) / "terminal.toml"
            path.write_text(site_config)
            path.chmod(0o600)
    try:
        await line.start_exchange()
        for name in ("alpha", "bravo"):
            extra = (
                ("--ui", "127.0.0.1:0", *ui_args)
                if name in (ui if isinstance(ui, tuple) else (ui,))
                else ()
            )
            await line.start_terminal(name, *extra)
        await line.wait_online(["alpha", "bravo"])
        yield line
    finally:
        await line.stop()


async def login_link(line: LocalLine, terminal: str = "alpha") -> str:
    async with line.control(terminal) as control:
        return str((await control.request("POST", "/ui/link"))["url"])


def test_the_ui_listens_on_loopback_only() -> None:
    assert parse_ui_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_ui_address("0") == ("127.0.0.1", 0)
    for bad in ("0.0.0.0:80", "192.0.2.1:80", "[::1]:80", "localhost:80", "127.0.0.1:x"):
        with pytest.raises(UsageError):
            parse_ui_address(bad)


async def test_token_host_and_origin_refusals(tmp_path: Path) -> None:
    async with ui_line(tmp_path) as line:
        link = await login_link(line)
        origin = link.split("/login")[0]
        host = origin.removeprefix("http://")
        token = link.split("token=")[1]
        jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:

            async def get(path: str, **headers: str) -> aiohttp.ClientResponse:
                async with http.get(origin + path, headers=headers, allow_redirects=False) as r:
                    await r.read()
                    assert "Access-Control-Allow-Origin" not in r.headers  # never CORS
                    return r

            assert (await get("/")).status == 401  # no cookie
            assert (await get("/api/status")).status == 401
            assert (await get("/login?token=wrong")).status == 403
            # right token, foreign Host (DNS rebinding) or foreign Origin: refused, not spent
            assert (await get(f"/login?token={token}", Host="evil.example")).status == 403
            assert (await get(f"/login?token={token}", Origin="http://evil.example")).status == 403
            ok = await get(f"/login?token={token}")
            assert ok.status == 303
            cookie = ok.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert (await get(f"/login?token={token}")).status == 403  # one time only
            page = await get("/")
            assert page.status == 200
            assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
            assert (await get("/api/status")).status == 200
            assert (await get("/api/status", Host=f"localhost:{host.split(':')[1]}")).status == 403
            assert (await get("/api/status", Origin="http://evil.example")).status == 403
            assert (await get("/static/../server.py")).status in (403, 404)
            # a state-changing request needs the page's own Origin
            async with http.post(origin + "/api/hangup") as r:
                assert r.status == 403
            async with http.post(origin + "/api/hangup", headers={"Origin": origin}) as r:
                assert r.status == 409  # accepted, and there is no call to hang up
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(origin + "/api/ws", origin="http://evil.example")
            async with http.ws_connect(origin + "/api/ws", origin=origin) as ws:
                first = await ws.receive_json(timeout=5)
                assert first["type"] == "status"
                assert first["status"]["terminal"] == "alpha"
        async with aiohttp.ClientSession() as stranger:  # no cookie: no event stream
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await stranger.ws_connect(origin + "/api/ws", origin=origin)
        status = await line.status("alpha")
        assert status["rejected"].get("control_ui_not_local", 0) >= 5
        assert status["rejected"].get("control_ui_bad_login", 0) >= 2


async def test_the_worker_hash_channel_is_the_engine_pages_only(tmp_path: Path) -> None:
    """``/api/hashes`` (the engine page's worker's own channel for its frame hashes) is
    authenticated as ``/api/ws`` is (cookie, Host, Origin), and then takes only the token
    the daemon gave the page that is the media engine now."""
    async with ui_line(tmp_path, "--engine", "browser") as line:
        link = await login_link(line)
        origin = link.split("/login")[0]
        hashes = origin.replace("http://", "ws://") + "/api/hashes"
        async with aiohttp.ClientSession() as stranger:  # no cookie
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await stranger.ws_connect(hashes, origin=origin)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(link, allow_redirects=False) as r:
                assert r.status == 303
            for other in ("http://evil.example", None):  # a foreign Origin, or none
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await http.ws_connect(hashes, origin=other)

            async def engine_page() -> tuple[aiohttp.ClientWebSocketResponse, str]:
                ws = await http.ws_connect(origin + "/api/ws", origin=origin)
                await ws.send_json({"type": "engine_hello"})
                while True:  # the daemon's token for this page's worker
                    msg = await ws.receive_json(timeout=5)
                    if msg.get("op") == "hash_channel":
                        return ws, str(msg["token"])

            async def hello(token: str) -> aiohttp.ClientWebSocketResponse:
                ws = await http.ws_connect(hashes, origin=origin)
                await ws.send_json({"type": "hello", "token": token})
                return ws

            page, token = await engine_page()
            wrong = await hello("not-the-token")
            assert (await wrong.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            assert wrong.close_code == 4003
            channel = await hello(token)
            with pytest.raises(asyncio.TimeoutError):  # accepted: it stays open
                await channel.receive(timeout=1)
            # another page takes over as the media engine: the old worker's channel is
            # closed, and its token opens nothing any more
            newer, new_token = await engine_page()
            assert new_token != token
            assert (await channel.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            stale = await hello(token)
            assert (await stale.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            assert stale.close_code == 4003
            for ws in (page, newer, wrong, channel, stale):
                await ws.close()
        status = await line.status("alpha")
        assert status["rejected"].get("control_ui_bad_hash_channel", 0) == 2


def cli(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "hotline", *args], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def test_the_page_rings_answers_shows_the_code_and_hangs_up(tmp_path: Path) -> None:
    async with ui_line(tmp_path) as line, chromium(tmp_path) as browser:
        watch = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hotline",
            "call",
            "watch",
            "-t",
            str(line.terminal_dir("alpha")),
            "--until",
            "ended",
            "--json",
            "--history",
            stdout=asyncio.subprocess.PIPE,
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 720})
        await page.goto(await login_link(line))
        await page.wait_for_selector("#terminals li")
        await page.screenshot(path=str(tmp_path / "line-1280x720.png"))
        await page.set_viewport_size({"width": 1920, "height": 1080})
        await page.screenshot(path=str(tmp_path / "line-1920x1080.png"))
        await page.set_viewport_size({"width": 1280, "height": 720})
        async with line.control("bravo") as bravo:
            await bravo.request("POST", "/call", {"target": "alpha"})
        await page.wait_for_selector("#ring:not(.hidden)", timeout=10_000)
        assert "bravo" in (await page.inner_text("#ring-from")).lower()
        await page.click("#answer")
        await page.wait_for_function(
            "() => document.getElementById('code').dataset.code !== ''", timeout=20_000
        )
        shown = await page.get_attribute("#code", "data-code")
        by_cli = cli("call", "status", "--json", "-t", str(line.terminal_dir("alpha")))
        assert shown == by_cli["call"]["security_code"]
        assert shown == (await line.status("bravo"))["call"]["security_code"]
        await page.screenshot(path=str(tmp_path / "call-1280x720.png"))
        await page.set_viewport_size({"width": 1920, "height": 1080})
        await page.screenshot(path=str(tmp_path / "call-1920x1080.png"))
        await page.set_viewport_size({"width": 1280, "height": 720})
        # bravo freezes (SIGSTOP): the screen says reconnecting, then connected again
        bravo_pid = line.procs["bravo"].pid
        os.kill(bravo_pid, signal.SIGSTOP)
        try:
            await page.wait_for_function(
                "() => document.getElementById('members').textContent.includes('reconnecting')",
                timeout=10_000,
            )
            banner = await page.inner_text("#banner")
            await page.screenshot(path=str(tmp_path / "reconnecting-1280x720.png"))
        finally:
            os.kill(bravo_pid, signal.SIGCONT)
        assert "reconnecting" in banner, banner
        await page.wait_for_function(
            "() => !document.getElementById('members').textContent.includes('reconnecting')",
            timeout=15_000,
        )
        await page.click("#hangup")
        await page.wait_for_selector("#idle:not(.hidden)", timeout=10_000)
        out, _ = await asyncio.wait_for(watch.communicate(), 20)
        lines = [json.loads(x) for x in out.decode().splitlines()]
        assert {x["schema"] for x in lines} == {1}  # every line says its schema
        kinds = [x["kind"] for x in lines]
        for kind in ("ring", "epoch", "transport_lost", "transport_recovered", "ended"):
            assert kind in kinds, kinds
        assert (await line.status("alpha"))["call"]["state"] == "ended"
        print(f"ui ring-answer-code-hangup ok at {time.strftime('%X')}")
