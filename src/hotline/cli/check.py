"""`hotline check ...`: readiness checks of the line through a running terminal."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hotline.cli.common import JsonOption, TerminalOption, console, print_json
from hotline.errors import UsageError

app = typer.Typer(
    help=(
        "Readiness checks: real calls between terminals, answered by the terminal itself, "
        "measured (set-up, delay, loss, jitter, frame rates, E-model MOS, PESQ-WB of a "
        "looped-back speech clip, E2EE verified) and "
        "kept in both call logs. Terminals also run them on the charter's schedule.\n\n"
        "Example: `hotline check run --terminal sochi/ --to situation-room` checks the "
        "line now and prints the verdict (green, amber or red) with its reasons."
    ),
    no_args_is_help=True,
)

COLOURS = {"green": "green", "amber": "yellow", "red": "red"}


async def _request(terminal: Path, method: str, path: str, data: Any = None) -> Any:
    from hotline.terminal.control import ControlClient  # noqa: PLC0415 (aiohttp: slow)

    async with ControlClient.for_terminal(terminal) as control:
        return await control.request(method, path, data)


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value} ms"


def _pesq(value: Any) -> str:
    """PESQ-WB x 100 as a MOS-LQO, or a dash when not measured."""
    return "—" if value is None else f"{value / 100:.2f}"


@app.command("run")
def run(
    terminal: TerminalOption,
    to: Annotated[str, typer.Option("--to", help="the terminal to check the line to")],
    seconds: Annotated[float, typer.Option(help="seconds of measured media (1-60)")] = 3.0,
    json_out: JsonOption = False,
) -> None:
    """Run one readiness check now; exit 0 on green or amber, 1 on red."""
    if not 1 <= seconds <= 60:
        raise UsageError("--seconds must be from 1 to 60")
    result = asyncio.run(_request(terminal, "POST", "/check", {"target": to, "seconds": seconds}))
    if json_out:
        print_json(result)
    else:
        verdict = str(result.get("verdict"))
        colour = COLOURS.get(verdict, "white")
        console.print(f"line check to {escape(to)}: [bold {colour}]{verdict.upper()}[/]")
        for reason in result.get("reasons") or []:
            console.print(f"  - {escape(str(reason))}")
        if result.get("ok"):
            console.print(
                f"  set-up {_ms(result.get('setup_ms'))}, one-way ~{_ms(result.get('one_way_ms'))}"
                f", loss {(result.get('loss_permille') or 0) / 10:g} %, jitter "
                f"{_ms(result.get('jitter_ms'))}, video {result.get('video_fps')} fps, audio "
                f"{result.get('audio_fps')} fps, MOS {(result.get('mos_x100') or 0) / 100:.2f}, "
                f"PESQ {_pesq(result.get('pesq_x100'))}, round trip video "
                f"{_ms(result.get('video_rtt_ms'))} audio {_ms(result.get('audio_rtt_ms'))}, "
                f"path {result.get('path') or '?'}, security codes "
                f"{'match' if result.get('security_code_match') else 'DIFFER'}"
            )
            if result.get("pesq_note"):
                console.print(f"  {escape(str(result['pesq_note']))}")
    if result.get("verdict") == "red":
        raise typer.Exit(1)


@app.command("history")
def history(terminal: TerminalOption, json_out: JsonOption = False) -> None:
    """The readiness results this terminal holds, oldest first: daily and monthly summaries
    of older checks (signed, in the call log, replacing their entries), then each result."""
    results = asyncio.run(_request(terminal, "GET", "/checks"))
    if json_out:
        print_json({"checks": results})
        return
    table = Table(
        "time (UTC)", "by", "to", "verdict", "set-up", "one-way", "loss", "MOS", "PESQ", "why"
    )
    for r in results:
        when = dt.datetime.fromtimestamp(int(r.get("time") or 0), dt.UTC)
        verdict = str(r.get("verdict"))
        colour = COLOURS.get(verdict, "white")
        if r.get("kind") in ("day", "month"):
            counts = r.get("verdicts") or {}
            table.add_row(
                when.strftime("%Y-%m-%d" if r["kind"] == "day" else "%Y-%m") + f" ({r['kind']})",
                escape(str(r.get("by"))),
                escape(str(r.get("peer"))),
                f"[{colour}]{r.get('checks')} checks[/]",
                _ms(_figure(r, "setup_ms", "mean")),
                _ms(_figure(r, "one_way_ms", "mean")),
                f"≤ {(_figure(r, 'loss_permille', 'max') or 0) / 10:g} %",
                f"≥ {(_figure(r, 'mos_x100', 'min') or 0) / 100:.2f}",
                f"≥ {_pesq(_figure(r, 'pesq_x100', 'min'))}",
                ", ".join(f"{counts.get(v, 0)} {v}" for v in ("green", "amber", "red")),
            )
            continue
        table.add_row(
            when.strftime("%Y-%m-%d %H:%M:%S"),
            escape(str(r.get("by"))),
            escape(str(r.get("peer"))),
            f"[{colour}]{verdict}[/]",
            _ms(r.get("setup_ms")),
            _ms(r.get("one_way_ms")),
            f"{(r.get('loss_permille') or 0) / 10:g} %",
            f"{(r.get('mos_x100') or 0) / 100:.2f}",
            _pesq(r.get("pesq_x100")),
            escape("; ".join(r.get("reasons") or [])),
        )
    console.print(table if results else "no readiness checks yet")


def _figure(row: dict[str, Any], name: str, which: str) -> Any:
    """One aggregate (n, min, max, mean) of a figure in a summary row."""
    figure = row.get(name)
    return figure.get(which) if isinstance(figure, dict) else None
