"""What every CLI verb group shares: consoles, JSON output, error exit codes."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

#: exit codes: 0 success, 1 a check failed (verify said no), 2 bad input or refused data,
#: 3 an environment problem (exchange unreachable, ports), 130 interrupted
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
