"""`hotline demo`: watch a real end-to-end encrypted call between two terminals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hotline.cli.common import EXIT_CHECK_FAILED, console, err_console

if TYPE_CHECKING:
    from hotline.demo import DemoResult


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
    browser: Annotated[
        bool,
        typer.Option(
            "--browser",
            help="join as the callee from a browser on this machine, with its own camera and "
            "microphone: the demo prints the link and waits for the page",
        ),
    ] = False,
) -> None:
    """Commission a line on this machine, start an exchange and two terminals ("sochi" and
    "situation-room") as separate processes, and place a real end-to-end encrypted call
    between them. Exits 0 only if decrypted audio and video flowed both ways."""
    from hotline.demo import print_link, run_demo  # noqa: PLC0415 (loads aiohttp: slow)

    result = asyncio.run(
        run_demo(
            duration=duration,
            rekey_s=rekey,
            keep=keep,
            live=not browser,  # the link must stay readable
            json_out=json_out,
            browser=print_link if browser else None,
        )
    )
    if not json_out:
        if result.ok:
            console.print()
            console.print(summary_table(result))
        else:
            err_console.print(f"[bold red]demo failed:[/] {escape(str(result.failure))}")
    if not result.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


def summary_table(result: DemoResult) -> Table:
    """What the call showed, side by side."""
    table = Table(
        title=f"call completed — set-up {result.setup_ms:.0f} ms (dial to media both ways)"
    )
    table.add_column("")
    sides = list(result.frames)
    for side in sides:
        table.add_column(side)

    def row(label: str, values: list[object]) -> None:
        table.add_row(label, *(str(v) for v in values))

    row("security code", [result.security_code[s] for s in sides])
    row("epochs", [", ".join(map(str, result.epochs[s])) for s in sides])
    for key, label in (
        ("sent", "frames protected"),
        ("decrypted", "frames decrypted"),
        ("rejected", "frames rejected"),
    ):
        row(label, [result.frames[s][key] for s in sides])
    row(
        "video latency p50 / p95",
        [
            f"{result.video_latency_ms[s]['p50']} / {result.video_latency_ms[s]['p95']} ms"
            for s in sides
        ],
    )
    row("call log verified, co-signed", [result.log_verified.get(s) for s in sides])
    return table
