"""The Janus the tests start: only what a conference needs, on loopback only."""

from __future__ import annotations

import json
import subprocess
import urllib.request

from tests.janus.server import JanusServer


def _info(janus: JanusServer) -> dict[str, object]:
    with urllib.request.urlopen(f"{janus.url}/info", timeout=5) as resp:
        info = json.loads(resp.read())
    assert isinstance(info, dict)
    return info


def test_only_videoroom_and_http_are_loaded(janus: JanusServer) -> None:
    info = _info(janus)
    assert info["janus"] == "server_info"
    assert info["version_string"].startswith("1.")  # type: ignore[union-attr]
    assert set(info["plugins"]) == {"janus.plugin.videoroom"}  # type: ignore[arg-type]
    assert set(info["transports"]) == {"janus.transport.http"}  # type: ignore[arg-type]
    assert not info.get("events")
    assert info["event_handlers"] is False


def test_the_api_listens_on_loopback_only(janus: JanusServer) -> None:
    assert janus.proc is not None
    out = subprocess.run(
        ["ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    mine = [line for line in out.splitlines() if f"pid={janus.proc.pid}," in line]
    assert mine, out
    for line in mine:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line
    assert any(line.split()[3] == f"127.0.0.1:{janus.port}" for line in mine)
    log = janus.log_text()
    assert "Adding 'lo' to the ICE enforce list" in log
    assert "Event handlers support disabled" in log
