"""``hotline terminal``: enrol terminals (and, later, run them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hotline.charter import Role
from hotline.cli.common import (
    ForceOption,
    JsonOption,
    LogFormat,
    LogLevel,
    UnitCommandOption,
    UnitOutOption,
    console,
    install_unit,
    print_json,
    print_reanchored,
    print_stopped,
)
from hotline.errors import UsageError
from hotline.keys import PASSPHRASE_CREDENTIAL, PASSPHRASE_ENV, read_passphrase
from hotline.provision import (
    ENROLMENTS_DIR,
    TERMINAL_KEY_FILE,
    TERMINAL_RECORD_FILE,
    enroll_terminal,
    load_terminal_record,
)
from hotline.terminal.options import TERMINAL_OPTIONS
from hotline.units import TERMINAL_UNIT

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
        Role,
        typer.Option("--role", help="What the terminal is for.", case_sensitive=False),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Terminal folder to create (default: beside the site folder)."),
    ] = None,
    display_name: Annotated[
        str | None,
        typer.Option("--display-name", help="Name shown to people (default: NAME)."),
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(
            "--language",
            help="Language tag shown with the role (an interpreter's: fr, en-GB...).",
        ),
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
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Give a terminal this site already enrolled a new identity key (lost, "
            "stolen or routine): needs --out with a new folder; the next charter version "
            "proposed from the site folder lists the new key instead of the old.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Enrol a terminal: create its identity key and an enrolment record signed by the site.

    Example: hotline terminal enroll us-principal --site ./washington --role principal
    """
    folder = enroll_terminal(
        site,
        name,
        role.value,
        out,
        read_passphrase(passphrase_file),
        read_passphrase(site_passphrase_file),
        display_name=display_name,
        language=language,
        replace=replace,
    )
    record = load_terminal_record(folder)
    if json_output:
        print_json(
            {
                "terminal_id": record.terminal_id,
                "site_id": record.site_id,
                "name": record.name,
                "role": str(record.role),
                "language": record.language,
                "dir": str(folder),
                "identity_key": record.identity_key.hex(),
                "fingerprint": record.identity_key.fingerprint,
                "replaced": replace,
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


_OPTIONS = {o.key: o for o in TERMINAL_OPTIONS}


def _opt(key: str, text: str | None = None) -> str:
    option = _OPTIONS[key]
    text = text or f"{option.help[0].upper()}{option.help[1:]}."
    return f"{text} File: {key} (default: {option.default!r})."


@app.command("install-unit")
def install_unit_command(
    out: UnitOutOption = None,
    command: UnitCommandOption = None,
    force: ForceOption = False,
) -> None:
    """The systemd unit hotline-terminal@.service, one instance per terminal id
    (Type=notify, Restart=on-failure, sandboxed, the passphrase through LoadCredential=):
    printed, or written to --out. Its comments say how to install it."""
    install_unit(TERMINAL_UNIT, out, command, force)


@app.command("install-charter")
def install_charter(
    charter: Annotated[Path, typer.Argument(help="The new, fully signed charter file.")],
    terminal: Annotated[
        Path, typer.Option("--terminal", "-t", help="The running terminal's folder.")
    ],
    reanchor: Annotated[
        bool,
        typer.Option(
            "--reanchor",
            help="Install a re-commissioned charter into a STOPPED terminal's store, even "
            "though it drops a site or changes an operator key without a handover (a lost or "
            "stolen operator key). Only after the voice check; never needed otherwise.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Give a running terminal a newer charter version: it keeps it (never going back),
    hands it to the exchange, which gives it to every terminal of the line online and
    closes the connections of terminals it removed or re-keyed, and applies it to a
    running call at once (members no longer listed with their key are dropped).

    With --reanchor the terminal must be stopped: the charter goes straight into its store
    (docs/operations.md, "lost or stolen operator key"); start it with that charter."""
    import asyncio  # noqa: PLC0415

    from hotline.charter import load_charter  # noqa: PLC0415
    from hotline.terminal.control import ControlClient  # noqa: PLC0415

    signed = load_charter(charter)
    signed.verify()
    if reanchor:
        _reanchor_terminal(signed, terminal, json_output)
        return

    async def send() -> Any:
        async with ControlClient.for_terminal(terminal) as control:
            return await control.request(
                "POST", "/charter", {"charter": signed.to_file_bytes().decode("utf-8")}
            )

    result = asyncio.run(send())
    if json_output:
        print_json(result)
        return
    if result["installed"]:
        console.print(
            f"line {escape(result['line_id'])}: version {result['version']} installed "
            f"(was {result['previous_version']})",
            soft_wrap=True,
        )
    else:
        console.print(
            f"line {escape(result['line_id'])}: version {result['version']} was already installed",
            soft_wrap=True,
        )


def _reanchor_terminal(signed: Any, terminal: Path, json_output: bool) -> None:
    import contextlib  # noqa: PLC0415

    from hotline.charter import CharterStore  # noqa: PLC0415
    from hotline.charter.by_hand import install_by_hand  # noqa: PLC0415

    if not (terminal / "state").is_dir():
        raise UsageError(f"{terminal}: not a terminal folder that has run (no state/ in it)")
    done = install_by_hand(
        f"{terminal}: the terminal",
        [terminal / "state" / "terminal.lock"],
        lambda: contextlib.closing(CharterStore(terminal / "state" / "charters.sqlite")),
        signed,
    )
    print_reanchored(done, json_output)


@app.command("run")
def run(  # noqa: PLR0917 (typer maps options to parameters)
    terminal: Annotated[
        Path, typer.Option("--terminal", "-t", help="The terminal's folder (identity key).")
    ],
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The site's local configuration (TURN credentials, run options), mode 0600. "
            "Default: TERMINAL/terminal.toml if it exists.",
        ),
    ] = None,
    charter: Annotated[
        Path | None, typer.Option("--charter", help=_opt("terminal.charter"))
    ] = None,
    exchange: Annotated[
        str | None,
        typer.Option(
            "--exchange",
            help=_opt(
                "terminal.exchange",
                "Exchange URL (wss://… pinned by the charter; ws:// only on loopback). "
                "Default: the charter's first exchange.",
            ),
        ),
    ] = None,
    auto_answer: Annotated[
        bool | None,
        typer.Option(
            "--auto-answer/--no-auto-answer",
            help=_opt("terminal.auto_answer", "Answer every call at once (unattended)."),
        ),
    ] = None,
    scheduled_checks: Annotated[
        bool | None,
        typer.Option(
            "--scheduled-checks/--no-scheduled-checks",
            help=_opt(
                "terminal.scheduled_checks",
                "Run readiness checks on the charter's schedule (the lower id of each pair "
                "calls). Check calls from others are answered either way.",
            ),
        ),
    ] = None,
    check_retention_days: Annotated[
        int | None,
        typer.Option(
            "--check-retention-days",
            help=_opt(
                "terminal.check_retention_days",
                "Keep individual readiness check results this many whole UTC days; older "
                "ones become signed daily summaries in the call log.",
            ),
        ),
    ] = None,
    check_retention_months: Annotated[
        int | None,
        typer.Option(
            "--check-retention-months",
            help=_opt(
                "terminal.check_retention_months",
                "Keep the daily summaries this many months; older ones become signed monthly "
                "summaries (kept for good).",
            ),
        ),
    ] = None,
    capture_audio: Annotated[
        Path | None,
        typer.Option(
            "--capture-audio",
            help=_opt(
                "terminal.capture_audio",
                "Write the audio this terminal plays out of each remote peer to a WAV file "
                "(48 kHz mono; the next peers or calls to FILE-2.wav, ...), for measuring "
                "speech quality. Refused unless --source is synthetic or file:, or the charter "
                "allows recording.",
            ),
        ),
    ] = None,
    alarm_hook: Annotated[
        str | None,
        typer.Option(
            "--alarm-hook",
            help=_opt(
                "terminal.alarm_hook",
                "A command run when a readiness check is red (the alarm as JSON in "
                "$HOTLINE_ALARM), e.g. a pager script.",
            ),
        ),
    ] = None,
    interfaces: Annotated[
        str | None,
        typer.Option(
            "--interfaces",
            metavar="loopback|all|IP[,IP…]",
            help=_opt(
                "terminal.interfaces",
                "Where ICE gathers host candidates: 'loopback' (127.0.0.1 only: tests and "
                "demos), 'all' (every interface but loopback, as aioice does), or a "
                "comma-separated list of this machine's IP addresses (e.g. 10.77.0.1).",
            ),
        ),
    ] = None,
    control_port: Annotated[
        int | None,
        typer.Option("--control-port", help=_opt("terminal.control_port")),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help=_opt(
                "terminal.source",
                "What this terminal sends: synthetic[:tone|speech|silence] (a test pattern "
                "with a frame id, and a tone with a chirp each second), file:PATH, or "
                "device[:CAMERA[,MIC]] (e.g. device:/dev/video0,default).",
            ),
        ),
    ] = None,
    width: Annotated[int | None, typer.Option(help=_opt("terminal.width"))] = None,
    height: Annotated[int | None, typer.Option(help=_opt("terminal.height"))] = None,
    fps: Annotated[int | None, typer.Option(help=_opt("terminal.fps"))] = None,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file",
            help=_opt(
                "terminal.passphrase_file",
                f"Passphrase of the identity key (else ${PASSPHRASE_ENV}, else the systemd "
                f"credential {PASSPHRASE_CREDENTIAL!r}).",
            ),
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None, typer.Option("--log-level", help=_opt("log.level"))
    ] = None,
    log_format: Annotated[
        LogFormat | None, typer.Option("--log-format", help=_opt("log.format"))
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log call events to stderr (--log-level info).")
    ] = False,
    ui: Annotated[
        str | None,
        typer.Option(
            "--ui",
            help=_opt(
                "terminal.ui",
                "Serve the terminal's screen (web UI) on [127.0.0.1:]PORT (0: any free "
                "port); a one-time login link is printed at start.",
            ),
        ),
    ] = None,
    media_engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help=_opt(
                "terminal.engine",
                "The media engine: 'aiortc' (in this process) or 'browser' (the open UI "
                "page does WebRTC and the frame crypto; needs --ui).",
            ),
        ),
    ] = None,
) -> None:
    """Run a terminal: keep its exchange connection, answer or place calls, keep its call log.

    Every option can also be set in TERMINAL/terminal.toml (the command line wins; `hotline
    config show --terminal TERMINAL` prints the result). The control API listens on
    127.0.0.1; its URL and token are written to TERMINAL/state/control.json (mode 0600) for
    `hotline call ...`.

    Example: hotline terminal run -t terminals/sochi --charter moscow-washington.charter.json
    """
    # aiortc loads only when a terminal really runs: the other commands stay quick
    from hotline.calllog.rollup import Retention  # noqa: PLC0415
    from hotline.media import engine  # noqa: PLC0415
    from hotline.terminal.main import (  # noqa: PLC0415
        build_config,
        ice_address_policy,
        terminal_settings,
    )
    from hotline.terminal.main import run as run_daemon  # noqa: PLC0415

    if verbose and log_level is None:
        log_level = LogLevel.info
    site, settings = terminal_settings(
        terminal,
        config_file,
        {
            "terminal.charter": charter,
            "terminal.exchange": exchange,
            "terminal.interfaces": interfaces,
            "terminal.control_port": control_port,
            "terminal.source": source,
            "terminal.width": width,
            "terminal.height": height,
            "terminal.fps": fps,
            "terminal.auto_answer": auto_answer,
            "terminal.scheduled_checks": scheduled_checks,
            "terminal.alarm_hook": alarm_hook,
            "terminal.check_retention_days": check_retention_days,
            "terminal.check_retention_months": check_retention_months,
            "terminal.capture_audio": capture_audio,
            "terminal.passphrase_file": passphrase_file,
            "terminal.ui": ui,
            "terminal.engine": media_engine,
            "log.level": log_level.value if log_level else None,
            "log.format": log_format.value if log_format else None,
        },
    )
    value = settings.value
    charter_path = value("terminal.charter")
    if charter_path is None:
        raise UsageError(
            "no charter: give --charter FILE or set terminal.charter in the terminal's "
            "terminal.toml"
        )
    engine.set_ice_addresses(ice_address_policy(value("terminal.interfaces")))  # fails here

    config = build_config(
        terminal_dir=terminal,
        charter_path=charter_path,
        exchange_url=value("terminal.exchange"),
        passphrase_file=value("terminal.passphrase_file"),
        auto_answer=value("terminal.auto_answer"),
        interfaces=value("terminal.interfaces"),
        width=value("terminal.width"),
        height=value("terminal.height"),
        fps=value("terminal.fps"),
        source=value("terminal.source"),
        site=site,
        capture_audio=value("terminal.capture_audio"),
        media_engine=value("terminal.engine"),
    )
    config = dataclasses.replace(
        config,
        scheduled_checks=value("terminal.scheduled_checks"),
        alarm_hook=value("terminal.alarm_hook"),
        retention=Retention(
            days=value("terminal.check_retention_days"),
            months=value("terminal.check_retention_months"),
        ),
    )
    run_daemon(
        config,
        value("terminal.control_port"),
        log_format=value("log.format"),
        log_level=value("log.level"),
        settings={r["key"]: r["value"] for r in settings.rows()},
        ui=value("terminal.ui"),
    )


@app.command("stop")
def stop(
    terminal: Annotated[Path, typer.Option("--terminal", "-t", help="The terminal's folder.")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for it to end.", min=0.1, max=600)
    ] = 30.0,
    json_output: JsonOption = False,
) -> None:
    """Stop a terminal started by hand with `terminal run` (under systemd: `systemctl stop`):
    it hangs up its call and disconnects, as on Ctrl-C. Returns once it has ended. Exit 0
    also when it was not running; 3 if it is still running after --timeout."""
    from hotline import pidlock  # noqa: PLC0415
    from hotline.backup import lock_files  # noqa: PLC0415

    if not (terminal / TERMINAL_RECORD_FILE).is_file():
        raise UsageError(f"{terminal}: not a terminal folder (no {TERMINAL_RECORD_FILE})")
    (lock,) = lock_files("terminal", terminal)
    pid = pidlock.stop(lock, timeout, what=f"{terminal}: the terminal")
    print_stopped("terminal", terminal, pid, json_output)


@app.command("wait")
def wait(
    terminal: Annotated[
        Path, typer.Option("--terminal", "-t", help="The terminal's folder (being started).")
    ],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait at most.", min=0.1, max=3600)
    ] = 60.0,
    json_output: JsonOption = False,
) -> None:
    """Wait until a terminal started with `terminal run` answers on its control API and is
    connected to its exchange (for scripts, and for rehearsals that start it with `&`).
    Exit 0 once it is; 3 (the environment) if it is not within --timeout."""
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from hotline.errors import ExchangeUnavailable, HotlineError  # noqa: PLC0415
    from hotline.terminal.control import ControlClient  # noqa: PLC0415

    async def poll() -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = "its control API does not answer"
        while time.monotonic() < deadline:
            try:
                async with ControlClient.for_terminal(terminal) as control:
                    status = await control.request("GET", "/status")
                exchange = status.get("exchange") or {}
                if exchange.get("connected"):
                    return dict(status)
                last = f"not connected to its exchange ({exchange.get('reason') or 'trying'})"
            except HotlineError as exc:
                last = str(exc)
            await asyncio.sleep(0.2)
        raise ExchangeUnavailable(f"{terminal}: not ready within {timeout:g} s: {last}")

    status = asyncio.run(poll())
    if json_output:
        print_json(
            {
                "terminal": status["terminal"],
                "line": status["line"],
                "charter_version": status["charter_version"],
                "exchange": status["exchange"]["url"],
            }
        )
        return
    console.print(
        f"terminal {escape(status['terminal'])} is running, connected to "
        f"{escape(status['exchange']['url'])} (line {escape(status['line'])} version "
        f"{status['charter_version']})",
        soft_wrap=True,
    )
