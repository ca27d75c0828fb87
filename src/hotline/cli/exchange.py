"""``hotline exchange``: create an exchange's TLS identity and run the exchange."""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import sys
from pathlib import Path
from typing import Annotated

import typer

from hotline.charter import SignedCharter, load_charter
from hotline.cli.common import console, print_json
from hotline.errors import UsageError
from hotline.exchange import tls
from hotline.exchange.routing import Limits
from hotline.signals import until_terminated

app = typer.Typer(
    help=(
        "The exchange: the untrusted rendezvous server through which a line's terminals find "
        "each other. Run `init` once to create its TLS certificate (its fingerprint goes into "
        "the charter, where terminals pin it), then `serve` with the line's charter(s)."
    ),
    no_args_is_help=True,
)

DEFAULT_PORT = 7447
DB_FILE = "exchange.db"
_DEFAULTS = Limits()

DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        help="The exchange's folder: TLS certificate and key, and by default its database.",
    ),
]

#: the largest value any limit option takes (a guard against typos and infinities)
MAX_LIMIT = 1_000_000_000


@app.command("init")
def init(
    directory: DirOption,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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


@app.command("fingerprint")
def fingerprint(directory: DirOption) -> None:
    """Print the fingerprint of the exchange's TLS certificate."""
    console.print(tls.load_fingerprint(directory), soft_wrap=True)


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


@app.command("serve")
def serve(  # noqa: PLR0917 (typer maps options to parameters)
    directory: DirOption,
    charter: Annotated[
        list[Path] | None,
        typer.Option(
            "--charter",
            help=(
                "A signed charter of a line to serve (repeat for several lines), or a folder "
                "of *.charter.json files. Charters already held in the database are served "
                "too, so a restart needs none."
            ),
        ),
    ] = None,
    listen: Annotated[
        str,
        typer.Option("--listen", help="ADDRESS:PORT to listen on; port 0 picks a free one."),
    ] = f"127.0.0.1:{DEFAULT_PORT}",
    db: Annotated[
        Path | None,
        typer.Option("--db", help=f"The SQLite database (default: DIR/{DB_FILE})."),
    ] = None,
    insecure_loopback: Annotated[
        bool,
        typer.Option(
            "--insecure-loopback",
            help="Serve plain ws:// instead of wss:// (tests, demo). Only on a loopback address.",
        ),
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="When ready, print one JSON line: url, port, exchange id."),
    ] = False,
    max_envelope_size: Annotated[
        int, typer.Option(help="Largest envelope in bytes; larger closes the connection.")
    ] = _DEFAULTS.max_envelope_size,
    rate: Annotated[
        float, typer.Option(help="Envelopes per second per terminal (sustained).")
    ] = _DEFAULTS.rate_per_s,
    burst: Annotated[int, typer.Option(help="Envelopes a terminal may send at once.")] = (
        _DEFAULTS.burst
    ),
    max_connections_per_source: Annotated[
        int, typer.Option(help="Open connections per source address.")
    ] = _DEFAULTS.max_connections_per_source,
    max_connections: Annotated[int, typer.Option(help="Open connections in total.")] = (
        _DEFAULTS.max_connections
    ),
    max_queue: Annotated[
        int, typer.Option(help="Stored, unacknowledged envelopes per terminal.")
    ] = _DEFAULTS.max_queue,
    window: Annotated[
        float, typer.Option(help="Store-and-forward window in seconds.")
    ] = _DEFAULTS.window_s,
    auth_timeout: Annotated[
        float, typer.Option(help="Seconds a new connection has to authenticate.")
    ] = _DEFAULTS.auth_timeout_s,
    heartbeat: Annotated[float, typer.Option(help="WebSocket ping interval in seconds.")] = (
        _DEFAULTS.heartbeat_s
    ),
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error (logs go to stderr).")
    ] = "info",
) -> None:
    """Run the exchange until interrupted (Ctrl-C or SIGTERM).

    Prints the URL it listens on once terminals can connect; with --json, one line:
    {"event": "listening", "url": ..., "port": ..., "exchange_id": ..., "lines": [...]}."""
    # aiohttp's server is imported only here: every other `hotline` command starts faster
    from hotline.exchange.server import (  # noqa: PLC0415
        ExchangeServer,
        ServerConfig,
        listening_line,
    )

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise UsageError(f"--log-level {log_level!r}: expected debug, info, warning or error")
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = parse_listen(listen)
    for name, value in (
        ("max-envelope-size", max_envelope_size),
        ("rate", rate),
        ("burst", burst),
        ("max-connections-per-source", max_connections_per_source),
        ("max-connections", max_connections),
        ("max-queue", max_queue),
        ("window", window),
        ("auth-timeout", auth_timeout),
        ("heartbeat", heartbeat),
    ):
        if not math.isfinite(value) or not 0 < value <= MAX_LIMIT:
            raise UsageError(f"--{name} must be a number above 0 and at most {MAX_LIMIT:,}")
    _raise_fd_limit(max_connections)
    limits = Limits(
        max_envelope_size=max_envelope_size,
        rate_per_s=rate,
        burst=burst,
        max_connections_per_source=max_connections_per_source,
        max_connections=max_connections,
        max_queue=max_queue,
        window_s=window,
        auth_timeout_s=auth_timeout,
        heartbeat_s=heartbeat,
    )
    charters: list[SignedCharter] = [load_charter(p) for p in _charter_files(charter or [])]
    if not insecure_loopback:
        tls.load_fingerprint(directory)  # a clear error before anything starts
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = ServerConfig(
        db_path=db if db is not None else directory / DB_FILE,
        tls_dir=None if insecure_loopback else directory,
        host=host,
        port=port,
        insecure_loopback=insecure_loopback,
        limits=limits,
    )

    async def run() -> None:
        server = ExchangeServer(config, charters)
        await server.start()
        if json_output:
            sys.stdout.write(listening_line(server) + "\n")
            sys.stdout.flush()
        else:
            console.print(f"exchange {server.exchange_id}")
            console.print(f"listening on {server.url}")
        try:
            await until_terminated()
        finally:
            await server.stop()

    asyncio.run(run())
