"""``hotline restore``: put a backup (``hotline backup``) back, never rolling a charter back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hotline.backup import restore
from hotline.cli.backup import outside_store, pick
from hotline.cli.common import JsonOption, console, print_json


def command(  # noqa: PLR0917 (typer maps options to parameters)
    backup: Annotated[Path, typer.Argument(help="The backup folder (from `hotline backup`).")],
    terminal: Annotated[
        Path | None, typer.Option("--terminal", "-t", help="Restore into this terminal folder.")
    ] = None,
    exchange: Annotated[
        Path | None, typer.Option("--exchange", help="Restore into this exchange folder.")
    ] = None,
    site: Annotated[Path | None, typer.Option("--site", help="Restore into this site folder.")] = (
        None
    ),
    keep_newer_charters: Annotated[
        bool,
        typer.Option(
            "--keep-newer-charters",
            help="When the target holds a newer charter than the backup, restore the rest "
            "and keep the newer charter (otherwise the restore is refused).",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Restore a backup into a (stopped) terminal, exchange or site folder.

    Refused while the target runs, when a file of the backup was changed since it was taken,
    and when the target's charter store holds a newer charter version of a line than the
    backup: a restore never rolls a charter back."""
    kind, folder = pick(terminal, exchange, site)
    manifest, kept = restore(
        backup,
        kind,
        folder,
        keep_newer_charters=keep_newer_charters,
        # where the target keeps its store: its own exchange.toml, else the backup's
        store=outside_store(kind, folder if (folder / "exchange.toml").is_file() else backup),
    )
    if json_output:
        print_json(
            {
                "schema": 1,
                "ok": True,
                "kind": kind,
                "target": str(folder),
                "taken_at": manifest.taken_at,
                "files": len(manifest.files),
                "kept_newer_charters": [
                    {"line_id": r.line_id, "version": r.held, "backup_version": r.in_backup}
                    for r in kept
                ],
            }
        )
        return
    console.print(
        f"restored {len(manifest.files)} files of the {kind} backup taken {manifest.taken_at} "
        f"into {folder}", markup=False, soft_wrap=True,
    )  # fmt: skip
    for r in kept:
        console.print(
            f"  kept charter version {r.held} of line {r.line_id} (the backup had "
            f"{r.in_backup or 'none'})", markup=False, soft_wrap=True,
        )  # fmt: skip
