"""A terminal's site-local configuration: ``terminal.toml`` beside its identity key.

What is local to one site and must never be in the charter lives here. Today: the
credentials for the charter's TURN relays. The file is TOML (read with ``tomllib``), must not
be readable by group or others (like a key file), and is strict: an unknown table or key, a
wrong type, or a relay the charter does not name is refused with one line naming the file
and the field. The charter stays the trust anchor for *where* media may go: a site can hold
credentials only for relays every site signed::

    [turn]
    probe_timeout_s = 1.0                      # optional: per relay, when choosing one

    [[turn.relay]]                             # coturn lt-cred-mech
    url = "turn:relay.sochi.example:3478?transport=udp"
    username = "sochi"
    password = "..."

    [[turn.relay]]                             # coturn use-auth-secret (time-limited)
    url = "turns:relay.washington.example:5349"
    shared_secret = "..."                      # coturn's static-auth-secret
    name = "sochi-principal"                   # optional, default: the terminal id
    ttl_s = 86400                              # optional, lifetime of each credential

Beside ``[turn]``, the file holds the terminal's run options (``[terminal]``) and its logging
(``[log]``), each also a flag of ``hotline terminal run`` (the flag wins; see
:mod:`hotline.settings` and :data:`TERMINAL_OPTIONS`)::

    [terminal]
    charter = "sochi-washington.charter.json"  # relative to this file's folder
    interfaces = "10.77.0.1"
    control_port = 7450
    source = "device:/dev/video0,default"
    auto_answer = false

    [log]
    format = "json"
    level = "info"
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline.charter import Charter
from hotline.errors import ConfigError, UsageError
from hotline.media.turn import (
    DEFAULT_CREDENTIAL_TTL_S,
    DEFAULT_PROBE_TIMEOUT_S,
    IceSettings,
    SharedSecretCredentials,
    StaticCredentials,
    TurnCredentials,
    TurnRelay,
)
from hotline.settings import parse_tables, read_config_file, sections
from hotline.terminal.options import TERMINAL_OPTIONS

log = logging.getLogger(__name__)

CONFIG_FILE = "terminal.toml"
MAX_CONFIG_SIZE = 64 * 1024
PROBE_TIMEOUT_RANGE = (0.05, 30.0)
CREDENTIAL_TTL_RANGE = (60, 30 * 86_400)

_TOP_KEYS = {"turn"} | sections(TERMINAL_OPTIONS)
_TURN_KEYS = {"probe_timeout_s", "relay"}
_STATIC_KEYS = {"url", "username", "password"}
_SECRET_KEYS = {"url", "shared_secret", "name", "ttl_s"}


@dataclass(frozen=True)
class TurnEntry:
    """Credentials for one relay of the charter."""

    url: str
    credentials: TurnCredentials


@dataclass(frozen=True)
class TerminalConfig:
    """What a site keeps beside one terminal (never in the charter)."""

    #: credentials for the charter's relays, in file order
    turn: tuple[TurnEntry, ...] = ()
    #: seconds one relay may take to answer the probe when a peer connection picks a relay
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S
    #: the run options the file sets (``section.name`` -> checked value), see TERMINAL_OPTIONS
    values: Mapping[str, object] = field(default_factory=dict)
    #: the file read (None: no file)
    path: Path | None = None

    def ice_settings(self, charter: Charter, *, strict: bool = True) -> IceSettings:
        """ICE settings for calls on ``charter``: its relays, in its order, that this site has
        credentials for, and its relay-only policy. With ``strict`` (a terminal starting)
        raises :class:`ConfigError` for credentials of a relay the charter does not name,
        and when the policy is relay-only but no relay of the charter has credentials here.
        Without (a newer charter adopted while running) those credentials are ignored, and a
        relay-only charter without usable relays lets no peer connection be built."""
        by_url = {e.url: e for e in self.turn}
        unknown = [u for u in by_url if u not in charter.turn_relays]
        if unknown and strict:
            raise ConfigError(
                f"TURN relay {unknown[0]!r} has credentials in the site configuration but is "
                f"not in the charter of line {charter.line_id!r} (version {charter.version})"
            )
        for url in unknown:
            log.warning(
                "TURN relay %s is not in charter version %d: not used", url, charter.version
            )
        relays = tuple(
            TurnRelay(url, by_url[url].credentials) for url in charter.turn_relays if url in by_url
        )
        if charter.policy.relay_only and not relays and strict:
            raise ConfigError(
                f"the charter of line {charter.line_id!r} allows media only through its TURN "
                "relays, and the site configuration has credentials for none of them "
                f"({', '.join(charter.turn_relays)})"
            )
        for url in charter.turn_relays:
            if url not in by_url:
                log.warning("no credentials for the charter's TURN relay %s: not used", url)
        return IceSettings(
            relays=relays,
            relay_only=charter.policy.relay_only,
            probe_timeout_s=self.probe_timeout_s,
        )


def default_config_path(terminal_dir: Path) -> Path:
    return terminal_dir / CONFIG_FILE


def load_terminal_config(path: Path, *, default_name: str) -> TerminalConfig:
    """Read and check ``path``. ``default_name``: the name in shared-secret user names when
    the file gives none (the terminal id). Raises :class:`ConfigError` naming the file."""
    data = read_config_file(
        path,
        forbidden=0o077,
        exposes="read the TURN credentials",
        mode="600",
        limit=MAX_CONFIG_SIZE,
    )
    try:
        config = parse_terminal_config(data, default_name=default_name, base=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dataclasses.replace(config, path=path)


def parse_terminal_config(
    data: bytes, *, default_name: str, base: Path | None = None
) -> TerminalConfig:
    """Parse the TOML text of a terminal configuration (strict; see the module docstring)."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    _only(doc, _TOP_KEYS, "")
    values = parse_tables(doc, TERMINAL_OPTIONS, base=base)
    turn = doc.get("turn", {})
    if not isinstance(turn, dict):
        raise ConfigError("turn must be a table ([turn])")
    _only(turn, _TURN_KEYS, "turn.")
    timeout = turn.get("probe_timeout_s", DEFAULT_PROBE_TIMEOUT_S)
    low, high = PROBE_TIMEOUT_RANGE
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or not low <= timeout <= high
    ):
        raise ConfigError(f"turn.probe_timeout_s = {timeout!r} is not a number of seconds "
                          f"from {low:g} to {high:g}")  # fmt: skip
    relays = turn.get("relay", [])
    if not isinstance(relays, list):
        raise ConfigError("turn.relay must be an array of tables ([[turn.relay]])")
    entries: list[TurnEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(relays):
        where = f"turn.relay[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table")
        entry = _relay(item, where, default_name)
        if entry.url in seen:
            raise ConfigError(f"{where}: a second entry for {entry.url!r}")
        seen.add(entry.url)
        entries.append(entry)
    return TerminalConfig(turn=tuple(entries), probe_timeout_s=float(timeout), values=values)


