"""Key rotation end to end through the command line, with real processes on 127.0.0.1: a
terminal re-enrolled under its id with a new key, a site's new operator key, and a new
exchange certificate, each as a new charter version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotline.charter import CharterStore

from .cli import (
    free_port,
    hotline,
    hotline_json,
    start_exchange,
    start_terminal,
    status,
    wait_until,
)

pytestmark = pytest.mark.slow


def ok(*args: str) -> str:
    result = hotline(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def commission(root: Path, exchange: str) -> Path:
    """Two sites (east, west), a terminal each (alpha, bravo), charter v1 signed by both."""
    for site in ("east", "west"):
        ok("site", "init", site, "--dir", str(root / site))
    ok("terminal", "enroll", "alpha", "--site", str(root / "east"), "--role", "principal",
       "--out", str(root / "alpha"))  # fmt: skip
    ok("terminal", "enroll", "bravo", "--site", str(root / "west"), "--role", "principal",
       "--out", str(root / "bravo"))  # fmt: skip
    return propose(root, 1, exchange)


def propose(root: Path, version: int, *exchanges: str) -> Path:
    out = root / f"v{version}.json"
    args = ["line", "propose", "east-west", "--site", str(root / "east"), "--site",
            str(root / "west"), "--version", str(version), "--out", str(out)]  # fmt: skip
    for e in exchanges:
        args += ["--exchange", e]
    ok(*args)
    ok("line", "sign", str(out), "--site", str(root / "east"))
    ok("line", "sign", str(out), "--site", str(root / "west"))
    ok("line", "verify", str(out))
    return out


def test_a_replaced_terminal_key_loses_its_call_at_once(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/exchange"
    v1 = commission(tmp_path, url)
    ok("exchange", "init", "--dir", str(tmp_path / "exchange"))
    exchange = start_exchange(tmp_path / "exchange", port, v1)
    running = [exchange]
    try:
        alpha = start_terminal(tmp_path / "alpha", v1)
        running.append(alpha)
        bravo = start_terminal(tmp_path / "bravo", v1, "--auto-answer")
        running.append(bravo)
        wait_until(lambda: status(tmp_path / "bravo")["exchange"]["connected"], 30, "bravo online")
        dialled = hotline_json("call", "dial", "bravo", "-t", str(tmp_path / "alpha"), "--wait",
                               "--timeout", "40", "--json")  # fmt: skip
        assert dialled["ok"] is True and dialled["schema"] == 1 and dialled["security_code"]

        # without --replace, a second enrolment under the same id is refused
        again = hotline("terminal", "enroll", "bravo", "--site", str(tmp_path / "west"),
                        "--role", "principal", "--out", str(tmp_path / "bravo-2"))  # fmt: skip
        assert again.returncode == 2 and "--replace" in again.stderr, again.stderr
        # bravo's key is replaced (say the machine was stolen): a new key, same id
        replaced = hotline_json("terminal", "enroll", "bravo", "--site", str(tmp_path / "west"),
                                "--role", "principal", "--replace",
                                "--out", str(tmp_path / "bravo-2"), "--json")  # fmt: skip
        assert replaced["replaced"] is True
        assert list((tmp_path / "west" / "enrolments" / "replaced").glob("bravo-*.json"))
        v2 = propose(tmp_path, 2, url)
        shown = hotline_json("line", "show", str(v2), "--json")
        assert [t["fingerprint"] for t in shown["terminals"] if t["terminal_id"] == "bravo"] == [
            replaced["fingerprint"]
        ]

        installed = hotline_json("terminal", "install-charter", str(v2), "-t",
                                 str(tmp_path / "alpha"), "--json")  # fmt: skip
        assert installed["installed"] is True and installed["version"] == 2

        # alpha's call drops the old bravo at once; the exchange closes its connection and
        # refuses it from then on
        def call_ended() -> bool:
            call = status(tmp_path / "alpha")["call"]
            return call is None or call["state"] == "ended"

        wait_until(call_ended, 20, "alpha's call to end")
        wait_until(
            lambda: not status(tmp_path / "bravo")["exchange"]["connected"],
            20,
            "the old bravo to lose the exchange",
        )
        old = status(tmp_path / "bravo")
        assert old["charter_version"] == 1  # it never got v2: the exchange shut it out

        # the new bravo, with v2, takes calls again
        bravo.stop()
        running.remove(bravo)
        new_bravo = start_terminal(tmp_path / "bravo-2", v2, "--auto-answer")
        running.append(new_bravo)
        wait_until(
            lambda: status(tmp_path / "bravo-2")["exchange"]["connected"], 30, "new bravo online"
        )
        second = hotline_json("call", "dial", "bravo", "-t", str(tmp_path / "alpha"), "--wait",
                              "--timeout", "40", "--json")  # fmt: skip
        assert second["security_code"] and second["call"] != dialled["call"]
        hotline("call", "hangup", "-t", str(tmp_path / "alpha"))
    finally:
        for process in reversed(running):
            process.stop()
    events = hotline_json("exchange", "events", "--dir", str(tmp_path / "exchange"), "--json")
    assert any(e["kind"] == "charter_updated" for e in events["events"]), events


def test_operator_key_rotation_needs_the_handover(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/exchange"
    v1 = commission(tmp_path, url)
    west = tmp_path / "west"
    before = hotline_json("line", "show", str(v1), "--json")["sites"][1]["fingerprint"]
    rotated = hotline_json("site", "rotate-key", "--site", str(west), "--json")
    assert rotated["previous_fingerprint"] == before != rotated["fingerprint"]
    assert (west / "operator.previous.key").stat().st_mode & 0o077 == 0
    # the site's enrolments are signed with the new key: a charter can be proposed at once
    v2 = propose(tmp_path, 2, url)
    shown = hotline_json("line", "show", str(v2), "--json")
    assert shown["valid"] is True
    assert shown["handovers"] == [
        {
            "site_id": "west",
            "previous_key": shown["handovers"][0]["previous_key"],
            "previous_fingerprint": before,
            "signature": "valid",
        }
    ]
    assert "handover signed by its previous key" in ok("line", "show", str(v2))

    # the same change without the handover, and with a handover by a key nobody held:
    # valid on their own, refused by every store that holds v1
    doc = json.loads(v2.read_text())
    del doc["handovers"]
    stripped = tmp_path / "stripped.json"
    stripped.write_text(json.dumps(doc))
    assert hotline("line", "verify", str(stripped)).returncode == 0
    (west / "operator.previous.key").unlink()
    ok("site", "rotate-key", "--site", str(west))  # its previous key is v2's, not v1's
    v3 = propose(tmp_path, 3, url)

    ok("exchange", "init", "--dir", str(tmp_path / "exchange"))
    running = [start_exchange(tmp_path / "exchange", port, v1)]
    try:
        running.append(start_terminal(tmp_path / "alpha", v1))
        running.append(start_terminal(tmp_path / "bravo", v1))
        wait_until(lambda: status(tmp_path / "bravo")["exchange"]["connected"], 30, "bravo")
        alpha = str(tmp_path / "alpha")
        refused = hotline("terminal", "install-charter", str(stripped), "-t", alpha)
        assert refused.returncode == 2 and "without a handover" in refused.stderr, refused
        refused = hotline("terminal", "install-charter", str(v3), "-t", alpha)
        assert refused.returncode == 2 and "handover by another key" in refused.stderr, refused
        assert status(tmp_path / "alpha")["charter_version"] == 1
        # with the handover: the terminal, the exchange and the other terminal take it
        ok("terminal", "install-charter", str(v2), "-t", alpha)
        wait_until(lambda: status(tmp_path / "bravo")["charter_version"] == 2, 20, "bravo v2")
        # and then v3, whose handover is by v2's key
        ok("terminal", "install-charter", str(v3), "-t", alpha)
        wait_until(lambda: status(tmp_path / "bravo")["charter_version"] == 3, 20, "bravo v3")
    finally:
        for process in reversed(running):
            process.stop()
    store = CharterStore(tmp_path / "exchange" / "exchange.db")
    current = store.current("east-west")
    assert current is not None and current.version == 3


def test_exchange_certificate_replaced_without_an_outage(tmp_path: Path) -> None:
    old_port, new_port = free_port(), free_port()
    old_pin = hotline_json("exchange", "init", "--dir", str(tmp_path / "ex-old"), "--json")
    old_url = f"wss://127.0.0.1:{old_port}/v1/exchange#{old_pin['tls_fingerprint']}"
    v1 = commission(tmp_path, old_url)
    running = [start_exchange(tmp_path / "ex-old", old_port, v1, tls=True)]
    try:
        running.append(start_terminal(tmp_path / "alpha", v1))
        running.append(start_terminal(tmp_path / "bravo", v1, "--auto-answer"))
        wait_until(lambda: status(tmp_path / "alpha")["exchange"]["connected"], 30, "alpha")
        # step 1: a new exchange folder (a new certificate), step 2: v2 names it first
        ok("exchange", "init", "--dir", str(tmp_path / "ex-new"))
        new_pin = hotline_json("exchange", "fingerprint", "--dir", str(tmp_path / "ex-new"),
                               "--json")["tls_fingerprint"]  # fmt: skip
        assert new_pin != old_pin["tls_fingerprint"]
        new_url = f"wss://127.0.0.1:{new_port}/v1/exchange#{new_pin}"
        v2 = propose(tmp_path, 2, new_url, old_url)
        # step 3: the new exchange serves v2; the old one gets it through a terminal
        running.append(start_exchange(tmp_path / "ex-new", new_port, v2, tls=True))
        ok("terminal", "install-charter", str(v2), "-t", str(tmp_path / "alpha"))
        wait_until(lambda: status(tmp_path / "bravo")["charter_version"] == 2, 20, "bravo v2")
        # terminals restarted with v2 connect to the new exchange
        for name in ("alpha", "bravo"):
            process = next(p for p in running if p.name == name)
            process.stop()
            running.remove(process)
            extra = ("--auto-answer",) if name == "bravo" else ()
            running.append(start_terminal(tmp_path / name, v2, *extra))
        for name in ("alpha", "bravo"):
            wait_until(lambda name=name: status(tmp_path / name)["exchange"]["connected"], 30, name)
            assert f":{new_port}/" in status(tmp_path / name)["exchange"]["url"]
        dialled = hotline_json("call", "dial", "bravo", "-t", str(tmp_path / "alpha"), "--wait",
                               "--timeout", "40", "--json")  # fmt: skip
        assert dialled["security_code"]
        hotline("call", "hangup", "-t", str(tmp_path / "alpha"))
    finally:
        for process in reversed(running):
            process.stop()


def test_a_lost_operator_key_is_re_anchored_by_hand(tmp_path: Path) -> None:
    """West's operator key is lost: there is nothing to sign a handover with, so the line
    is re-commissioned and every operator installs it by hand on stopped equipment
    (`install-charter --reanchor`); nothing running, and nothing through the exchange,
    takes it."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/exchange"
    v1 = commission(tmp_path, url)
    west = tmp_path / "west"
    ok("site", "rotate-key", "--site", str(west))
    (west / "operator.previous.key").unlink()  # lost: no handover can be signed
    recommissioned = propose(tmp_path, 2, url)  # signed by west's new key, no handover
    assert "handovers" not in json.loads(recommissioned.read_text())
    exchange, alpha, bravo = tmp_path / "exchange", tmp_path / "alpha", tmp_path / "bravo"
    ok("exchange", "init", "--dir", str(exchange))

    running = [start_exchange(exchange, port, v1)]
    try:
        running.append(start_terminal(alpha, v1))
        wait_until(lambda: status(alpha)["exchange"]["connected"], 30, "alpha")
        # not on a running terminal or exchange, and not without --reanchor
        for args in (
            ("terminal", "install-charter", str(recommissioned), "-t", str(alpha), "--reanchor"),
            ("exchange", "install-charter", str(recommissioned), "--dir", str(exchange),
             "--reanchor"),
        ):  # fmt: skip
            refused = hotline(*args)
            assert refused.returncode == 2, refused  # a folder in use: exit 2
            assert "is running (pid" in refused.stderr and "stop it first" in refused.stderr
            assert "Traceback" not in refused.stderr
        refused = hotline("terminal", "install-charter", str(recommissioned), "-t", str(alpha))
        assert refused.returncode == 2 and "without a handover" in refused.stderr, refused
        assert status(alpha)["charter_version"] == 1
    finally:
        for process in reversed(running):
            process.stop()
    refused = hotline("exchange", "install-charter", str(recommissioned), "--dir", str(exchange))
    assert refused.returncode == 2 and "give --reanchor" in refused.stderr, refused
    # bravo has never run: nothing to re-anchor, said in one line
    refused = hotline("terminal", "install-charter", str(recommissioned), "-t", str(bravo),
                      "--reanchor")  # fmt: skip
    assert refused.returncode == 2 and "has run" in refused.stderr, refused
    assert "Traceback" not in refused.stderr

    done = hotline_json("terminal", "install-charter", str(recommissioned), "-t", str(alpha),
                        "--reanchor", "--json")  # fmt: skip
    assert done == {"schema": 1, "ok": True, "installed": True, "reanchored": True,
                    "line_id": "east-west", "version": 2, "previous_version": 1}  # fmt: skip
    text = ok("exchange", "install-charter", str(recommissioned), "--dir", str(exchange),
              "--reanchor")  # fmt: skip
    assert "version 2 re-anchored by hand (was 1)" in text, text
    # once more is the same charter: taken as it is, the version unchanged
    again = hotline_json("terminal", "install-charter", str(recommissioned), "-t", str(alpha),
                         "--reanchor", "--json")  # fmt: skip
    assert again["version"] == 2 and again["previous_version"] == 2
    # and an older one is still a rollback, re-anchored or not
    refused = hotline("terminal", "install-charter", str(v1), "-t", str(alpha), "--reanchor")
    assert refused.returncode != 0 and "older than" in refused.stderr, refused

    running = [start_exchange(exchange, port, recommissioned)]
    try:
        running.append(start_terminal(alpha, recommissioned))
        running.append(start_terminal(bravo, recommissioned))
        for folder in (alpha, bravo):
            wait_until(lambda f=folder: status(f)["exchange"]["connected"], 30, folder.name)
            assert status(folder)["charter_version"] == 2
    finally:
        for process in reversed(running):
            process.stop()
