"""Site-local configuration files (terminal.toml, exchange.toml): strict, one-line errors,
the command line over the file over the defaults, and ``hotline config show``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.errors import ConfigError, UsageError
from hotline.exchange.config import EXCHANGE_OPTIONS, exchange_settings, load_exchange_config
from hotline.settings import COMMAND_LINE, DEFAULT, resolve
from hotline.terminal.config import parse_terminal_config
from hotline.terminal.options import TERMINAL_OPTIONS

from .cli import exchange_dir, free_port, hotline, hotline_json, small_line, write_private

EXCHANGE_TOML = """
[exchange]
listen = "127.0.0.1:0"
insecure_loopback = true
charter = ["charters"]

[limits]
max_connections = 300
window = 120

[log]
format = "json"
level = "warning"
"""


def test_exchange_file_values_and_the_command_line_over_them(tmp_path: Path) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    write_private(folder / "exchange.toml", EXCHANGE_TOML, 0o644)
    settings = exchange_settings(folder, None, {"limits.window": 30.0, "log.level": None})
    source = str(folder / "exchange.toml")
    assert settings["exchange.listen"].value == "127.0.0.1:0"
    assert settings["exchange.listen"].source == source
    assert settings["exchange.charter"].value == [folder / "charters"]  # beside the file
    assert settings["limits.max_connections"].value == 300
    assert settings["limits.window"].value == 30.0
    assert settings["limits.window"].source == COMMAND_LINE
    assert settings["log.level"].value == "warning"
    assert settings["limits.burst"].source == DEFAULT
    # no file: the defaults
    empty = exchange_settings(tmp_path / "none", None, {})
    assert all(s.source == DEFAULT for s in empty.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[exchange\n", "not valid TOML"),
        ("[exchnage]\nlisten = 'x'", "unknown setting exchnage"),
        ("[exchange]\nport = 1", "unknown setting exchange.port (known: charter, db,"),
        ("[limits]\nmax_connections = 'many'", "limits.max_connections = 'many': expected a num"),
        ("[limits]\nmax_connections = 1.5", "expected a whole number"),
        ("[limits]\nwindow = 0", "limits.window = 0: expected a number from 0.001 to 1e+09"),
        ("[limits]\nrate = nan", "expected a finite number"),
        ("[log]\nformat = 'xml'", "log.format = 'xml': expected one of text, json"),
        ("[exchange]\ninsecure_loopback = 'yes'", "expected true or false"),
        ("exchange = 3", "exchange must be a table"),
    ],
)
def test_bad_exchange_files_are_refused_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write_private(tmp_path / "exchange.toml", text, 0o644)
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        load_exchange_config(path)
    assert str(refused.value).startswith(f"{path}: ") and "\n" not in str(refused.value)


def test_exchange_file_must_not_be_writable_by_others(tmp_path: Path) -> None:
    path = write_private(tmp_path / "exchange.toml", EXCHANGE_TOML, 0o664)
    with pytest.raises(ConfigError, match="permissions 0664 let others change"):
        load_exchange_config(path)


def test_terminal_file_run_options_and_checks() -> None:
    text = b"[terminal]\ncontrol_port = 7450\ncharter = 'line.json'\n[log]\nformat = 'JSON'\n"
    config = parse_terminal_config(text, default_name="t", base=Path("/srv/t"))
    assert config.values == {
        "terminal.control_port": 7450,
        "terminal.charter": Path("/srv/t/line.json"),
        "log.format": "json",
    }
    with pytest.raises(ConfigError, match=r"terminal.control_port = 70000: expected a number"):
        parse_terminal_config(b"[terminal]\ncontrol_port = 70000", default_name="t")
    with pytest.raises(ConfigError, match=r"unknown setting terminal.colour"):
        parse_terminal_config(b"[terminal]\ncolour = 1", default_name="t")
    # --no-auto-answer overrides a file's true (False is a value, not "not given")
    off = resolve(
        TERMINAL_OPTIONS, {"terminal.auto_answer": True}, "f", {"terminal.auto_answer": False}
    )
    assert off["terminal.auto_answer"].value is False
    assert off["terminal.auto_answer"].source == COMMAND_LINE
    # the command line is checked as strictly, and names the flag
    with pytest.raises(UsageError, match=r"--control-port 99999: expected a number from 0"):
        resolve(TERMINAL_OPTIONS, {}, None, {"terminal.control_port": 99999})
    with pytest.raises(UsageError, match=r"--max-queue 0: expected"):
        resolve(EXCHANGE_OPTIONS, {}, None, {"limits.max_queue": 0})


@pytest.mark.slow
def test_config_show_terminal_prints_sources_and_no_secret(tmp_path: Path) -> None:
    _charter, alpha = small_line(tmp_path)
    write_private(
        alpha / "terminal.toml",
        "[terminal]\ninterfaces = '127.0.0.1'\n[log]\nlevel = 'info'\n"
        "[[turn.relay]]\nurl = 'turn:relay.example:3478'\nusername = 'u'\n"
        "password = 'very-secret-pw'\n",
    )
    shown = hotline_json("config", "show", "--terminal", str(alpha), "--json")
    assert shown["ok"] is True and shown["schema"] == 1 and shown["kind"] == "terminal"
    assert shown["settings"]["terminal.interfaces"] == {
        "value": "127.0.0.1",
        "source": str(alpha / "terminal.toml"),
    }
    assert shown["settings"]["terminal.control_port"] == {"value": 0, "source": "default"}
    assert shown["turn_relays"] == [{"url": "turn:relay.example:3478", "credentials": "Static"}]
    text = hotline("config", "show", "--terminal", str(alpha))
    assert text.returncode == 0
    shown_line = r"terminal\.interfaces\s+= \"127\.0\.0\.1\"  \(.*terminal\.toml\)"
    assert re.search(shown_line, text.stdout)
    assert "very-secret-pw" not in text.stdout + json.dumps(shown)
    # a bad file: one line, exit 2, as `terminal run` would say
    write_private(alpha / "terminal.toml", "[terminal]\nfps = 0\n")
    bad = hotline("config", "show", "--terminal", str(alpha))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: {alpha / 'terminal.toml'}: terminal.fps = 0: expected a number from 1 to 120"
    ]
    assert hotline("config", "show").returncode == 2


@pytest.mark.slow
def test_config_show_exchange(tmp_path: Path) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    shown = hotline_json("config", "show", "--exchange", str(folder), "--json")
    assert shown["file"] is None and shown["settings"]["exchange.listen"]["source"] == "default"
    write_private(folder / "exchange.toml", EXCHANGE_TOML, 0o644)
    shown = hotline_json("config", "show", "--exchange", str(folder), "--json")
    assert shown["settings"]["limits.window"] == {
        "value": 120.0,
        "source": str(folder / "exchange.toml"),
    }


@pytest.mark.slow
def test_exchange_serve_takes_its_file_and_the_command_line_wins(tmp_path: Path) -> None:
    charter, _alpha = small_line(tmp_path)
    folder = exchange_dir(tmp_path)
    (folder / "charters").mkdir()
    (folder / "charters" / "east-west.charter.json").write_bytes(charter.read_bytes())
    port = free_port()
    write_private(folder / "exchange.toml", EXCHANGE_TOML.replace(":0", f":{port}"), 0o644)
    # the file's listen address, charter folder, insecure mode and JSON logs; the command
    # line's --log-level (info, so the start line is there)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotline", "exchange", "serve", "--dir", str(folder),
         "--json", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["url"] == f"ws://127.0.0.1:{port}/v1/exchange"
        assert ready["lines"] == ["east-west"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        lines = [json.loads(line) for line in proc.stderr.read().splitlines()]
        assert any(x["level"] == "info" and x["logger"] == "hotline.exchange" for x in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # a bad file stops serve in one line, exit 2
    write_private(folder / "exchange.toml", "[limits]\nburst = -1\n", 0o644)
    result = hotline("exchange", "serve", "--dir", str(folder))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {folder / 'exchange.toml'}: limits.burst = -1: expected a number from 1 to 1e+09"
    ]


@pytest.mark.slow
def test_terminal_run_takes_charter_and_port_from_its_file(tmp_path: Path) -> None:
    charter, alpha = small_line(tmp_path)
    port = free_port()
    write_private(
        alpha / "terminal.toml",
        f"[terminal]\ncharter = '{charter}'\ncontrol_port = {port}\n"
        "check_retention_days = 30\ncheck_retention_months = 12\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotline", "terminal", "run", "-t", str(alpha)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] is True and ready["control"] == f"http://127.0.0.1:{port}"
        status = json.loads(hotline("call", "status", "--json", "-t", str(alpha)).stdout)
        assert status["readiness"]["retention"] == {"days": 30, "months": 12}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # no charter anywhere: one line
    write_private(alpha / "terminal.toml", "[log]\nformat = 'json'\n")
    result = hotline("terminal", "run", "-t", str(alpha))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no charter: give --charter FILE")


@pytest.mark.slow
def test_version_flag() -> None:
    from hotline import __version__

    for args in (["--version"], ["version"]):
        result = hotline(*args)
        assert result.returncode == 0 and result.stdout.strip() == __version__
