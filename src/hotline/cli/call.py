"""`hotline call ...`: place and control calls through a running terminal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hotline import ids
from hotline.cli.common import JSON_SCHEMA_VERSION, JsonOption, TerminalOption, console, print_json
from hotline.errors import CallError, UsageError

app = typer.Typer(
    help=(
        "Place and control calls through a running terminal (`hotline terminal run`).\n\n"
        "Example: `hotline call dial situation-room --terminal sochi/ --wait` rings the "
        "terminal `situation-room`, waits until the call is answered and end-to-end "
        "encrypted, and prints the security code to read aloud."
    ),
    no_args_is_help=True,
)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _request(
    terminal: Path, method: str, path: str, data: dict[str, Any] | None = None
) -> Any:
    from hotline.terminal.control import ControlClient  # noqa: PLC0415 (aiohttp: slow)

    async with ControlClient.for_terminal(terminal) as control:
        return await control.request(method, path, data)


def _media_from_everyone(call: dict[str, Any]) -> bool:
    """Decrypted media shown from every other member (a call with a security code but no
    media is not secured for the person in front of the screen)."""
    peers = call.get("peers") or {}
    return bool(peers) and all(
        (p.get("video_sink") or {}).get("frames", 0) > 0
        or (p.get("audio_sink") or {}).get("frames", 0) > 0
        for p in peers.values()
    )


async def _wait_secure(terminal: Path, timeout: float) -> dict[str, Any]:
    """Wait until the call is answered, encrypted and carrying decrypted media from every
    other member; on timeout hang up and say why."""
    deadline = time.monotonic() + timeout
    state = "outgoing"
    from hotline.terminal.control import ControlClient  # noqa: PLC0415 (aiohttp: slow)

    async with ControlClient.for_terminal(terminal) as control:
        while time.monotonic() < deadline:
            status = await control.request("GET", "/status")
            call = status.get("call") or {}
            state = call.get("state", state)
            if state == "ended":
                raise CallError("the call ended before it was secured")
            if call.get("security_code") and _media_from_everyone(call):
                return dict(status)
            await asyncio.sleep(0.2)
        await control.request("POST", "/hangup")
    if state == "outgoing":
        raise CallError(f"not answered within {timeout:g} s; hung up")
    raise CallError(f"no end-to-end encryption within {timeout:g} s (no media flowed); hung up")


@app.command()
def dial(
    target: Annotated[str, typer.Argument(help="terminal id to ring")],
    terminal: TerminalOption,
    wait: Annotated[
        bool,
        typer.Option(
            help="wait until answered, encrypted and media flows; print the security code"
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 60.0,
    json_out: JsonOption = False,
) -> None:
    """Ring TARGET. The call has no time limit; end it with `hotline call hangup`."""
    if wait and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError("--timeout must be a positive number of seconds")
    target = ids.terminal_id(target, "TARGET", error=UsageError)
    result = _run(_request(terminal, "POST", "/call", {"target": target}))
    if wait:
        status = _run(_wait_secure(terminal, timeout))
        result["security_code"] = status["call"]["security_code"]
        result["epoch"] = status["call"]["epoch"]
    if json_out:
        print_json(result)
        return
    console.print(f"ringing {target} (call {result['call']})")
    if wait:
        console.print(f"end-to-end encrypted, media flowing, epoch {result['epoch']}")
        console.print(f"security code: [bold]{result['security_code']}[/] — read it aloud")


def _simple(path: str, done: str) -> Any:
    def command(terminal: TerminalOption, json_out: JsonOption = False) -> None:
        result = _run(_request(terminal, "POST", path))
        if json_out:
            print_json(result)
        else:
            console.print(done)

    return command


app.command("answer", help="Answer the ringing call.")(_simple("/answer", "answered"))
app.command("decline", help="Decline the ringing call.")(_simple("/decline", "declined"))
app.command("hangup", help="Leave the call (it ends when one member is left).")(
    _simple("/hangup", "hung up")
)


@app.command()
def invite(
    target: Annotated[str, typer.Argument(help="terminal id to ring into the running call")],
    terminal: TerminalOption,
    json_out: JsonOption = False,
) -> None:
    """Ring another terminal of the line into the running call (an interpreter, say)."""
    target = ids.terminal_id(target, "TARGET", error=UsageError)
    result = _run(_request(terminal, "POST", "/invite", {"target": target}))
    if json_out:
        print_json(result)
    else:
        console.print(f"ringing {target} into the call")


def describe_event(event: dict[str, Any]) -> str:
    """One console line for one terminal event (what an operator reads)."""
    kind = str(event.get("kind", "?"))
    at = time.strftime("%H:%M:%S", time.localtime(float(event.get("time", 0))))
    facts = {k: v for k, v in event.items() if k not in ("kind", "time", "seq")}
    if kind == "ring":
        text = f"incoming call from {facts.get('from')} (answer: `hotline call answer`)"
    elif kind == "epoch":
        roster = ", ".join(str(m) for m in facts.get("roster") or [])
        text = (
            f"end-to-end encrypted, epoch {facts.get('epoch')} ({roster}); "
            f"security code {facts.get('security_code')}"
        )
    elif kind == "ended":
        text = f"call ended: {facts.get('reason')}"
    elif kind in ("transport_lost", "peer_unreachable"):
        text = f"{facts.get('peer')}: {facts.get('reason')} (reconnecting)"
    elif kind == "unauthenticated_frame":
        text = f"ALARM: {facts.get('message')} ({facts.get('reason')})"
    elif kind == "transport_recovered":
        text = f"{facts.get('peer')}: back after {facts.get('outage_ms')} ms"
    else:
        text = " ".join(f"{k}={v}" for k, v in sorted(facts.items()))
    return f"{at} {kind:<20} {text}"


async def _watch(terminal: Path, until: str | None, history: bool, json_out: bool) -> None:
    from hotline.terminal.control import ControlClient  # noqa: PLC0415 (aiohttp: slow)

    async with ControlClient.for_terminal(terminal) as control:
        since = 0 if history else int((await control.request("GET", "/status"))["last_event"])
        async for event in control.follow(since):
            if json_out:  # one JSON object a line, each with the output's schema version
                line = {"schema": JSON_SCHEMA_VERSION, **event}
                sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
                sys.stdout.flush()
            else:
                console.print(escape(describe_event(event)), highlight=False)
            if until is not None and event.get("kind") == until:
                return


@app.command()
def watch(
    terminal: TerminalOption,
    until: Annotated[
        str | None, typer.Option(help="stop after the first event of this kind (e.g. ended)")
    ] = None,
    history: Annotated[
        bool, typer.Option("--history", help="first the events kept so far (up to 500)")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Follow the terminal's events as they happen: rings, answers, new epochs and their
    security codes, reconnections, refusals, the end of the call (the web UI shows the
    same stream). Ctrl-C stops."""
    with contextlib.suppress(KeyboardInterrupt):
        _run(_watch(terminal, until, history, json_out))


