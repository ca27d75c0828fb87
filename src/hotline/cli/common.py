"""What every CLI verb group shares: consoles, JSON output, error exit codes."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console

from hotline.errors import UsageError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

#: exit codes: 0 success, 1 a check failed (verify said no), 2 bad input or refused data
#: (including a folder already in use by a running process), 3 an environment problem
#: (exchange unreachable, a port in use or an address not of this machine), 70 a bug,
#: 130 interrupted
EXIT_CHECK_FAILED = 1
EXIT_ERROR = 2
EXIT_UNAVAILABLE = 3


def print_json(data: Any) -> None:
    """Machine-readable output on stdout: one JSON document, keys sorted."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


class LogFormat(StrEnum):
    """``--log-format``: a readable line, or one JSON object per line."""

    text = "text"
    json = "json"


class LogLevel(StrEnum):
    """``--log-level``."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def install_unit(name: str, out: Path | None, command: str | None, force: bool) -> None:
    """Print the systemd unit ``name`` on stdout, or write it to ``out`` (mode 0644)."""
    from hotline.units import render  # noqa: PLC0415

    text = render(name, command)
    if out is None:
        sys.stdout.write(text)
        return
    if out.is_dir():
        out = out / name
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists; give --force to replace it")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(out)
    err_console.print(f"wrote {out}; then: systemctl daemon-reload", markup=False, soft_wrap=True)
