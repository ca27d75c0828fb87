"""`hotline demo`: watch a real end-to-end encrypted call between two terminals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from hotline.cli.common import EXIT_CHECK_FAILED, console, err_console
from hotline.demo import run_demo


def command(
    duration: Annotated[
        float, typer.Option(help="seconds of call after media flows both ways", min=1)
    ] = 15.0,
    rekey: Annotated[
        int, typer.Option(help="the demo charter's rekey interval in seconds", min=5)
    ] = 5,
    keep: Annotated[
        Path | None,
        typer.Option(help="keep everything (keys, charter, logs, call logs) in this folder"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary only")] = False,
) -> None:
    """Commission a line on this machine, start an exchange and two terminals ("sochi" and
    "situation-room") as separate processes, and place a real end-to-end encrypted call
    between them. Exits 0 only if decrypted audio and video flowed both ways."""
    result = asyncio.run(
        run_demo(duration=duration, rekey_s=rekey, keep=keep, live=True, json_out=json_out)
    )
    if not json_out:
        if result.ok:
            codes = set(result.security_code.values())
            console.print(
                f"[bold green]call completed[/]: set-up {result.setup_ms:.0f} ms; "
                f"security code {codes.pop()} equal on both sides; epochs {result.epochs}; "
                f"frames {result.frames}; video latency {result.video_latency_ms}; "
                f"call logs verified {result.log_verified}"
            )
        else:
            err_console.print(f"[bold red]demo failed:[/] {result.failure}")
    if not result.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)
