"""``hotline site``: create a site folder with the operator's key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hotline.cli.common import JsonOption, console, print_json
from hotline.keys import PASSPHRASE_ENV, read_passphrase
from hotline.provision import SITE_KEY_FILE, SITE_RECORD_FILE, init_site, rotate_operator_key

app = typer.Typer(
    help=(
        "Sites: one per side of a line. A site folder holds the operator's private key "
        f"({SITE_KEY_FILE}, mode 0600) and the public site record ({SITE_RECORD_FILE})."
    ),
    no_args_is_help=True,
)

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help=(
            "Encrypt the new private key with the passphrase on the first line of this file. "
            f"Without it, ${PASSPHRASE_ENV} is used if set; otherwise the key is stored "
            "unencrypted (still mode 0600)."
        ),
    ),
]


@app.command("init")
def init(
    name: Annotated[
        str,
        typer.Argument(help="The site id, e.g. 'washington': 1-63 of a-z 0-9 . _ -"),
    ],
    dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Folder to create (default: ./NAME). Must be new or empty."),
    ] = None,
    display_name: Annotated[
        str | None,
        typer.Option("--display-name", help="Name shown to people (default: NAME)."),
    ] = None,
    passphrase_file: PassphraseFile = None,
    json_output: JsonOption = False,
) -> None:
    """Create a site: a new operator key and the public site record.

    Example: hotline site init washington --dir /srv/hotline/washington
    """
    folder = dir if dir is not None else Path(name)
    passphrase = read_passphrase(passphrase_file)
    record = init_site(folder, name, passphrase, display_name=display_name)
    if json_output:
        print_json(
            {
                "site_id": record.site_id,
                "name": record.name,
                "dir": str(folder),
                "operator_key": record.operator_key.hex(),
                "fingerprint": record.operator_key.fingerprint,
                "encrypted": passphrase is not None,
            }
        )
        return
    console.print(f"Created site [bold]{escape(record.site_id)}[/] in {escape(str(folder))}")
    console.print(f"  operator key fingerprint: [bold]{record.operator_key.fingerprint}[/]")
    console.print(
        f"  private key: {escape(str(folder / SITE_KEY_FILE))} (mode 0600, "
        + ("encrypted" if passphrase else "not encrypted")
        + ")"
    )
    console.print(
        f"  public record: {escape(str(folder / SITE_RECORD_FILE))} (give it to the other sides)"
    )
    console.print(
        f"Next: hotline terminal enroll NAME --site {escape(str(folder))} --role principal"
    )


@app.command("rotate-key")
def rotate_key(
    site: Annotated[Path, typer.Option("--site", help="The site folder (holds operator.key).")],
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file",
            help=f"Passphrase of the current operator key (else ${PASSPHRASE_ENV}).",
        ),
    ] = None,
    new_passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--new-passphrase-file",
            help="Encrypt the new key (and the kept previous one) with this passphrase "
            "(default: the current one).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Give the site a new operator key. The next charter version proposed from this folder
    lists it; `line sign` also signs that version's handover with the previous key (kept as
    operator.previous.key), without which no terminal or exchange accepts a changed key.

    Example: hotline site rotate-key --site ./washington, then line propose --version N+1
    """
    passphrase = read_passphrase(passphrase_file)
    new_passphrase = read_passphrase(new_passphrase_file) if new_passphrase_file else None
    old, new = rotate_operator_key(site, passphrase, new_passphrase)
    if json_output:
        print_json(
            {
                "site_id": new.site_id,
                "dir": str(site),
                "operator_key": new.operator_key.hex(),
                "fingerprint": new.operator_key.fingerprint,
                "previous_fingerprint": old.operator_key.fingerprint,
            }
        )
        return
    console.print(f"Site [bold]{escape(new.site_id)}[/] has a new operator key")
    console.print(f"  new operator key fingerprint: [bold]{new.operator_key.fingerprint}[/]")
    console.print(f"  previous key (kept for the handover): {old.operator_key.fingerprint}")
    console.print(
        f"  {escape(str(site / SITE_RECORD_FILE))} and the enrolments in it are signed with "
        "the new key; give them to the other sides again"
    )
    console.print(
        "Next: hotline line propose ... --version N+1, then every site signs it (read the "
        "new fingerprint aloud)"
    )
