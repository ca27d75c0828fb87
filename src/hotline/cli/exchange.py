"""``hotline exchange``: create an exchange's TLS identity and run the exchange."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import resource
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from hotline import __version__, pidlock, sdnotify
from hotline.charter import SignedCharter, load_charter
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
)
from hotline.errors import UsageError
from hotline.exchange import tls
from hotline.exchange.config import (
    CONFIG_FILE,
    DB_FILE,
    DEFAULT_PORT,
    EXCHANGE_OPTIONS,
    exchange_settings,
    store_path,
)
from hotline.exchange.routing import Limits
from hotline.exchange.store import read_events
from hotline.logs import lifecycle, rfc3339, setup_logging
from hotline.signals import until_terminated
from hotline.units import EXCHANGE_UNIT

app = typer.Typer(
    help=(
        "The exchange: the untrusted rendezvous server through which a line's terminals find "
        "each other. Run `init` once to create its TLS certificate (its fingerprint goes into "
        "the charter, where terminals pin it), then `serve` with the line's charter(s)."
    ),
    no_args_is_help=True,
)


#: the exchange's SQLite store, for the commands that open it (see ``store_path``)
StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--db", help=f"The exchange's store (default: exchange.toml's, or DIR/{DB_FILE})."
    ),
]
DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        help="The exchange's folder: TLS certificate and key, and by default its database.",
    ),
]


@app.command("init")
def init(
    directory: DirOption,
    json_output: JsonOption = False,
) -> None:
    """Create the exchange's folder with a new self-signed TLS certificate and key (0600).

    Prints the certificate's fingerprint, sha256:<hex of the DER certificate>: give it to
    `hotline line propose --exchange wss://HOST:PORT#sha256:...` so that terminals pin it."""
    fingerprint = tls.create_certificate(directory)
    if json_output:
        print_json({"dir": str(directory), "tls_fingerprint": fingerprint})
    else:
        console.print(
            f"created {directory / tls.CERT_FILE} and {directory / tls.KEY_FILE}", markup=False
        )
        console.print(f"TLS fingerprint: {fingerprint}", soft_wrap=True)


@app.command("install-unit")
def install_unit_command(
    out: UnitOutOption = None,
    command: UnitCommandOption = None,
    force: ForceOption = False,
) -> None:
    """The systemd unit hotline-exchange.service (Type=notify, Restart=on-failure,
    sandboxed): printed, or written to --out. Its comments say how to install it."""
    install_unit(EXCHANGE_UNIT, out, command, force)


@app.command("fingerprint")
def fingerprint(
    directory: DirOption,
    json_output: JsonOption = False,
) -> None:
    """Print the fingerprint of the exchange's TLS certificate (sha256:<hex of the DER
    certificate>, as `line propose --exchange URL#sha256:...` pins it)."""
    value = tls.load_fingerprint(directory)
    if json_output:
        print_json({"dir": str(directory), "tls_fingerprint": value})
    else:
        console.print(value, soft_wrap=True)


@app.command("install-charter")
def install_charter(
    charter: Annotated[Path, typer.Argument(help="The re-commissioned, fully signed charter.")],
    directory: DirOption,
    db: StoreOption = None,
    reanchor: Annotated[
        bool,
        typer.Option(
            "--reanchor",
            help="Required: install into the STOPPED exchange's store even though the charter "
            "drops a site or changes an operator key without a handover (a lost or stolen "
            "operator key). Only after the voice check.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Re-anchor a stopped exchange on a re-commissioned charter (docs/operations.md, "lost
    or stolen operator key"). A newer version that keeps every site's key, or hands it over,
    needs none of this: `serve --charter FILE` or any terminal's `install-charter` brings it."""
    import contextlib  # noqa: PLC0415
    from collections.abc import Iterator  # noqa: PLC0415

    from hotline.charter import CharterStore  # noqa: PLC0415
    from hotline.charter.by_hand import install_by_hand  # noqa: PLC0415
    from hotline.cli.common import print_reanchored  # noqa: PLC0415
    from hotline.exchange.store import ExchangeStore  # noqa: PLC0415

    if not reanchor:
        raise UsageError(
            "exchange install-charter is for re-anchoring a stopped exchange: give --reanchor "
            "(a running exchange takes a newer version from `serve --charter` or from any "
            "terminal's `install-charter`)"
        )
    signed = load_charter(charter)
    db_path = db or store_path(directory)
    if not db_path.is_file():
        raise UsageError(f"{db_path}: no exchange store here (give --dir, or --db)")

    @contextlib.contextmanager
    def charters() -> Iterator[CharterStore]:
        store = ExchangeStore(db_path)
        try:
            yield store.charters
        finally:
            store.close()

    done = install_by_hand(f"{db_path}: the exchange", [store_lock_path(db_path)], charters, signed)
    print_reanchored(done, json_output)


