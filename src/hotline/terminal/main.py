"""Running a terminal: the daemon, its control API, signals, and the ready file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from hotline import __version__, pidlock, sdnotify
from hotline.call.session import MediaSettings
from hotline.charter import load_charter
from hotline.errors import UsageError
from hotline.keys import read_passphrase
from hotline.logs import lifecycle, setup_logging
from hotline.media import aiortc_patch, engine
from hotline.media.sinks import CaptureFiles
from hotline.provision import TERMINAL_KEY_FILE, load_terminal, load_terminal_record
from hotline.settings import Settings, resolve
from hotline.signals import until_terminated
from hotline.terminal.config import (
    TerminalConfig,
    default_config_path,
    load_terminal_config,
)
from hotline.terminal.control import make_runner, write_control_file
from hotline.terminal.daemon import DaemonConfig, TerminalDaemon, capture_allowed, new_token
from hotline.terminal.options import TERMINAL_OPTIONS
from hotline.ui.browser_engine import BrowserHub
from hotline.ui.server import UiServer, parse_ui_address


def build_config(
    *,
    terminal_dir: Path,
    charter_path: Path,
    exchange_url: str | None,
    passphrase_file: Path | None,
    auto_answer: bool,
    interfaces: str,
    width: int,
    height: int,
    fps: int,
    source: str = "synthetic",
    config_path: Path | None = None,
    site: TerminalConfig | None = None,
    capture_audio: Path | None = None,
    media_engine: str = "aiortc",
) -> DaemonConfig:
    if media_engine not in ("aiortc", "browser"):
        raise UsageError("--engine must be 'aiortc' or 'browser'")
    signed = load_charter(charter_path)
    signed.verify()
    if capture_audio is not None and not capture_allowed(
        source, signed.charter.policy.recording_allowed
    ):
        raise UsageError(
            "--capture-audio records what the other side says: only with a synthetic or "
            "file source (a measuring terminal), or when the charter allows recording"
        )
    record, key = load_terminal(terminal_dir, read_passphrase(passphrase_file))
    charter = signed.charter
    terminal = charter.terminal_by_key(key.public)
    # the charter's enrolment signature (checked by verify) may be newer than the folder's
    # record: a site that replaced its operator key signs its terminals' enrolments again
    listed = dataclasses.replace(terminal, enrolment_signature=record.enrolment_signature)
    if terminal.terminal_id != record.terminal_id or listed != record.terminal:
        raise UsageError(f"{terminal_dir}: the charter lists this key under another terminal id")
    tls_fingerprint: str | None = None
    fallbacks: tuple[tuple[str, str | None], ...] = ()
    if exchange_url is None:
        if not charter.exchanges:
            raise UsageError("the charter names no exchange; give --exchange URL")
        # the charter's first exchange, then the others in order when it does not answer
        exchange_url = charter.exchanges[0].url
        fallbacks = tuple((e.url, e.tls_fingerprint) for e in charter.exchanges[1:])
        for url, pin in fallbacks:
            if url.startswith("wss://") and pin is None:
                raise UsageError(f"{url}: the charter pins no TLS certificate for it")
    for endpoint in charter.exchanges:
        if endpoint.url == exchange_url:
            tls_fingerprint = endpoint.tls_fingerprint
    if exchange_url.startswith("wss://") and tls_fingerprint is None:
        raise UsageError(f"{exchange_url}: not in the charter, so no pinned TLS certificate")
    # TURN credentials live in each site's local configuration, never in the charter
    if site is None:
        site = load_site_config(terminal_dir, config_path, terminal.terminal_id)
    ice = site.ice_settings(charter)
    try:  # written once at enrolment: it stands for the key's creation (check.expiry)
        key_created: float | None = (terminal_dir / TERMINAL_KEY_FILE).stat().st_mtime
    except OSError:
        key_created = None
    return DaemonConfig(
        terminal_dir=terminal_dir,
        identity_key_created=key_created,
        charter=signed,
        exchange_url=exchange_url,
        identity_key=key,
        terminal_id=terminal.terminal_id,
        tls_fingerprint=tls_fingerprint,
        exchange_fallbacks=fallbacks,
        auto_answer=auto_answer,
        media=MediaSettings(
            source=source,
            width=width,
            height=height,
            fps=fps,
            ice=ice,
            capture_audio=CaptureFiles(capture_audio) if capture_audio is not None else None,
        ),
        interfaces=interfaces,
        site=site,
        engine=media_engine,
    )


def load_site_config(
    terminal_dir: Path, config_path: Path | None, terminal_id: str
) -> TerminalConfig:
    """``--config FILE``, else ``<terminal folder>/terminal.toml`` if there is one, else
    an empty configuration (no TURN credentials)."""
    path = config_path if config_path is not None else default_config_path(terminal_dir)
    if config_path is None and not path.exists():
        return TerminalConfig()
    return load_terminal_config(path, default_name=terminal_id)


def terminal_settings(
    terminal_dir: Path, config_path: Path | None, command_line: dict[str, Any]
) -> tuple[TerminalConfig, Settings]:
    """The site configuration of the terminal in ``terminal_dir`` and its effective run
    options: ``command_line`` (None: not given) over the file over the defaults."""
    terminal_id = load_terminal_record(terminal_dir).terminal_id
    site = load_site_config(terminal_dir, config_path, terminal_id)
    label = str(site.path) if site.path is not None else None
    return site, resolve(TERMINAL_OPTIONS, site.values, label, command_line)


def ice_address_policy(interfaces: str) -> list[str]:
    """``--interfaces`` as the media engine's host-address policy: 'loopback', 'all', or a
    comma-separated list of local IP addresses (checked when the terminal starts)."""
    if interfaces == "loopback":
        return ["loopback"]
    if interfaces == "all":
        return ["host"]
    addresses = [a.strip() for a in interfaces.split(",") if a.strip()]
    if not addresses:
        raise UsageError("--interfaces must be 'loopback', 'all' or IP addresses")
    return addresses


LOCK_FILE = "terminal.lock"


def hold_single_instance(state: Path) -> int:
    """Take the terminal's lock (held until the process ends): two processes with one
    identity would push each other off the exchange. Returns the lock's descriptor."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    return pidlock.hold(state / LOCK_FILE, f"{state.parent}: this terminal is already running")


