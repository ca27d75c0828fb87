"""What every CLI verb group shares: consoles, JSON output, error exit codes."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from hotline.errors import UsageError

if TYPE_CHECKING:
    from hotline.charter.by_hand import Installed

# Piped or redirected output is never hard-wrapped (a security code or a fingerprint split
# across two lines cannot be compared or parsed); on a terminal rich wraps to its width.
console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
err_console = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())

#: ``schema`` of every JSON document the CLI prints (``--json``); raised when a field is
#: removed or changes meaning, not when one is added (docs/operations.md, "Scripts")
JSON_SCHEMA_VERSION = 1
_json_printed = False

#: exit codes: 0 success, 1 a check failed (verify said no), 2 bad input or refused data
#: (including a folder already in use by a running process), 3 an environment problem
#: (exchange unreachable, a port in use or an address not of this machine), 70 a bug,
#: 130 interrupted
EXIT_CHECK_FAILED = 1
EXIT_ERROR = 2
EXIT_UNAVAILABLE = 3


#: ``--json`` of every command that reports something (its document: :func:`print_json`)
JsonOption = Annotated[
    bool, typer.Option("--json", help="Machine-readable output: one JSON object on stdout.")
]
#: ``--terminal`` of the commands that talk to a running terminal through its control API
TerminalOption = Annotated[
    Path, typer.Option("--terminal", "-t", help="The running terminal's folder.", exists=True)
]
#: the options of ``install-unit`` (exchange and terminal)
UnitOutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Write the unit here (a file, or a folder such as /etc/systemd/system) "
        "instead of printing it.",
    ),
]
UnitCommandOption = Annotated[
    str | None,
    typer.Option(
        "--hotline",
        help="The command systemd runs (default: this installation's hotline, absolute).",
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an existing file.")]


def print_json(data: dict[str, Any], *, ok: bool = True) -> None:
    """Machine-readable output on stdout: one JSON object, keys sorted, with ``schema``
    (:data:`JSON_SCHEMA_VERSION`) and ``ok`` (true when the command did what was asked;
    a field of ``data`` named ``ok`` wins)."""
    global _json_printed  # noqa: PLW0603 (one document per process)
    doc = {"schema": JSON_SCHEMA_VERSION, "ok": ok, **data}
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
    _json_printed = True


def print_reanchored(done: Installed, json_output: bool) -> None:
    """What `install-charter --reanchor` did (the running path's keys, and ``reanchored``)."""
    if json_output:
        print_json(
            {
                "installed": True,
                "reanchored": True,
                "line_id": done.line_id,
                "version": done.version,
                "previous_version": done.previous_version,
            }
        )
        return
    was = done.previous_version if done.previous_version is not None else "none"
    console.print(
        f"line {escape(done.line_id)}: version {done.version} re-anchored by hand (was {was}); "
        "start it with this charter",
        soft_wrap=True,
    )


def print_stopped(kind: str, folder: Path, pid: int | None, json_output: bool) -> None:
    """What `terminal stop` / `exchange stop` did."""
    if json_output:
        print_json(
            {"kind": kind, "folder": str(folder), "was_running": pid is not None, "pid": pid}
        )
        return
    if pid is None:
        console.print(f"the {kind} in {escape(str(folder))} was not running", soft_wrap=True)
    else:
        console.print(f"the {kind} in {escape(str(folder))} stopped (pid {pid})", soft_wrap=True)


def json_printed() -> bool:
    """Whether this process already printed its JSON document (errors then print none)."""
    return _json_printed


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
