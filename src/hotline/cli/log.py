"""``hotline log``: read and verify a terminal's call log (see docs/call-log.md)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from hotline.calllog import EVENT_COSIGN, CallLog, LogEntry, log_path
from hotline.charter import load_charter
from hotline.cli.common import EXIT_CHECK_FAILED, JsonOption, console, print_json
from hotline.encoding import Value
from hotline.errors import EncodingError, LogIntegrityError, UsageError
from hotline.ids import TerminalId
from hotline.keys import PublicKey

app = typer.Typer(
    help=(
        "Read and verify a terminal's call log: the hash-chained, signed record of every "
        "call event, with the call summaries both terminals co-signed at hang-up.\n\n"
        "`log show --terminal DIR` lists entries; `log verify --log FILE --charter FILE "
        "--terminal-id ID` checks every hash, signature, link and co-signature and exits "
        "non-zero naming the first bad entry."
    ),
    no_args_is_help=True,
)

TerminalOpt = Annotated[
    Path | None,
    typer.Option(
        "--terminal",
        help="A terminal directory; its log is DIR/calllog.sqlite.",
        file_okay=False,
    ),
]
LogOpt = Annotated[
    Path | None, typer.Option("--log", help="The call log file itself (SQLite).", dir_okay=False)
]

_MAX_CELL = 96


def _log_file(terminal: Path | None, log_file: Path | None) -> Path:
    if (terminal is None) == (log_file is None):
        raise UsageError("give exactly one of --terminal DIR or --log FILE")
    path = log_path(terminal) if terminal is not None else log_file
    assert path is not None
    if not path.is_file():
        raise UsageError(f"{path}: no such call log file")
    return path


def _jsonable(value: Value) -> Any:
    """HCE value to JSON: bytes become lowercase hex strings."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _render(value: Value) -> str:
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 8 else value[:8].hex() + "…"
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return " ".join(f"{k}={_render(v)}" for k, v in sorted(value.items()))
    if value is None:
        return "-"
    return str(value)


def _payload(entry: LogEntry) -> Value:
    try:
        return entry.payload
    except EncodingError:
        return {"undecodable_payload": entry.payload_bytes}


def _cell(entry: LogEntry) -> str:
    payload = _payload(entry)
    if entry.event == EVENT_COSIGN and isinstance(payload, dict):
        summary = payload.get("summary")
        payload = {
            "signer_id": payload.get("signer_id"),
            "summary_sha256": hashlib.sha256(summary).digest()[:8]
            if isinstance(summary, bytes)
            else None,
        }
    text = _render(payload)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def _iso(entry: LogEntry) -> str:
    try:
        return datetime.fromtimestamp(entry.time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return str(entry.time_us)


@app.command("show")
def show(
    terminal: TerminalOpt = None,
    log_file: LogOpt = None,
    call: Annotated[str | None, typer.Option("--call", help="Only this call's entries.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the log's entries (all, or one call's). Shows; does not verify: use `log verify`."""
    path = _log_file(terminal, log_file)
    with CallLog.open(path) as log:
        entries = log.entries(call)
        terminal_id = log.terminal_id
    if as_json:
        print_json(
            {
                "terminal_id": terminal_id,
                "verified": False,
                "entries": [
                    {
                        "index": e.index,
                        "time": e.time,
                        "call_id": e.call_id,
                        "event": e.event,
                        "payload": _jsonable(_payload(e)),
                        "prev_hash": e.prev_hash.hex(),
                        "entry_hash": e.entry_hash.hex(),
                        "signature": e.signature.hex(),
                    }
                    for e in entries
                ],
            }
        )
        return
    table = Table(title=f"call log of {terminal_id}" + (f", call {call}" if call else ""))
    table.add_column("#", justify="right")
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("call")
    table.add_column("event")
    table.add_column("payload", overflow="fold")
    table.add_column("hash", no_wrap=True)
    for e in entries:
        table.add_row(
            str(e.index),
            _iso(e),
            Text(e.call_id),
            Text(e.event),
            Text(_cell(e)),
            e.entry_hash[:4].hex(),
        )
    console.print(table)
    console.print(f"{len(entries)} entries (not verified: run `hotline log verify`)")


def _charter_keys(
    charter_file: Path, terminal_id: TerminalId | str
) -> tuple[PublicKey, dict[str, PublicKey]]:
    """This terminal's key and every terminal's key, from a charter that verifies."""
    signed = load_charter(charter_file)
    signed.verify()
    charter = signed.charter
    own = charter.terminal(terminal_id).identity_key
    return own, {t.terminal_id: t.identity_key for t in charter.terminals}


@app.command("verify")
def verify(  # noqa: PLR0917 (typer options)
    log_file: LogOpt = None,
    terminal: TerminalOpt = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="The terminal's identity public key, 64 hex digits. Peer co-signatures are "
            "then checked only against the keys stored beside them.",
        ),
    ] = None,
    charter: Annotated[
        Path | None,
        typer.Option(
            "--charter",
            help="The line's signed charter: the terminal's key and every co-signer's key "
            "come from it (an auditor needs nothing else). Needs --terminal-id.",
            dir_okay=False,
        ),
    ] = None,
    terminal_id: Annotated[
        str | None,
        typer.Option("--terminal-id", help="Whose log this must be (required with --charter)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check every entry's hash, signature and link, the signed head (truncation), and every
    co-signed call summary. Exit 0 when intact; exit 1 naming the first bad entry."""
    path = _log_file(terminal, log_file)
    if (key is None) == (charter is None):
        raise UsageError("give exactly one of --key HEX or --charter FILE")
    peer_keys: dict[str, PublicKey] | None = None
    if charter is not None:
        if terminal_id is None:
            raise UsageError("--charter needs --terminal-id: whose log this is")
        public_key, peer_keys = _charter_keys(charter, terminal_id)
    else:
        assert key is not None
        try:
            public_key = PublicKey.from_hex(key.strip())
        except EncodingError as exc:
            raise UsageError(f"--key: {exc}") from exc
    try:
        with CallLog.open(path, terminal_id) as log:
            report = log.verify(public_key, peer_keys)
    except LogIntegrityError as exc:
        index = getattr(exc, "index", None)
        if as_json:
            print_json({"ok": False, "reason": exc.reason, "index": index, "error": str(exc)})
        else:
            where = "" if str(exc).startswith(str(path)) else f"{path}: "
            console.print(Text(f"NOT INTACT: {where}{exc}", style="bold red"), soft_wrap=True)
        raise typer.Exit(EXIT_CHECK_FAILED) from None
    if as_json:
        print_json({"log": str(path), **report.to_json()})
        return
    console.print(
        Text(
            f"intact: {path}: terminal {report.terminal_id}, {report.entries} entries, "
            f"{report.calls} calls, head {report.head_hash.hex()[:16]}",
            style="bold green",
        )
    )
    for c in report.cosignatures:
        how = "charter key" if c.identity_checked else "key stored in the log; identity unchecked"
        console.print(f"  call {c.call_id}: summary co-signed by {c.signer_id} ({how})")
