"""``terminal stop`` and ``exchange stop``, and exit code 3 when the thing asked is not
running or cannot be reached (the environment, not the command: docs/operations.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotline import pidlock
from hotline.provision import line_terminal_dir

from .cli import free_port, hotline, small_line, start_exchange, start_terminal

pytestmark = pytest.mark.slow


def _refused_as_environment(*args: str) -> str:
    result = hotline(*args)
    assert result.returncode == 3, (args, result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_stop_ends_a_running_terminal_and_exchange_and_then_they_are_not_running(
    tmp_path: Path,
) -> None:
    port = free_port()
    charter, alpha = small_line(tmp_path, f"ws://127.0.0.1:{port}/v1/exchange")
    folder = tmp_path / "exchange"
    exchange = start_exchange(folder, port, charter)
    terminal = start_terminal(alpha, charter)
    try:
        # never started: nothing to ask (exit 3), before and after
        bravo = line_terminal_dir(tmp_path, "bravo")
        for verb in (["call", "status"], ["status"], ["check", "run", "--to", "alpha"]):
            line = _refused_as_environment(*verb, "--terminal", str(bravo))
            assert "no running terminal" in line, line
        ready = hotline("terminal", "wait", "--terminal", str(alpha), "--timeout", "30")
        assert ready.returncode == 0, ready.stderr

        stopped = hotline("terminal", "stop", "--terminal", str(alpha), "--json")
        assert stopped.returncode == 0, stopped.stderr
        doc = json.loads(stopped.stdout)
        assert doc["ok"] is True and doc["was_running"] is True
        assert doc["pid"] == terminal.proc.pid
        # returned once the process had ended: its lock is free, its exit code clean
        assert pidlock.holder(alpha / "state" / "terminal.lock") is None
        assert terminal.proc.wait(5) == 0
        # a stopped terminal (its control file left behind) does not answer: exit 3
        line = _refused_as_environment("call", "status", "--terminal", str(alpha))
        assert "does not answer" in line or "no running terminal" in line, line
        again = hotline("terminal", "stop", "--terminal", str(alpha))
        assert again.returncode == 0, again.stderr
        assert "was not running" in again.stdout

        # the exchange: `terminal wait` of a terminal whose exchange is gone exits 3
        done = hotline("exchange", "stop", "--dir", str(folder))
        assert done.returncode == 0, done.stderr
        assert f"stopped (pid {exchange.proc.pid})" in done.stdout
        assert exchange.proc.wait(5) == 0
        terminal = start_terminal(alpha, charter)
        line = _refused_as_environment(
            "terminal", "wait", "--terminal", str(alpha), "--timeout", "2"
        )
        assert "not connected to its exchange" in line, line
    finally:
        terminal.stop()
        exchange.stop()


def test_stop_refuses_what_is_not_a_terminal_or_exchange_folder(tmp_path: Path) -> None:
    for args in (["terminal", "stop", "--terminal"], ["exchange", "stop", "--dir"]):
        result = hotline(*args, str(tmp_path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: {tmp_path}: not a"), result.stderr
