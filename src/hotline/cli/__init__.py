"""The ``hotline`` command: one typer sub-app per verb group, one error handler for all."""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback
from typing import Annotated, Any

import typer
from rich.markup import escape

from hotline import __version__
from hotline.cli.common import (
    EXIT_ERROR,
    EXIT_UNAVAILABLE,
    JsonOption,
    err_console,
    json_printed,
    print_json,
)
from hotline.errors import (
    AddressUnavailable,
    ExchangeUnavailable,
    HotlineError,
    StillRunning,
    TLSPinMismatch,
)

app = typer.Typer(
    name="hotline",
    help=(
        "Hotline: a secure, end-to-end encrypted video line between governments.\n\n"
        "Commission a line with `site init`, `terminal enroll`, `line propose/sign/verify`; "
        "run `hotline demo` to watch a real encrypted call on this machine."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

# (module under hotline.cli, command name); each module defines `app` (a group) or
# `command` (a single command function).
_GROUPS: list[tuple[str, str]] = [
    ("site", "site"),
    ("config", "config"),
    ("terminal", "terminal"),
    ("line", "line"),
    ("log", "log"),
    ("exchange", "exchange"),
    ("call", "call"),
    ("check", "check"),
    ("status", "status"),
    ("demo", "demo"),
    ("backup", "backup"),
    ("restore", "restore"),
]


def _register() -> None:
    for module_name, name in _GROUPS:
        module = importlib.import_module(f"hotline.cli.{module_name}")
        if hasattr(module, "app"):
            app.add_typer(module.app, name=name)
        else:
            app.command(name=name)(module.command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the Hotline version and exit.",
        ),
    ] = False,
) -> None:
    """Hotline: a secure, end-to-end encrypted video line between governments."""


@app.command("version")
def version(
    json_output: JsonOption = False,
) -> None:
    """Print the Hotline version."""
    if json_output:
        print_json({"version": __version__})
    else:
        typer.echo(__version__)


_register()

#: click's base exception (typer vendors click; this finds it whichever way it is shipped):
#: a bad option or argument, shown as one line like every other refusal
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def main() -> None:
    """Entry point: every error becomes one line on stderr and a non-zero exit.

    HotlineError is the expected case. An OSError that a command did not translate (a path
    that is a file, a name too long, no permission, a port in use) still names the file and
    the reason. Anything else is a bug: one line, exit 70, and the traceback only with
    HOTLINE_DEBUG=1.
    """
    try:
        code = app(standalone_mode=False, prog_name="hotline")
        if isinstance(code, int) and code:
            sys.exit(code)
    except _ClickException as exc:
        error: Any = exc  # click's exception API (typer ships click without type hints here)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `hotline line`: the group's help
            error.show()
            sys.exit(EXIT_ERROR)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _fail(str(error.format_message()).replace("\n", " ") + hint, EXIT_ERROR, "usage")
    except typer.Abort:
        _fail("aborted", 1, "aborted")
    except HotlineError as exc:
        environment = isinstance(
            exc, (ExchangeUnavailable, AddressUnavailable, TLSPinMismatch, StillRunning)
        )
        _fail(str(exc), EXIT_UNAVAILABLE if environment else EXIT_ERROR, exc.reason)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        busy = exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
        _fail(
            f"{where}{exc.strerror or exc}",
            EXIT_UNAVAILABLE if busy else EXIT_ERROR,
            "address_unavailable" if busy else "os_error",
        )
    except Exception as exc:
        if os.environ.get("HOTLINE_DEBUG"):
            traceback.print_exc()
        _fail(
            f"internal error ({type(exc).__name__}: {exc}); set HOTLINE_DEBUG=1 for details",
            70,
            "internal_error",
        )


def _fail(message: str, code: int, reason: str = "error") -> None:
    if "--json" in sys.argv[1:] and not json_printed():  # a script reading stdout gets a verdict
        print_json({"error": message, "reason": reason, "exit_code": code}, ok=False)
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)
