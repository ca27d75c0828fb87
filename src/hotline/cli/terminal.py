"""``hotline terminal``: enrol terminals (and, later, run them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hotline.charter import Role
from hotline.cli.common import console, print_json
from hotline.keys import PASSPHRASE_ENV, read_passphrase
from hotline.provision import (
    ENROLMENTS_DIR,
    TERMINAL_KEY_FILE,
    TERMINAL_RECORD_FILE,
    enroll_terminal,
    load_terminal_record,
)

app = typer.Typer(
    help=(
        "Terminals: the machines people call from. Each has its own identity key that never "
        "leaves its folder, and an enrolment record signed by its site's operator."
    ),
    no_args_is_help=True,
)


@app.command("enroll")
def enroll(  # noqa: PLR0917 (typer maps options to parameters)
    name: Annotated[
        str,
        typer.Argument(help="The terminal id, unique in the line: 1-63 of a-z 0-9 . _ -"),
    ],
    site: Annotated[Path, typer.Option("--site", help="The site folder whose operator enrols it.")],
    role: Annotated[
        str,
        typer.Option(
            "--role", help=f"What the terminal is for: {', '.join(r.value for r in Role)}."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Terminal folder to create (default: beside the site folder)."),
    ] = None,
    display_name: Annotated[
        str | None,
        typer.Option("--display-name", help="Name shown to people (default: NAME)."),
    ] = None,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file",
            help=f"Encrypt the terminal's new key with this passphrase (else ${PASSPHRASE_ENV}).",
        ),
    ] = None,
    site_passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--site-passphrase-file",
            help=f"Passphrase of the site's operator key (else ${PASSPHRASE_ENV}).",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Enrol a terminal: create its identity key and an enrolment record signed by the site.

    Example: hotline terminal enroll us-principal --site ./washington --role principal
    """
    folder = enroll_terminal(
        site,
        name,
        role.lower(),
        out,
        read_passphrase(passphrase_file),
        read_passphrase(site_passphrase_file),
        display_name=display_name,
    )
    record = load_terminal_record(folder)
    if json_output:
        print_json(
            {
                "terminal_id": record.terminal_id,
                "site_id": record.site_id,
                "name": record.name,
                "role": str(record.role),
                "dir": str(folder),
                "identity_key": record.identity_key.hex(),
                "fingerprint": record.identity_key.fingerprint,
            }
        )
        return
    console.print(
        f"Enrolled terminal [bold]{escape(record.terminal_id)}[/] ({record.role}) "
        f"of site {escape(record.site_id)} in {escape(str(folder))}"
    )
    console.print(f"  identity key fingerprint: [bold]{record.identity_key.fingerprint}[/]")
    console.print(
        f"  private key: {escape(str(folder / TERMINAL_KEY_FILE))} (mode 0600; never copy it)"
    )
    console.print(
        f"  public record: {escape(str(folder / TERMINAL_RECORD_FILE))} "
        f"(copy kept in {escape(str(site / ENROLMENTS_DIR))})"
    )


@app.command("run")
def run(  # noqa: PLR0917 (typer maps options to parameters)
    terminal: Annotated[
        Path, typer.Option("--terminal", "-t", help="The terminal's folder (identity key).")
    ],
    charter: Annotated[Path, typer.Option("--charter", help="The line's signed charter file.")],
    exchange: Annotated[
        str | None,
        typer.Option(
            "--exchange",
            help="Exchange URL (wss://… pinned by the charter; ws:// only on loopback). "
            "Default: the charter's first exchange.",
        ),
    ] = None,
    auto_answer: Annotated[
        bool,
        typer.Option("--auto-answer", help="Answer every call at once (unattended terminals)."),
    ] = False,
    interfaces: Annotated[
        str,
        typer.Option(
            "--interfaces",
            help="Where ICE gathers host candidates: 'loopback' (127.0.0.1 only, the default: "
            "tests and demos), 'all' (every interface but loopback, as aioice does), or a "
            "comma-separated list of this machine's IP addresses (e.g. 10.77.0.1).",
        ),
    ] = "loopback",
    control_port: Annotated[
        int, typer.Option("--control-port", help="Port of the local control API (0: any free).")
    ] = 0,
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="What this terminal sends: synthetic[:tone|speech|silence] (a test pattern "
            "with a frame id, and a tone with a chirp each second), file:PATH, or "
            "device[:CAMERA[,MIC]] (e.g. device:/dev/video0,default).",
        ),
    ] = "synthetic",
    width: Annotated[int, typer.Option(help="Video width of the synthetic source.")] = 640,
    height: Annotated[int, typer.Option(help="Video height of the synthetic source.")] = 360,
    fps: Annotated[int, typer.Option(help="Video frames per second.")] = 30,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file", help=f"Passphrase of the identity key (else ${PASSPHRASE_ENV})."
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The site's local configuration (TURN credentials), mode 0600. "
            "Default: TERMINAL/terminal.toml if it exists.",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log call events to stderr.")
    ] = False,
    ui: Annotated[
        str | None,
        typer.Option(
            "--ui",
            help="Serve the terminal's screen (web UI) on 127.0.0.1:PORT (0: any free port); "
            "a one-time login link is printed at start.",
        ),
    ] = None,
    media_engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="The media engine: 'aiortc' (in this process, the default) or 'browser' "
            "(the open UI page does WebRTC and the frame crypto; needs --ui).",
        ),
    ] = "aiortc",
) -> None:
    """Run a terminal: keep its exchange connection, answer or place calls, keep its call log.

    The control API listens on 127.0.0.1; its URL and token are written to
    TERMINAL/state/control.json (mode 0600) for `hotline call ...`.

    Example: hotline terminal run -t terminals/sochi --charter moscow-washington.charter.json
    """
    # aiortc loads only when a terminal really runs: the other commands stay quick
    from hotline.media import engine  # noqa: PLC0415
    from hotline.terminal.main import build_config, ice_address_policy  # noqa: PLC0415
    from hotline.terminal.main import run as run_daemon  # noqa: PLC0415

    engine.set_ice_addresses(ice_address_policy(interfaces))  # a bad address fails here

    config = build_config(
        terminal_dir=terminal,
        charter_path=charter,
        exchange_url=exchange,
        passphrase_file=passphrase_file,
        auto_answer=auto_answer,
        interfaces=interfaces,
        width=width,
        height=height,
        fps=fps,
        source=source,
        config_path=config_file,
        media_engine=media_engine,
    )
    run_daemon(config, control_port, verbose, ui)