def print_terminal_header(result: dict[str, Any]) -> None:
    """The terminal, its line and exchange, and what it refused: the first lines of both
    ``hotline call status`` and ``hotline status``."""
    ex = result["exchange"]
    console.print(
        f"terminal {escape(str(result['terminal']))} ({result['role']}), line "
        f"{escape(str(result['line']))} v{result['charter_version']}; exchange "
        + ("connected" if ex["connected"] else f"[red]unreachable[/] ({escape(str(ex['reason']))})")
        + f"; online: {escape(', '.join(ex['online'])) or 'nobody'}"
    )
    refused = result.get("rejected") or {}
    if refused:  # what this terminal refused (from the exchange, peers, the control API)
        console.print(
            "[yellow]refused[/]: "
            + ", ".join(f"{escape(str(k))} {v}" for k, v in sorted(refused.items()))
        )


@app.command()
def status(terminal: TerminalOption, json_out: JsonOption = False) -> None:
    """Show the terminal, its exchange connection and the current call."""
    result = _run(_request(terminal, "GET", "/status"))
    if json_out:
        print_json(result)
        return
    print_terminal_header(result)
    call = result.get("call")
    if not call:
        console.print("no call")
        return
    console.print(
        f"call {call['call']}: {call['state']}, members {', '.join(call['members'])}, "
        f"epoch {call['epoch']}, security code {call['security_code'] or '—'}"
    )
    e2ee = call.get("e2ee") or {}
    rejected = ", ".join(f"{k} {v}" for k, v in (e2ee.get("rejected") or {}).items())
    console.print(
        f"  frames protected {e2ee.get('protected', 0)}, decrypted {e2ee.get('unprotected', 0)}"
        + (f", rejected: {rejected}" if rejected else "")
        + (" (in the browser page)" if result.get("engine") == "browser" else "")
    )
    for peer, info in (call.get("peers") or {}).items():
        page = info.get("page")
        if page:
            console.print(
                f"  {peer}: {info.get('transport')}; page decoded {page.get('video_decoded', 0)}"
                f" video frames, showed {page.get('shown', 0)}, longest freeze "
                f"{page.get('longest_freeze_ms', 0)} ms, path {page.get('path')}"
            )
