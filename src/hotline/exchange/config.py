"""An exchange's site-local configuration: ``<exchange folder>/exchange.toml``.

Every option of ``hotline exchange serve`` can be set here and on the command line (the
command line wins; see :mod:`hotline.settings`). The file holds no secret (the TLS key has a
file of its own) but decides where the exchange listens and which store it uses, so it must
not be writable by group or others::

    [exchange]
    listen = "10.77.0.1:8443"
    charter = ["sochi-washington.charter.json"]   # relative to this file's folder
    # db = "/var/lib/hotline/exchange/exchange.db"

    [limits]
    max_connections = 2000
    window = 3600

    [log]
    format = "json"
    level = "info"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hotline.errors import ConfigError
from hotline.exchange.routing import Limits
from hotline.settings import (
    Option,
    Settings,
    log_options,
    parse_tables,
    read_config_file,
    resolve,
    sections,
)

CONFIG_FILE = "exchange.toml"
MAX_CONFIG_SIZE = 64 * 1024
DEFAULT_PORT = 7447
#: the largest value any limit option takes (a guard against typos and infinities)
MAX_LIMIT = 1_000_000_000
_DEFAULTS = Limits()


def _limit(name: str, default: float, help_text: str, kind: type = int) -> Option:
    # the smallest value: 1 for counts, a millisecond for seconds, a tiny rate
    low = 1 if kind is int else 0.001
    return Option(
        f"limits.{name}",
        "--" + name.replace("_", "-"),
        default,
        help_text,
        kind=kind,
        low=low,
        high=MAX_LIMIT,
    )


EXCHANGE_OPTIONS: tuple[Option, ...] = (
    Option(
        "exchange.listen",
        "--listen",
        f"127.0.0.1:{DEFAULT_PORT}",
        "ADDRESS:PORT to listen on (WebSocket, /metrics, /livez, /readyz); port 0: any free one",
    ),
    Option(
        "exchange.charter",
        "--charter",
        [],
        "signed charters to serve (files or folders of *.charter.json)",
        kind=list,
    ),
    Option("exchange.db", "--db", None, "the SQLite store (default: DIR/exchange.db)", kind=Path),
    Option(
        "exchange.insecure_loopback",
        "--insecure-loopback",
        False,
        "serve plain ws:// (tests, demo; loopback only)",
        kind=bool,
    ),
    _limit("max_envelope_size", _DEFAULTS.max_envelope_size, "largest envelope in bytes"),
    _limit("rate", _DEFAULTS.rate_per_s, "envelopes per second per terminal", float),
    _limit("burst", _DEFAULTS.burst, "envelopes a terminal may send at once"),
    _limit(
        "max_connections_per_source",
        _DEFAULTS.max_connections_per_source,
        "open connections per source address",
    ),
    _limit("max_connections", _DEFAULTS.max_connections, "open connections in total"),
    _limit("max_queue", _DEFAULTS.max_queue, "stored, unacknowledged envelopes per terminal"),
    _limit("window", _DEFAULTS.window_s, "store-and-forward window in seconds", float),
    _limit("auth_timeout", _DEFAULTS.auth_timeout_s, "seconds to authenticate a connection", float),
    _limit("heartbeat", _DEFAULTS.heartbeat_s, "WebSocket ping interval in seconds", float),
    *log_options("info"),
)


def default_config_path(directory: Path) -> Path:
    return directory / CONFIG_FILE


def load_exchange_config(path: Path) -> dict[str, Any]:
    """The values ``path`` sets (checked), keyed ``section.name``. Raises
    :class:`ConfigError` in one line naming the file."""
    raw = read_config_file(
        path,
        forbidden=0o022,
        exposes="change where the exchange listens and what it serves",
        mode="644",
        limit=MAX_CONFIG_SIZE,
    )
    try:
        text = raw.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = sections(EXCHANGE_OPTIONS)
    extra = sorted(set(doc) - known)
    if extra:
        raise ConfigError(f"{path}: unknown setting {extra[0]} (known: {', '.join(sorted(known))})")
    try:
        return parse_tables(doc, EXCHANGE_OPTIONS, base=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


#: the exchange's SQLite store in its folder, unless exchange.toml names another
DB_FILE = "exchange.db"


def store_path(directory: Path, settings: Settings | None = None) -> Path:
    """The exchange's store: ``exchange.db`` of ``settings`` (default: the folder's
    exchange.toml), else DIR/exchange.db. Every command that opens the store finds it so."""
    settings = settings if settings is not None else exchange_settings(directory, None, {})
    db = settings.value("exchange.db")
    return Path(db) if db is not None else directory / DB_FILE


def exchange_settings(
    directory: Path, config_path: Path | None, command_line: dict[str, Any]
) -> Settings:
    """The effective options of the exchange in ``directory``: ``command_line`` (None: not
    given) over ``config_path`` (default: DIR/exchange.toml if it exists) over defaults."""
    path = config_path if config_path is not None else default_config_path(directory)
    values: dict[str, Any] = {}
    label: str | None = None
    if config_path is not None or path.exists():
        values = load_exchange_config(path)
        label = str(path)
    return resolve(EXCHANGE_OPTIONS, values, label, command_line)