async def _listen(runner: web.AppRunner, host: str, port: int) -> int:
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    return int(server.sockets[0].getsockname()[1])


async def serve(
    config: DaemonConfig,
    control_port: int = 0,
    settings: dict[str, Any] | None = None,
    ui: str | None = None,
) -> None:
    """Run the daemon, its control API and (``ui``: ``[127.0.0.1:]PORT``) its web UI."""
    ui_address = parse_ui_address(ui) if ui is not None else None
    if config.engine == "browser" and ui_address is None:
        raise UsageError("--engine browser needs --ui (the page is the media engine)")
    lock = hold_single_instance(config.state)
    aiortc_patch.install()
    engine.set_ice_addresses(ice_address_policy(config.interfaces))
    daemon = TerminalDaemon(config)
    ui_server: UiServer | None = None
    if ui_address is not None:
        hub = BrowserHub() if config.engine == "browser" else None
        daemon.browser_hub = hub
        ui_server = UiServer(daemon, hub)
    token = new_token()
    runner = make_runner(daemon, token, ui_server)
    port = await _listen(runner, "127.0.0.1", control_port)
    url = f"http://127.0.0.1:{port}"
    ui_runner: web.AppRunner | None = None
    ready_line: dict[str, object] = {
        "ready": True,
        "terminal": daemon.terminal_id,
        "control": url,
    }
    if ui_server is not None and ui_address is not None:
        ui_runner = ui_server.make_runner()
        try:
            ui_port = await _listen(ui_runner, *ui_address)
        except OSError as exc:
            await runner.cleanup()
            daemon.call_log.close()
            os.close(lock)
            raise UsageError(f"--ui {ui}: cannot listen there ({exc.strerror or exc})") from exc
        ui_server.origin = f"http://{ui_address[0]}:{ui_port}"
        ready_line["ui"] = ui_server.origin
        ready_line["ui_login"] = ui_server.login_url()
    # the start line comes first: the daemon's first exchange connection may log at once
    lifecycle(
        "terminal_started",
        f"terminal {daemon.terminal_id} started; control API on {url}",
        terminal=daemon.terminal_id,
        line=config.charter.line_id,
        charter_version=config.charter.version,
        exchange=config.exchange_url,
        control=url,
        pid=os.getpid(),
        version=__version__,
        config=settings,
    )
    await daemon.start()
    control = write_control_file(config.state, url, token, os.getpid())

    started = time.monotonic()

    def ready() -> None:
        sdnotify.ready(f"terminal {daemon.terminal_id}; control API on {url}")
        sys.stdout.write(json.dumps(ready_line) + "\n")
        sys.stdout.flush()
        if ui_server is not None:
            sys.stderr.write(
                f"open the terminal's screen (one-time link): {ready_line['ui_login']}\n"
            )
            sys.stderr.flush()

    try:
        await until_terminated(ready)
    finally:
        sdnotify.stopping()
        await daemon.stop()
        if ui_runner is not None:
            await ui_runner.cleanup()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            control.unlink()
        lifecycle(
            "terminal_stopped",
            f"terminal {daemon.terminal_id} stopped",
            terminal=daemon.terminal_id,
            uptime_s=round(time.monotonic() - started, 3),
        )
        os.close(lock)


def run(
    config: DaemonConfig,
    control_port: int = 0,
    verbose: bool = False,
    *,
    log_format: str = "text",
    log_level: str | None = None,
    settings: dict[str, Any] | None = None,
    ui: str | None = None,
) -> None:
    setup_logging(
        log_format,
        log_level or ("info" if verbose else "warning"),
        static={"component": "terminal", "terminal": config.terminal_id},
        prefix=config.terminal_id,
    )
    asyncio.run(serve(config, control_port, settings, ui))