@app.command("stop")
def stop(
    directory: DirOption,
    db: StoreOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for it to end.", min=0.1, max=600)
    ] = 30.0,
    json_output: JsonOption = False,
) -> None:
    """Stop an exchange started by hand with `exchange serve` (under systemd: `systemctl
    stop`): it closes its connections and its store, as on Ctrl-C. Returns once it has
    ended. Exit 0 also when it was not running; 3 if it is still running after --timeout."""
    from hotline.cli.common import print_stopped  # noqa: PLC0415

    if not any((directory / name).exists() for name in (tls.CERT_FILE, DB_FILE, CONFIG_FILE)):
        raise UsageError(f"{directory}: not an exchange folder (no {tls.CERT_FILE}, {DB_FILE})")
    db_path = db or store_path(directory)
    pid = pidlock.stop(store_lock_path(Path(db_path)), timeout, what=f"{directory}: the exchange")
    print_stopped("exchange", directory, pid, json_output)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> int:
    """``--since``: a duration back from now (``90s``, ``15m``, ``2h``, ``7d``) or an RFC 3339
    time (``2026-12-01T20:00:00Z``); milliseconds since the epoch."""
    unit = _UNITS.get(text[-1:])
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        return int((now - float(text[:-1]) * unit) * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected a duration (90s, 15m, 2h, 7d) or an RFC 3339 time "
            "(2026-12-01T20:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise UsageError(f"--since {text!r}: give the time zone (Z for UTC)")
    return int(moment.timestamp() * 1000)


@app.command("events")
def events(  # noqa: PLR0917 (typer maps options to parameters)
    directory: DirOption,
    db: StoreOption = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only events since: 15m, 2h, 7d, or 2026-12-01T20:00:00Z."),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", help="Only this kind (auth_failed, refused, duplicate_terminal…)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1_000_000, help="At most.")] = 1000,
    json_output: JsonOption = False,
) -> None:
    """Print the exchange's audit table: admissions, refusals, failed authentications,
    duplicate terminals, closes, charter updates, starts and stops (oldest first). Safe
    while the exchange runs (the store is opened read-only)."""
    since_ms = parse_since(since, time.time()) if since is not None else None
    rows = read_events(db or store_path(directory), since_ms=since_ms, kind=kind, limit=limit)
    if json_output:
        print_json(
            {
                "schema": 1,
                "ok": True,
                "events": [{"ts": rfc3339(e.at_ms / 1000), **dataclasses.asdict(e)} for e in rows],
            }
        )
        return
    for e in rows:
        fields = " ".join(
            f"{name}={value}"
            for name, value in (
                ("line", e.line),
                ("terminal", e.terminal),
                ("source", e.source),
                ("reason", e.reason),
            )
            if value is not None
        )
        typer.echo(f"{rfc3339(e.at_ms / 1000)} {e.kind} {fields}".rstrip())


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT``."""
    host, port_text = text, str(DEFAULT_PORT)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"--listen {text!r}: unclosed [")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"--listen {text!r}: expected [ADDRESS]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--listen {text!r}: the port is not a number") from None
    if not 0 <= port <= 65535 or not host:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT with a port 0-65535")
    return host, port


def _charter_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.charter.json"))
            if not found:
                raise UsageError(f"{path}: no *.charter.json file in this folder")
            files.extend(found)
        else:
            files.append(path)
    return files


def _raise_fd_limit(max_connections: int) -> None:
    """Every connection is a file descriptor: lift the soft limit as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if hard < max_connections:
        logging.getLogger("hotline.exchange").warning(
            "the file descriptor limit (%d) is below --max-connections %d; raise it with ulimit -n",
            hard,
            max_connections,
        )


def _opt(key: str) -> str:
    option = _OPTIONS[key]
    return f"{option.help[0].upper()}{option.help[1:]}. File: {key} (default: {option.default!r})."


_OPTIONS = {o.key: o for o in EXCHANGE_OPTIONS}


@app.command("serve")
def serve(  # noqa: PLR0917 (typer maps options to parameters)
    directory: DirOption,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help=f"The exchange's local configuration (default: DIR/{CONFIG_FILE} if it exists).",
        ),
    ] = None,
    charter: Annotated[
        list[Path] | None,
        typer.Option(
            "--charter",
            help=(
                "A signed charter of a line to serve (repeat for several lines), or a folder "
                "of *.charter.json files. Charters already held in the database are served "
                "too, so a restart needs none. File: exchange.charter."
            ),
        ),
    ] = None,
    listen: Annotated[str | None, typer.Option("--listen", help=_opt("exchange.listen"))] = None,
    db: Annotated[Path | None, typer.Option("--db", help=_opt("exchange.db"))] = None,
    insecure_loopback: Annotated[
        bool | None,
        typer.Option("--insecure-loopback/--tls", help=_opt("exchange.insecure_loopback")),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="When ready, print one JSON line: url, port, exchange id."),
    ] = False,
    max_envelope_size: Annotated[
        int | None, typer.Option(help=_opt("limits.max_envelope_size"))
    ] = None,
    rate: Annotated[float | None, typer.Option(help=_opt("limits.rate"))] = None,
    burst: Annotated[int | None, typer.Option(help=_opt("limits.burst"))] = None,
    max_connections_per_source: Annotated[
        int | None, typer.Option(help=_opt("limits.max_connections_per_source"))
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help=_opt("limits.max_connections"))
    ] = None,
    max_queue: Annotated[int | None, typer.Option(help=_opt("limits.max_queue"))] = None,
    window: Annotated[float | None, typer.Option(help=_opt("limits.window"))] = None,
    auth_timeout: Annotated[float | None, typer.Option(help=_opt("limits.auth_timeout"))] = None,
    heartbeat: Annotated[float | None, typer.Option(help=_opt("limits.heartbeat"))] = None,
    log_level: Annotated[
        LogLevel | None, typer.Option("--log-level", help=_opt("log.level"))
    ] = None,
    log_format: Annotated[
        LogFormat | None, typer.Option("--log-format", help=_opt("log.format"))
    ] = None,
) -> None:
    """Run the exchange until interrupted (Ctrl-C or SIGTERM).

    Every option can also be set in DIR/exchange.toml (the command line wins; `hotline config
    show --exchange DIR` prints the result). Prints the URL it listens on once terminals can
    connect; with --json, one line:
    {"event": "listening", "url": ..., "port": ..., "exchange_id": ..., "lines": [...]}."""
    # aiohttp's server is imported only here: every other `hotline` command starts faster
    from hotline.exchange.server import (  # noqa: PLC0415
        ExchangeServer,
        ServerConfig,
        listening_line,
    )

    settings = exchange_settings(
        directory,
        config_file,
        {
            "exchange.listen": listen,
            "exchange.charter": charter,
            "exchange.db": db,
            "exchange.insecure_loopback": insecure_loopback,
            "limits.max_envelope_size": max_envelope_size,
            "limits.rate": rate,
            "limits.burst": burst,
            "limits.max_connections_per_source": max_connections_per_source,
            "limits.max_connections": max_connections,
            "limits.max_queue": max_queue,
            "limits.window": window,
            "limits.auth_timeout": auth_timeout,
            "limits.heartbeat": heartbeat,
            "log.level": log_level.value if log_level else None,
            "log.format": log_format.value if log_format else None,
        },
    )
    value = settings.value
    setup_logging(value("log.format"), value("log.level"), static={"component": "exchange"})
    host, port = parse_listen(value("exchange.listen"))
    _raise_fd_limit(value("limits.max_connections"))
    limits = Limits(
        max_envelope_size=value("limits.max_envelope_size"),
        rate_per_s=value("limits.rate"),
        burst=value("limits.burst"),
        max_connections_per_source=value("limits.max_connections_per_source"),
        max_connections=value("limits.max_connections"),
        max_queue=value("limits.max_queue"),
        window_s=value("limits.window"),
        auth_timeout_s=value("limits.auth_timeout"),
        heartbeat_s=value("limits.heartbeat"),
    )
    charters: list[SignedCharter] = [
        load_charter(p) for p in _charter_files(value("exchange.charter"))
    ]
    insecure = bool(value("exchange.insecure_loopback"))
    if not insecure:
        tls.load_fingerprint(directory)  # a clear error before anything starts
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    db_path = store_path(directory, settings)
    # one server per store, for as long as this process lives
    lock = pidlock.hold(
        store_lock_path(db_path),
        f"{db_path}: this exchange store is already served by another `hotline exchange serve`",
    )
    config = ServerConfig(
        db_path=db_path,
        tls_dir=None if insecure else directory,
        host=host,
        port=port,
        insecure_loopback=insecure,
        limits=limits,
    )

    async def run() -> None:
        server = ExchangeServer(config, charters)
        await server.start()
        started = time.monotonic()

        def ready() -> None:
            lifecycle(
                "exchange_started",
                f"exchange {server.exchange_id} started on {server.url}",
                exchange_id=server.exchange_id,
                url=server.url,
                lines=server.router.lines(),
                pid=os.getpid(),
                version=__version__,
                config={r["key"]: r["value"] for r in settings.rows()},
            )
            sdnotify.ready(f"serving {len(server.router.lines())} line(s) on {server.url}")
            if json_output:
                sys.stdout.write(listening_line(server) + "\n")
                sys.stdout.flush()
            else:
                console.print(f"exchange {server.exchange_id}", soft_wrap=True)
                console.print(f"listening on {server.url}", soft_wrap=True)

        try:
            await until_terminated(ready)
        finally:
            sdnotify.stopping()
            await server.stop()
            lifecycle(
                "exchange_stopped",
                f"exchange {server.exchange_id} stopped",
                exchange_id=server.exchange_id,
                uptime_s=round(time.monotonic() - started, 3),
            )

    try:
        asyncio.run(run())
    finally:
        os.close(lock)


def store_lock_path(db_path: Path) -> Path:
    """The lock file of an exchange store: ``exchange.db.lock`` beside ``exchange.db``."""
    return db_path.with_name(db_path.name + ".lock")
