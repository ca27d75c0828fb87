"""Site-local settings: one table of options, three sources, one answer per option.

A terminal (``terminal.toml``) and an exchange (``exchange.toml``) each keep what is local to
their site in a TOML file; every option there can also be given on the command line, and the
command line wins over the file, which wins over the built-in default. :func:`resolve` merges
the three and remembers where each value came from, for ``hotline config show`` and for the
start line in the logs. Pure: the caller reads the file (``tomllib``) and passes the tables.

Each option's key is ``section.name`` as written in the file (``[log]`` / ``format = "json"``);
its command-line flag is named beside it. Checking is strict: an unknown key, a wrong type
or a value out of range is refused with one line naming the file (or the flag) and the key.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotline.errors import ConfigError, UsageError

#: where a value came from when neither the file nor the command line gave it
DEFAULT = "default"
#: where a value came from when the command line gave it
COMMAND_LINE = "command line"

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Option:
    """One setting: its key in the file, its flag, its type and its allowed values."""

    key: str
    flag: str
    default: Any
    help: str
    #: str, int, float, bool, Path, or list (a list of paths)
    kind: type = str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    #: never printed by ``config show`` (a secret)
    secret: bool = False

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]


@dataclass(frozen=True)
class Setting:
    value: Any
    #: :data:`DEFAULT`, :data:`COMMAND_LINE`, or the path of the file that set it
    source: str


class Settings(Mapping[str, Setting]):
    """The effective value of every option, and where it came from."""

    def __init__(self, options: Sequence[Option], values: dict[str, Setting]) -> None:
        self.options = tuple(options)
        self._values = values

    def __getitem__(self, key: str) -> Setting:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def value(self, key: str) -> Any:
        return self._values[key].value

    def rows(self) -> list[dict[str, Any]]:
        """``[{"key", "value", "source"}]`` in option order, secrets redacted, paths as text."""
        out: list[dict[str, Any]] = []
        for option in self.options:
            setting = self._values[option.key]
            value = setting.value
            if option.secret and value is not None:
                value = "(set)"
            out.append({"key": option.key, "value": _plain(value), "source": setting.source})
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def sections(options: Sequence[Option]) -> set[str]:
    return {o.section for o in options}


def parse_tables(
    doc: Mapping[str, Any], options: Sequence[Option], *, base: Path | None = None
) -> dict[str, Any]:
    """The values set in ``doc`` (a parsed TOML document) for ``options``' sections, checked.

    Other top-level tables are the caller's (it refuses what nobody knows). Relative paths
    are taken from ``base`` (the file's folder). Raises :class:`ConfigError` (without the
    file name: the caller adds it)."""
    by_section: dict[str, dict[str, Option]] = {}
    for option in options:
        by_section.setdefault(option.section, {})[option.name] = option
    values: dict[str, Any] = {}
    for section, known in by_section.items():
        table = doc.get(section)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{section} must be a table ([{section}])")
        extra = sorted(set(table) - set(known))
        if extra:
            raise ConfigError(
                f"unknown setting {section}.{extra[0]} (known: {', '.join(sorted(known))})"
            )
        for name, raw in table.items():
            option = known[name]
            values[option.key] = check(option, raw, option.key, base=base, from_file=True)
    return values


def check(
    option: Option, value: Any, where: str, *, base: Path | None = None, from_file: bool = False
) -> Any:
    """``value`` for ``option`` in its type and range, else :class:`ConfigError` (from a
    file) or :class:`UsageError` (from the command line) starting with ``where``."""
    error: type[UsageError] = ConfigError if from_file else UsageError
    shown = f"{where} = {value!r}" if from_file else f"{where} {value!r}"
    kind = option.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise error(f"{shown}: expected true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{shown}: expected a number")
        if kind is int and not isinstance(value, int):
            raise error(f"{shown}: expected a whole number")
        if not math.isfinite(value):
            raise error(f"{shown}: expected a finite number")
        low, high = option.low, option.high
        if (low is not None and value < low) or (high is not None and value > high):
            raise error(f"{shown}: expected a number from {low:g} to {high:g}")
        return kind(value)
    if kind is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise error(f"{shown}: expected a path")
        path = Path(value)
        return base / path if base is not None and not path.is_absolute() else path
    if kind is list:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, Path)) and str(v) for v in items):
            raise error(f"{shown}: expected a list of paths")
        return [
            base / Path(v) if base is not None and not Path(v).is_absolute() else Path(v)
            for v in items
        ]
    if not isinstance(value, str) or not value.isprintable():
        raise error(f"{shown}: expected a string")
    if option.choices:
        value = value.lower()
        if value not in option.choices:
            raise error(f"{shown}: expected one of {', '.join(option.choices)}")
    return value


def resolve(
    options: Sequence[Option],
    file_values: Mapping[str, Any],
    file_label: str | None,
    command_line: Mapping[str, Any],
) -> Settings:
    """Merge: the command line (values that are not None) over the file over the defaults.
    Command-line values are checked here (``file_values`` were checked when parsed)."""
    values: dict[str, Setting] = {}
    for option in options:
        given = command_line.get(option.key)
        if given is not None and not (option.kind is list and not given):
            values[option.key] = Setting(check(option, given, option.flag), COMMAND_LINE)
        elif option.key in file_values:
            values[option.key] = Setting(file_values[option.key], file_label or "file")
        else:
            values[option.key] = Setting(option.default, DEFAULT)
    return Settings(options, values)


def log_options(default_level: str) -> tuple[Option, ...]:
    """The two logging options every long-running command has."""
    return (
        Option(
            "log.format",
            "--log-format",
            "text",
            "text (one readable line per event) or json (one JSON object per line)",
            choices=LOG_FORMATS,
        ),
        Option(
            "log.level",
            "--log-level",
            default_level,
            "debug, info, warning or error (logs go to stderr)",
            choices=LOG_LEVELS,
        ),
    )


def read_config_file(path: Path, *, forbidden: int, exposes: str, mode: str, limit: int) -> bytes:
    """The bytes of a site's configuration file, refused in one line (:class:`ConfigError`,
    naming the file) when it is missing, not a regular file, larger than ``limit``, or has
    any of the ``forbidden`` permission bits (``exposes`` says what that would let others
    do; ``mode`` is the ``chmod`` to suggest)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file")
    if st.st_mode & forbidden:
        raise ConfigError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} let others {exposes}; "
            f"run: chmod {mode} {path}"
        )
    if st.st_size > limit:
        raise ConfigError(f"{path}: {st.st_size} bytes is over the {limit}-byte limit")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
