"""Terminals calling through a real coturn: relay-only charters, credentials from each
site's terminal.toml, the first relay of the charter down, wrong credentials."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hotline.charter import Policy, Role, load_charter
from hotline.errors import RelayUnavailable
from hotline.localline import LocalLine
from hotline.media.turn import select_ice
from hotline.provision import line_site_dir, propose_line, sign_charter, write_draft
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


@pytest.mark.parametrize("fault", ["killed", "restarted"])
async def test_a_rebuilt_transport_moves_to_the_next_live_relay(tmp_path: Path, fault: str) -> None:
    """The first relay dies (the call moves to the second) or restarts, losing every
    allocation (the call stays on it)."""
    users = {"alpha": "pw-alpha", "bravo": "pw-bravo"}
    with (
        running_turnserver(tmp_path / "one", users=users) as one,
        running_turnserver(tmp_path / "two", users=users) as two,
    ):
        line = LocalLine(
            tmp_path,
            "east-west",
            {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
            policy=Policy(relay_only=True),
            turn_relays=(one.url, two.url),
        )
        line.commission()
        for tid, password in users.items():
            write_config(
                line,
                tid,
                "[turn]\nprobe_timeout_s = 0.5\n"
                + "".join(
                    f"[[turn.relay]]\nurl = '{r.url}'\n"
                    f"username = '{tid}'\npassword = '{password}'\n"
                    for r in (one, two)
                ),
            )
        await line.start_exchange()
        small = {"width": 320, "height": 180, "fps": 15}
        alpha = await line.start_in_process("alpha", **small)  # type: ignore[arg-type]
        bravo = await line.start_in_process("bravo", auto_answer=True, **small)  # type: ignore[arg-type]
        try:

            async def flowing(old: object = None, frames: int = 20) -> bool:
                for daemon, peer in ((alpha, bravo), (bravo, alpha)):
                    call = (await daemon.status())["call"] or {}
                    entry = (call.get("peers") or {}).get(peer.terminal_id) or {}
                    if (entry.get("video_sink") or {}).get("frames", 0) < frames:
                        return False
                    if entry.get("path") != {"local": "relay", "remote": "relay"}:
                        return False
                assert alpha.call is not None
                return alpha.call.peers["bravo"] is not old

            await until(lambda: alpha.client.connected and "bravo" in alpha.client.online, "online")
            await alpha.dial("bravo")
            await until(flowing, "media through the first relay")
            assert "CHANNEL_BIND processed" in one.log_text()
            assert "CHANNEL_BIND processed" not in two.log_text()

            binds_before = one.log_text().count("CHANNEL_BIND processed")
            assert alpha.call is not None
            old = alpha.call.peers["bravo"]
            one.stop()  # the first relay dies mid-call, or restarts without its allocations
            start = time.monotonic()
            if fault == "restarted":
                one.start()
            # the call finds the transport dead (2 s without media) and rebuilds it: the new
            # peer connections on both sides take the first live relay of the charter
            await until(lambda: flowing(old, frames=1), "media through a live relay")
            # 2 s to find it lost, probing a dead relay (0.5 s on each side), ICE and DTLS
            took = time.monotonic() - start
            await until(lambda: flowing(old), "more media through the relay")
            print(f"{fault}: first frames each way {took:.2f} s after the relay went down, "
                  f"20 frames after {time.monotonic() - start:.2f} s")  # fmt: skip
            assert took < 15, took
            now_on, other = (two, one) if fault == "killed" else (one, two)
            log = now_on.log_text()
            for tid in ("alpha", "bravo"):
                assert re.search(rf"user <{tid}>: incoming packet CHANNEL_BIND processed", log)
            if fault == "restarted":
                assert log.count("CHANNEL_BIND processed") > binds_before
                assert "CHANNEL_BIND processed" not in other.log_text()
            status = await alpha.status()
            assert status["call"]["state"] == "active"
            assert status["call"]["e2ee"]["rejected"] == {}
        finally:
            await alpha.stop()
            await bravo.stop()
            await line.stop()


async def until(
    check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result is True or (not isinstance(result, bool) and await result):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_newer_charter_changes_the_relays_of_a_running_terminal(tmp_path: Path) -> None:
    r1, r2 = "turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.2:3478?transport=udp"
    line = LocalLine(
        tmp_path,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        turn_relays=(r1,),
    )
    v1 = line.commission().charter
    write_config(line, "alpha", f"[[turn.relay]]\nurl = '{r1}'\nusername = 'a'\npassword = 'p'\n")
    await line.start_exchange()
    alpha = await line.start_in_process("alpha")
    try:
        assert [r.url for r in alpha.config.media.ice.relays] == [r1]
        assert not alpha.config.media.ice.relay_only

        async def install(version: int, relays: tuple[str, ...], policy: Policy) -> None:
            path = tmp_path / f"v{version}.charter.json"
            draft = propose_line(
                v1.line_id,
                [line_site_dir(tmp_path, s.site_id) for s in v1.sites],
                list(v1.terminals),
                exchanges=v1.exchanges,
                turn_relays=relays,
                policy=policy,
                version=version,
            )
            write_draft(path, draft)
            for site in v1.sites:
                sign_charter(path, line_site_dir(tmp_path, site.site_id))
            await alpha.install_charter(load_charter(path))

        # version 2 replaces the relay: alpha's credentials for r1 are no longer used
        await install(2, (r2,), Policy())
        assert alpha.config.media.ice.relays == ()
        # version 3 is relay-only through r2, for which this site has no credentials:
        # no peer connection can be built, and each attempt says why
        await install(3, (r2,), Policy(relay_only=True))
        assert alpha.config.media.ice.relay_only and alpha.config.media.ice.relays == ()
        with pytest.raises(RelayUnavailable, match="credentials for none of them"):
            await select_ice(alpha.config.media.ice)
    finally:
        await alpha.stop()
        await line.stop()
