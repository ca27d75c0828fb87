"""Terminals calling through a real coturn: relay-only charters, credentials from each
site's terminal.toml, the first relay of the charter down, wrong credentials."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hotline.charter import Policy, Role
from hotline.localline import LocalLine
from tests.terminal.test_calls import call_of, media_flows, wait_for
from tests.turnserver import free_port, running_turnserver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SECRET = "east-west-relay-secret"


def write_config(line: LocalLine, terminal_id: str, text: str) -> None:
    path = line.terminal_dir(terminal_id) / "terminal.toml"
    path.write_text(text)
    path.chmod(0o600)


async def test_relay_only_call_between_terminals_uses_the_second_relay(tmp_path: Path) -> None:
    dead = f"turn:127.0.0.1:{free_port()}?transport=udp"  # the charter's first relay: down
    with running_turnserver(tmp_path / "relay", shared_secret=SECRET) as relay:
        line = LocalLine(
            tmp_path,
            "east-west",
            {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
            policy=Policy(relay_only=True),
            turn_relays=(dead, relay.url),
        )
        line.commission()
        for tid in ("alpha", "bravo"):
            write_config(
                line,
                tid,
                "[turn]\nprobe_timeout_s = 0.5\n\n"
                f"[[turn.relay]]\nurl = '{dead}'\nusername = '{tid}'\npassword = 'pw'\n\n"
                f"[[turn.relay]]\nurl = '{relay.url}'\nshared_secret = '{SECRET}'\n",
            )
        try:
            await line.start_exchange()
            await line.start_terminal("alpha")
            await line.start_terminal("bravo", "--auto-answer")
            await line.wait_online(["alpha", "bravo"])
            async with line.control("alpha") as alpha:
                await alpha.request("POST", "/call", {"target": "bravo"})
                statuses = await wait_for(
                    line,
                    ["alpha", "bravo"],
                    lambda s: media_flows(s, [("alpha", "bravo"), ("bravo", "alpha")]),
                    "decrypted media both ways through the relay",
                )
                for tid, peer in (("alpha", "bravo"), ("bravo", "alpha")):
                    call = call_of(statuses[tid])
                    assert call["peers"][peer]["path"] == {"local": "relay", "remote": "relay"}
                    assert call["e2ee"]["rejected"] == {}
                    assert call["frames"]["video"]["decrypted"] > 20
                await alpha.request("POST", "/hangup")
        finally:
            await line.stop()
    # both terminals allocated on the live relay with time-limited credentials of their own
    log = relay.log_text()
    for tid in ("alpha", "bravo"):
        # coturn's REST API user name: "<expiry>:<terminal id>"
        assert re.search(rf"user <\d+:{tid}>: incoming packet ALLOCATE processed, success", log)
        assert re.search(rf"user <\d+:{tid}>: incoming packet CHANNEL_BIND processed", log)


async def test_wrong_credentials_are_a_visible_refusal(tmp_path: Path) -> None:
    with running_turnserver(tmp_path / "relay", shared_secret=SECRET) as relay:
        line = LocalLine(
            tmp_path,
            "east-west",
            {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
            policy=Policy(relay_only=True),
            turn_relays=(relay.url,),
        )
        line.commission()
        for tid in ("alpha", "bravo"):
            write_config(
                line, tid, f"[[turn.relay]]\nurl = '{relay.url}'\nshared_secret = 'not-it'\n"
            )
        try:
            await line.start_exchange()
            await line.start_terminal("alpha")
            await line.start_terminal("bravo", "--auto-answer")
            await line.wait_online(["alpha", "bravo"])
            async with line.control("alpha") as alpha:
                await alpha.request("POST", "/call", {"target": "bravo"})
                statuses = await wait_for(
                    line,
                    ["alpha"],
                    lambda s: "relay_unavailable" in s["alpha"]["rejected"],
                    "the refusal shown",
                    timeout=15,
                )
                assert statuses["alpha"]["rejected"]["relay_unavailable"] >= 1
                events = await alpha.request("GET", "/events?since=0")
                await alpha.request("POST", "/hangup")
        finally:
            await line.stop()
    details = [e.get("detail", "") for e in events if e["kind"] == "rejected"]
    assert any("refused this site's credentials (401" in d for d in details), details
    assert "not-it" not in " ".join(details)
