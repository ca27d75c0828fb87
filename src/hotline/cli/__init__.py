"""The ``hotline`` command: one typer sub-app per verb group, one error handler for all."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

from hotline import __version__
from hotline.cli.common import EXIT_ERROR, EXIT_UNAVAILABLE, err_console
from hotline.errors import ExchangeUnavailable, HotlineError

app = typer.Typer(
    name="hotline",
    help=(
        "Hotline: a secure, end-to-end encrypted video line between governments.\n\n"
        "Commission a line with `site init`, `terminal enroll`, `line propose/sign/verify`; "
        "run `hotline demo` to watch a real encrypted call on this machine."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module under hotline.cli, command name); each module defines `app` (a group) or
# `command` (a single command function).
_GROUPS: list[tuple[str, str]] = [
    ("site", "site"),
    ("terminal", "terminal"),
    ("line", "line"),
    ("log", "log"),
    ("exchange", "exchange"),
    ("call", "call"),
    ("demo", "demo"),
]


def _register() -> None:
    for module_name, name in _GROUPS:
        module = importlib.import_module(f"hotline.cli.{module_name}")
        if hasattr(module, "app"):
            app.add_typer(module.app, name=name)
        else:
            app.command(name=name)(module.command)


@app.callback()
def _root() -> None:
    """Hotline: a secure, end-to-end encrypted video line between governments."""


@app.command("version")
def version() -> None:
    """Print the Hotline version."""
    typer.echo(__version__)


_register()


def main() -> None:
    """Entry point: every HotlineError becomes one line on stderr and a non-zero exit."""
    try:
        app()
    except HotlineError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        sys.exit(EXIT_UNAVAILABLE if isinstance(exc, ExchangeUnavailable) else EXIT_ERROR)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
