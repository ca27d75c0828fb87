"""``hotline config show``: the effective configuration of a terminal or an exchange."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hotline.cli.common import JsonOption, print_json
from hotline.errors import UsageError
from hotline.settings import Settings

app = typer.Typer(
    help=(
        "Site-local configuration: TERMINAL/terminal.toml and EXCHANGE/exchange.toml. Every "
        "setting there is also a command-line option (the command line wins)."
    ),
    no_args_is_help=True,
)


@app.command("show")
def show(
    terminal: Annotated[
        Path | None, typer.Option("--terminal", "-t", help="A terminal's folder.")
    ] = None,
    exchange: Annotated[Path | None, typer.Option("--exchange", help="An exchange's folder.")] = (
        None
    ),
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="The file to read instead of the folder's default one."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Print each setting's value and where it came from (default, the file, or the command
    line). Secrets (TURN passwords and shared secrets) are never printed; a bad file is
    refused in one line, as `terminal run` / `exchange serve` would refuse it."""
    if (terminal is None) == (exchange is None):
        raise UsageError("give --terminal DIR or --exchange DIR")
    turn: list[dict[str, Any]] = []
    if terminal is not None:
        from hotline.terminal.main import terminal_settings  # noqa: PLC0415

        site, settings = terminal_settings(terminal, config_file, {})
        turn = [
            {"url": e.url, "credentials": type(e.credentials).__name__.removesuffix("Credentials")}
            for e in site.turn
        ]
        kind, folder, file = "terminal", terminal, site.path
    else:
        assert exchange is not None
        from hotline.exchange.config import default_config_path, exchange_settings  # noqa: PLC0415

        settings = exchange_settings(exchange, config_file, {})
        kind, folder = "exchange", exchange
        candidate = config_file or default_config_path(exchange)
        file = candidate if candidate.exists() else None
    if json_output:
        print_json(
            {
                "schema": 1,
                "ok": True,
                "kind": kind,
                "dir": str(folder),
                "file": str(file) if file else None,
                "settings": {
                    r["key"]: {"value": r["value"], "source": r["source"]} for r in settings.rows()
                },
                **({"turn_relays": turn} if kind == "terminal" else {}),
            }
        )
        return
    _print_text(kind, folder, file, settings, turn)


def _print_text(
    kind: str, folder: Path, file: Path | None, settings: Settings, turn: list[dict[str, Any]]
) -> None:
    typer.echo(f"{kind} {folder}")
    typer.echo(f"file: {file if file else '(none: defaults only)'}")
    rows = settings.rows()
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        shown = json.dumps(r["value"])
        typer.echo(f"  {r['key']:<{width}} = {shown}  ({r['source']})")
    if kind == "terminal":
        typer.echo(f"  turn relays with credentials: {len(turn)}")
        for relay in turn:
            typer.echo(f"    {relay['url']} ({relay['credentials']})")
