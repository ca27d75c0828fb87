"""``hotline backup``: a consistent copy of a terminal, exchange or site folder, taken while
it runs (SQLite's online backup; see :mod:`hotline.backup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hotline.backup import take_backup
from hotline.cli.common import JsonOption, console, print_json
from hotline.errors import UsageError


def pick(terminal: Path | None, exchange: Path | None, site: Path | None) -> tuple[str, Path]:
    given = [(k, p) for k, p in (("terminal", terminal), ("exchange", exchange), ("site", site))
             if p is not None]  # fmt: skip
    if len(given) != 1:
        raise UsageError("give exactly one of --terminal DIR, --exchange DIR, --site DIR")
    return given[0]


def outside_store(kind: str, folder: Path) -> Path | None:
    """An exchange's store when its exchange.toml keeps it outside the exchange's folder."""
    if kind != "exchange":
        return None
    from hotline.exchange.config import store_path  # noqa: PLC0415

    db = store_path(folder)
    return None if db.resolve().parent == folder.resolve() else db


def command(
    out: Annotated[Path, typer.Option("--out", help="The backup folder to create (new).")],
    terminal: Annotated[
        Path | None, typer.Option("--terminal", "-t", help="A terminal's folder.")
    ] = None,
    exchange: Annotated[Path | None, typer.Option("--exchange", help="An exchange's folder.")] = (
        None
    ),
    site: Annotated[Path | None, typer.Option("--site", help="A site's folder.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Back up a terminal, exchange or site folder into a new folder, while it runs.

    Databases are copied with SQLite's online backup (what is still in the write-ahead log
    is included; a plain `cp` would lose it), other files as they are (keys stay 0600).
    BACKUP.json lists every file with its SHA-256 and the charter version of every line.
    Keep backups as safely as the keys they hold."""
    kind, folder = pick(terminal, exchange, site)
    manifest = take_backup(kind, folder, out, outside_store=outside_store(kind, folder))
    if json_output:
        print_json({"schema": 1, "ok": True, "backup": str(out), **manifest.to_json()})
        return
    console.print(
        f"backed up {kind} {folder} into {out}: {len(manifest.files)} files", markup=False,
        soft_wrap=True,
    )  # fmt: skip
    for database, versions in manifest.charters.items():
        for line_id, version in sorted(versions.items()):
            console.print(
                f"  {database}: line {line_id} charter version {version}", markup=False,
                soft_wrap=True,
            )  # fmt: skip