def _relay(item: dict[str, Any], where: str, default_name: str) -> TurnEntry:
    url = _text(item, "url", where)
    credentials: TurnCredentials
    if "shared_secret" in item:
        _only(item, _SECRET_KEYS, f"{where}.", "with shared_secret, ")
        name = _text(item, "name", where) if "name" in item else default_name
        if ":" in name:
            raise ConfigError(f"{where}.name must not contain ':'")
        ttl = item.get("ttl_s", DEFAULT_CREDENTIAL_TTL_S)
        low, high = CREDENTIAL_TTL_RANGE
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not low <= ttl <= high:
            raise ConfigError(f"{where}.ttl_s = {ttl!r} is not an integer from {low} to {high}")
        secret = _text(item, "shared_secret", where).encode("utf-8")
        credentials = SharedSecretCredentials(secret, name, ttl)
    elif "username" in item or "password" in item:
        _only(item, _STATIC_KEYS, f"{where}.", "with username and password, ")
        credentials = StaticCredentials(
            _text(item, "username", where), _text(item, "password", where)
        )
    else:
        raise ConfigError(f"{where}: give username and password, or shared_secret")
    try:
        TurnRelay(url, credentials)  # the URL must be one the media engine can use
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return TurnEntry(url, credentials)


def _text(item: dict[str, Any], key: str, where: str) -> str:
    if key not in item:
        raise ConfigError(f"{where}: missing {key}")
    value = item[key]
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ConfigError(f"{where}.{key} must be a non-empty string of printable characters")
    return value


def _only(table: dict[str, Any], allowed: set[str], prefix: str, context: str = "") -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(
            f"unknown setting {prefix}{extra[0]} ({context}known: {', '.join(sorted(allowed))})"
        )
