"""Structured logs (``--log-format json``): one JSON object per line, RFC 3339 UTC times,
stable event names, security events at WARNING; start and stop lines; and the exchange's
audit table through ``hotline exchange events``."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotline.charter import ExchangeEndpoint, Role
from hotline.exchange import tls
from hotline.logs import event, setup_logging
from hotline.provision import create_line, line_terminal_dir
from tests.exchange.harness import RawTerminal
from tests.exchange.lines import make_line

from .cli import free_port, hotline, hotline_json, serve_exchange

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def json_lines(text: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in text.splitlines() if line.strip()]
    for doc in out:
        assert RFC3339_UTC.match(doc["ts"]), doc
        assert doc["level"] in ("debug", "info", "warning", "error", "critical")
        assert isinstance(doc["event"], str) and isinstance(doc["message"], str)
    return out


def test_json_lines_are_one_object_each_and_fields_never_override() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", static={"component": "test"}, stream=stream)
    try:
        log = logging.getLogger("hotline.test")
        log.warning(
            "two\nlines %s", "x", extra=event("auth_failed", source="10.0.0.7", level="fake")
        )
        log.info("plain")
        log.debug("hidden")
        log.info("ringing", extra=event("ringing", name="Sochi", call={"id": "c1"}))
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = json_lines(stream.getvalue())
    assert third["event"] == "ringing" and third["name"] == "Sochi"
    assert third["call"] == {"id": "c1"}
    assert first["event"] == "auth_failed" and first["source"] == "10.0.0.7"
    assert first["level"] == "warning" and first["message"] == "two\nlines x"
    assert first["component"] == "test" and first["logger"] == "hotline.test"
    assert second["event"] == "log"


@pytest.mark.slow
async def test_exchange_json_logs_and_its_audit_table(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    folder = tmp_path / "exchange"
    # at --log-level warning, the start and stop lines are still written
    serving = serve_exchange(
        folder, "--charter", str(line.path), "--log-format", "json", "--log-level", "warning"
    )
    try:
        raw = RawTerminal(serving.url)
        await raw.open()
        # t0 signs with t1's key: refused, a security event
        await raw.hello(line.line_id, "t0", line.keys["t1"])
        code, _reason = await raw.closed_with()
        assert code is not None
        await raw.close()
        # two copies of t1 replacing each other in quick succession: a supersede loop,
        # ended by refusing the newcomer (a security event too)
        copies: list[RawTerminal] = []
        refused_copy = None
        try:
            for _ in range(10):
                copy = RawTerminal(serving.url)
                copies.append(copy)
                await copy.open()
                await copy.hello(line.line_id, "t1", line.keys["t1"])
                try:
                    await copy.welcomed()
                except (ConnectionError, AssertionError):
                    refused_copy = len(copies)
                    break
        finally:
            for copy in copies:
                await copy.close()
        assert refused_copy is not None, "ten copies of t1 replaced each other unrefused"
    finally:
        exit_code, stderr = serving.stop()
    assert exit_code == 0
    logs = json_lines(stderr)
    events = [d["event"] for d in logs]
    assert events[0] == "exchange_started" and events[-1] == "exchange_stopped", events
    start = logs[0]
    assert start["component"] == "exchange" and start["url"] == serving.url
    assert start["config"]["log.format"] == "json" and start["lines"] == [line.line_id]
    refused = [d for d in logs if d["event"] == "auth_failed"]
    assert len(refused) == 1 and refused[0]["level"] == "warning"
    assert refused[0]["terminal"] == "t0" and refused[0]["source"] == "127.0.0.1"
    assert refused[0]["reason"] == "bad_signature"
    loop = [d for d in logs if d["event"] == "duplicate_terminal"]
    assert len(loop) == 1 and loop[0]["level"] == "warning", loop
    assert loop[0]["terminal"] == "t1" and loop[0]["incumbent"] == "127.0.0.1"
    assert "Two copies of this terminal" in loop[0]["message"]
    assert all(d["level"] in ("info", "warning", "error") for d in logs)

    # the audit table, read back from the store
    table = hotline_json("exchange", "events", "--dir", str(folder), "--json")
    assert table["ok"] is True and table["schema"] == 1
    kinds = [e["kind"] for e in table["events"]]
    assert kinds[:2] == ["charter_updated", "started"] and kinds[-1] == "stopped"
    assert "auth_failed" in kinds and "duplicate_terminal" in kinds
    failed = next(e for e in table["events"] if e["kind"] == "auth_failed")
    assert failed["terminal"] == "t0" and failed["reason"] == "bad_signature"
    assert RFC3339_UTC.match(failed["ts"])
    only = hotline_json(
        "exchange", "events", "--dir", str(folder), "--kind", "auth_failed", "--json"
    )
    assert [e["kind"] for e in only["events"]] == ["auth_failed"]
    recent = hotline_json("exchange", "events", "--dir", str(folder), "--since", "1h", "--json")
    assert len(recent["events"]) == len(kinds)
    future = hotline_json(
        "exchange", "events", "--dir", str(folder), "--since", "2999-01-01T00:00:00Z", "--json"
    )
    assert future["events"] == []
    text = hotline("exchange", "events", "--dir", str(folder))
    assert re.search(
        r"Z auth_failed line=line-1 terminal=t0 source=127.0.0.1 reason=bad_sig", text.stdout
    )
    bad = hotline("exchange", "events", "--dir", str(folder), "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday': expected a duration" in bad.stderr
    missing = hotline("exchange", "events", "--dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no exchange store here" in missing.stderr


@pytest.mark.slow
def test_terminal_json_logs_a_pin_mismatch_as_a_warning(tmp_path: Path) -> None:
    """The charter pins certificate A; the exchange at that address presents B."""
    pinned = tls.create_certificate(tmp_path / "exchange-a")
    impostor = tmp_path / "exchange-b"
    tls.create_certificate(impostor)
    port = free_port()
    url = f"wss://127.0.0.1:{port}/v1/exchange"
    charter = create_line(
        tmp_path, "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        exchanges=(ExchangeEndpoint(url, pinned),),
    )  # fmt: skip
    exchange = subprocess.Popen(
        [sys.executable, "-m", "hotline", "exchange", "serve", "--dir", str(impostor),
         "--listen", f"127.0.0.1:{port}", "--charter", str(charter), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    terminal = None
    try:
        assert exchange.stdout is not None
        assert json.loads(exchange.stdout.readline())["event"] == "listening"
        terminal = subprocess.Popen(
            [sys.executable, "-m", "hotline", "terminal", "run", "-t",
             str(line_terminal_dir(tmp_path, "alpha")), "--charter", str(charter),
             "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert terminal.stdout is not None and terminal.stderr is not None
        assert json.loads(terminal.stdout.readline())["ready"] is True
        lines: list[dict[str, Any]] = []
        while not any(d["event"] == "tls_pin_mismatch" for d in lines):
            lines.append(json.loads(terminal.stderr.readline()))
        terminal.send_signal(signal.SIGTERM)
        assert terminal.wait(20) == 0
        lines += json_lines(terminal.stderr.read())
    finally:
        for proc in (terminal, exchange):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    json_lines("\n".join(json.dumps(d) for d in lines))
    events = [d["event"] for d in lines]
    assert events[0] == "terminal_started" and events[-1] == "terminal_stopped", events
    assert lines[0]["terminal"] == "alpha" and lines[0]["exchange"] == url
    assert lines[0]["config"]["log.format"] == "json"
    assert lines[0]["config"]["terminal.charter"] == str(charter)
    mismatch = next(d for d in lines if d["event"] == "tls_pin_mismatch")
    assert mismatch["level"] == "warning" and mismatch["reason"] == "tls_pin"
    assert mismatch["url"] == url and mismatch["terminal"] == "alpha"
