"""Two copies of one terminal folder (same id, same identity key) started at once: without
a stop they push each other off the exchange several times a second. The exchange sees the
supersede loop, keeps the connection it has and refuses the newcomer, counted, and both
copies say so (issue 9, point 19)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hotline.exchange.client import ClientEvent, ConnectionChanged, ExchangeClient
from hotline.exchange.frames import CLOSE_SUPERSEDED

from .harness import Harness, wait_for
from .lines import make_line


async def drain(client_events: list[ClientEvent], client: ExchangeClient) -> None:
    while True:
        try:
            client_events.append(await client.next_event(timeout=0.05))
        except TimeoutError:
            return


async def test_two_copies_of_one_terminal_end_their_supersede_loop(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    first = await harness.client(server, line, "t0")
    second = ExchangeClient(
        server.url,
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
    )
    harness.clients.append(second)
    await second.start(require_connection=False)
    events: dict[int, list[ClientEvent]] = {0: [], 1: []}
    await asyncio.sleep(3.0)  # harness clients reconnect after 0.05-0.5 s
    await drain(events[0], first)
    await drain(events[1], second)
    supersedes = server.metrics.get("closes_total", "superseded")
    assert supersedes <= 4, f"still looping: {supersedes} supersedes in 3 s"
    assert server.metrics.get("duplicate_terminals_total") >= 1
    assert "hotline_exchange_duplicate_terminals_total" in server.metrics.render()
    await wait_for(lambda: first.connected != second.connected, timeout=2.0)
    connected, refused = (0, 1) if first.connected else (1, 0)
    clients = (first, second)
    assert clients[refused].stats["connect_failed_duplicate_terminal"] >= 1
    # both copies were told, as events the terminal shows
    assert ConnectionChanged(False, "duplicate_terminal") in events[refused]
    assert ConnectionChanged(True, "duplicate_terminal") in events[connected]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    texts = " | ".join(r.getMessage() for r in loud)
    assert "another connection" in texts and "this terminal's identity" in texts  # clients
    assert "duplicate" in texts and "t0" in texts  # the exchange
    assert [e for e in server.store.events(kind="duplicate_terminal")]
    # it stays settled: the refused copy keeps being refused, the other keeps its connection
    before = server.metrics.get("closes_total", "superseded")
    await asyncio.sleep(1.5)
    assert server.metrics.get("closes_total", "superseded") == before
    assert clients[connected].connected and not clients[refused].connected


async def test_a_terminal_that_reconnects_still_supersedes_its_old_connection(
    tmp_path: Path, harness: Harness
) -> None:
    """One copy reconnecting (a new network, a restart) replaces its stale session as
    before: a session that lived longer than ``supersede_young_s`` is no sign of a loop."""
    line = make_line(tmp_path, 2)
    server = await harness.server([line], supersede_young_s=0.3)
    old = await harness.raw(server, line, "t0")
    await old.welcomed()
    for _ in range(5):
        await asyncio.sleep(0.4)
        new = await harness.raw(server, line, "t0")  # the old one never closed
        await new.welcomed()
        code, reason = await old.closed_with()
        assert reason == "superseded" and code in (CLOSE_SUPERSEDED, 1006)
        old = new
    assert server.metrics.get("duplicate_terminals_total") == 0
    assert server.metrics.get("closes_total", "superseded") == 5
