"""The site-local terminal configuration (terminal.toml): strict, private, matched to the
charter's relays; and ``hotline terminal run`` refusing a bad one in one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.charter import Policy, Role
from hotline.errors import ConfigError, RelayUnavailable
from hotline.media.turn import SharedSecretCredentials, StaticCredentials, select_ice
from hotline.provision import create_line, line_terminal_dir
from hotline.terminal.config import TerminalConfig, load_terminal_config, parse_terminal_config
from tests.charters import make_charter

R1 = "turn:relay-1.example:3478?transport=udp"
R2 = "turns:relay-2.example:5349"

GOOD = f"""
[turn]
probe_timeout_s = 0.5

[[turn.relay]]
url = "{R1}"
username = "sochi"
password = "pw-1"

[[turn.relay]]
url = "{R2}"
shared_secret = "s3cret"
ttl_s = 3600
"""


def parse(text: str) -> TerminalConfig:
    return parse_terminal_config(text.encode(), default_name="sochi-principal")


def test_both_kinds_of_credentials_in_charter_order() -> None:
    config = parse_terminal_config(GOOD.encode(), default_name="sochi-principal")
    assert config.probe_timeout_s == 0.5
    assert config.turn[0].credentials == StaticCredentials("sochi", "pw-1")
    assert config.turn[1].credentials == SharedSecretCredentials(b"s3cret", "sochi-principal", 3600)
    charter = make_charter(turn_relays=(R2, R1), policy=Policy(relay_only=True))
    ice = config.ice_settings(charter)
    assert [r.url for r in ice.relays] == [R2, R1]  # the charter's order, not the file's
    assert ice.relay_only and ice.probe_timeout_s == 0.5
    # a relay of the charter without credentials here is left out
    only_r2 = parse(f"[[turn.relay]]\nurl = '{R2}'\nshared_secret = 's'\n")
    ice = only_r2.ice_settings(make_charter(turn_relays=(R1, R2)))
    assert [r.url for r in ice.relays] == [R2] and not ice.relay_only
    assert parse("").turn == ()


def test_relays_must_be_in_the_charter() -> None:
    config = parse_terminal_config(GOOD.encode(), default_name="t")
    with pytest.raises(
        ConfigError, match=r"relay-2.example:5349' has credentials .* not in the charter"
    ):
        config.ice_settings(make_charter(turn_relays=(R1,)))
    empty = parse_terminal_config(b"", default_name="t")
    with pytest.raises(ConfigError, match="credentials for none of them"):
        empty.ice_settings(make_charter(turn_relays=(R1,), policy=Policy(relay_only=True)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("turn = [", "not valid TOML"),
        ("[media]\nsource = 'x'", "unknown setting media"),
        ("[turn]\nprobe = 1", "unknown setting turn.probe"),
        ("[turn]\nprobe_timeout_s = 0", "probe_timeout_s = 0 is not a number"),
        ("[turn]\nprobe_timeout_s = true", "probe_timeout_s = True"),
        ("[[turn.relay]]\nurl = 'turn:h'", "give username and password, or shared_secret"),
        ("[[turn.relay]]\nusername = 'u'\npassword = 'p'", "missing url"),
        ("[[turn.relay]]\nurl = 'turn:h'\nusername = 'u'", "missing password"),
        ("[[turn.relay]]\nurl = 'turn:h'\nusername = 'u'\npassword = ''", "non-empty string"),
        ("[[turn.relay]]\nurl = 'turn:h'\nusername = 'u'\npassword = 'p'\nsecret = 's'",
         "unknown setting turn.relay[0].secret"),
        ("[[turn.relay]]\nurl = 'turn:h'\nshared_secret = 's'\npassword = 'p'",
         "with shared_secret, known"),
        ("[[turn.relay]]\nurl = 'turn:h'\nshared_secret = 's'\nttl_s = 5", "ttl_s = 5"),
        ("[[turn.relay]]\nurl = 'turn:h'\nshared_secret = 's'\nname = 'a:b'", "must not contain"),
        ("[[turn.relay]]\nurl = 'stun:h'\nusername = 'u'\npassword = 'p'", "turn: or turns:"),
        ("[[turn.relay]]\nurl = 'turns:h?transport=udp'\nusername = 'u'\npassword = 'p'",
         "turns: over tcp"),
        ("[[turn.relay]]\nurl = 'turn:h'\nusername = 'u'\npassword = 'p'\n"
         "[[turn.relay]]\nurl = 'turn:h'\nusername = 'v'\npassword = 'q'", "a second entry"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        parse(text)
    assert "\n" not in str(refused.value)
    assert "pw-" not in str(refused.value) and "'p'" not in str(refused.value)


def test_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "terminal.toml"
    path.write_text(GOOD)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="permissions 0644 let others read"):
        load_terminal_config(path, default_name="t")
    path.chmod(0o600)
    assert len(load_terminal_config(path, default_name="t").turn) == 2
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_terminal_config(tmp_path / "absent.toml", default_name="t")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8"):
        load_terminal_config(path, default_name="t")


@pytest.mark.slow
def test_terminal_run_refuses_a_bad_configuration_in_one_line(tmp_path: Path) -> None:
    charter = create_line(
        tmp_path, "east-west", {"east": [("alpha", Role.PRINCIPAL)]},
        exchanges=("ws://127.0.0.1:9",), turn_relays=(R1,), policy=Policy(relay_only=True),
    )  # fmt: skip
    tdir = line_terminal_dir(tmp_path, "alpha")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: PLW1510 (checked below)
            [sys.executable, "-m", "hotline", "terminal", "run", "-t", str(tdir),
             "--charter", str(charter), *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    for setup, message in (
        (None, "credentials for none of them"),
        ("[[turn.relay]]\nurl = 'turn:other:3478'\nusername = 'u'\npassword = 'p'\n",
         "'turn:other:3478' has credentials in the site configuration but is not in the charter"),
        ("[turn\n", "terminal.toml: not valid TOML"),
    ):  # fmt: skip
        if setup is not None:
            (tdir / "terminal.toml").write_text(setup)
            (tdir / "terminal.toml").chmod(0o600)
        result = run()
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    result = run("--config", str(tmp_path / "nope.toml"))
    assert "nope.toml: no such configuration file" in result.stderr


async def test_a_newer_charter_while_running_uses_only_its_own_relays() -> None:
    config = parse_terminal_config(GOOD.encode(), default_name="t")
    # R2 left the charter: its credentials are ignored, not fatal, in a running terminal
    ice = config.ice_settings(make_charter(turn_relays=(R1,)), strict=False)
    assert [r.url for r in ice.relays] == [R1]
    # a relay-only charter whose relays this site has no credentials for: nothing connects,
    # and every peer connection that would be built is refused visibly
    ice = config.ice_settings(
        make_charter(turn_relays=("turn:elsewhere:3478",), policy=Policy(relay_only=True)),
        strict=False,
    )
    assert ice.relays == () and ice.relay_only
    with pytest.raises(RelayUnavailable, match="credentials for none of them"):
        await select_ice(ice)
