"""`hotline status`: is the line ready, as one running terminal sees it.

The call itself is `hotline call status`; both start with the same terminal header
(:func:`hotline.cli.call.print_terminal_header`) and read the same ``/status``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from hotline.cli.call import print_terminal_header
from hotline.cli.check import COLOURS
from hotline.cli.common import EXIT_CHECK_FAILED, JsonOption, console, print_json
from hotline.terminal.control import ControlClient


def age_text(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3 h 5 min``, ``12 d 4 h``."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86_400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def _when(unix: Any) -> str:
    if not isinstance(unix, int | float):
        return "—"
    moment = dt.datetime.fromtimestamp(unix, dt.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({age_text(time.time() - unix)} ago)"


def expiry_rows(result: dict[str, Any]) -> list[tuple[str, str, bool]] | None:
    """What expires next, from ``/status``'s ``expiry`` (a list of ``{"what", "at"
    (unix seconds), "warn"}``, soonest first), as (what, when, warn); ``None`` when this
    terminal does not report expiry."""
    items = result.get("expiry")
    if not isinstance(items, list):
        return None
    rows = []
    for item in items:
        if isinstance(item, dict):
            at = item.get("at")
            when = "—"
            if isinstance(at, int | float):
                left = at - time.time()
                day = dt.datetime.fromtimestamp(at, dt.UTC)
                when = (
                    f"{day:%Y-%m-%d} (in {age_text(left)})"
                    if left > 0
                    else f"{day:%Y-%m-%d} (past)"
                )
            rows.append((str(item.get("what", "?")), when, bool(item.get("warn"))))
    return rows


def command(
    terminal: Annotated[
        Path, typer.Option("--terminal", "-t", help="the running terminal's folder", exists=True)
    ],
    json_out: JsonOption = False,
) -> None:
    """Is the line ready: the last good readiness check and its age, the last verdict,
    open alarms, what expires next, the exchange. Exit 0 when ready (what the terminal's
    /readyz says), 1 when not.

    Example: `hotline status -t sochi/alpha`.
    """
    result = asyncio.run(_status(terminal))
    health = result.get("health") or {}
    ready = bool(health) and all(bool(h.get("ok")) for h in health.values())
    if json_out:
        readiness = result.get("readiness") or {}
        print_json(
            {
                "terminal": result.get("terminal"),
                "line": result.get("line"),
                "charter_version": result.get("charter_version"),
                "ready": ready,
                "health": health,
                "exchange": result.get("exchange"),
                "last_check": readiness.get("last"),
                "last_good_check": readiness.get("last_good"),
                "alarms": readiness.get("alarms") or [],
                "next_check_s": readiness.get("next_due_s") or {},
                "expiry": result.get("expiry"),
                "call": bool(result.get("call")),
            }
        )
    else:
        _print(result, ready)
    if not ready:
        raise typer.Exit(EXIT_CHECK_FAILED)


async def _status(terminal: Path) -> dict[str, Any]:
    async with ControlClient.for_terminal(terminal) as control:
        result: dict[str, Any] = await control.request("GET", "/status")
        return result


def _print(result: dict[str, Any], ready: bool) -> None:
    print_terminal_header(result)
    r = result.get("readiness") or {}
    mark = "[bold green]READY[/]" if ready else "[bold red]NOT READY[/]"
    console.print(f"line {mark}")
    table = Table(box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    good = r.get("last_good")
    if good:
        peer, verdict = escape(str(good.get("peer"))), good.get("verdict")
        table.add_row("last good check", f"with {peer}, {verdict}, {_when(good.get('time'))}")
    else:
        table.add_row("last good check", "none yet")
    last = r.get("last")
    if last:
        verdict = str(last.get("verdict"))
        why = "; ".join(str(x) for x in last.get("reasons") or [])
        table.add_row(
            "last verdict",
            f"[{COLOURS.get(verdict, 'white')}]{verdict}[/] with "
            f"{escape(str(last.get('with', last.get('peer'))))}, "
            f"{_when(last.get('time'))}" + (f": {escape(why)}" if why else ""),
        )
    else:
        table.add_row("last verdict", "no check yet")
    alarms = r.get("alarms") or []
    table.add_row(
        "open alarms",
        "none"
        if not alarms
        else "\n".join(
            f"[red]{escape(str(a.get('peer')))}[/] since {_when(a.get('since'))}, "
            f"{a.get('count')} red in a row: {escape(str(a.get('reason')))}"
            for a in alarms
        ),
    )
    due = r.get("next_due_s") or {}
    table.add_row(
        "next checks",
        (
            ", ".join(f"{escape(p)} in {age_text(s)}" for p, s in due.items())
            or "none (the other side calls)"
        )
        if r.get("scheduled", True)
        else "not scheduled (--no-scheduled-checks)",
    )
    expiry = expiry_rows(result)
    if expiry is None:
        table.add_row("expires next", "not reported by this terminal")
    else:
        table.add_row(
            "expires next",
            "\n".join(
                f"{'[yellow]' if warn else ''}{escape(what)}: {when}{'[/]' if warn else ''}"
                for what, when, warn in expiry
            )
            or "nothing",
        )
    for name, h in sorted((result.get("health") or {}).items()):
        state = "[green]ok[/]" if h.get("ok") else "[red]FAIL[/]"
        table.add_row(f"ready: {escape(name)}", f"{state} {escape(str(h.get('detail')))}")
    console.print(table)
