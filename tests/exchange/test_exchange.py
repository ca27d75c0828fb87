"""The exchange on loopback: terminals of a line exchanging envelopes through it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from hotline.exchange.client import (
    ClientEvent,
    ConnectionChanged,
    EnvelopeReceived,
    PresenceChanged,
)

from .harness import Harness, receive_envelopes, wait_for
from .lines import make_line


async def test_two_terminals_exchange_envelopes(tmp_path: Path, harness: Harness) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    a = await harness.client(server, line, "t0")
    b = await harness.client(server, line, "t1")
    sent = [await a.send("t1", "call.offer", f"offer {i}".encode()) for i in range(5)]
    reply = await b.send(None, "call.answer", b"answer")
    seen: list[ClientEvent] = []
    got = await receive_envelopes(b, 5, seen=seen)
    assert [e.body for e in got] == [f"offer {i}".encode() for i in range(5)]
    assert [e.seq for e in got] == [e.seq for e in sent]
    assert all(e.sender == "t0" and e.recipient == "t1" for e in got)
    assert got[0].to_bytes() == sent[0].to_bytes()  # never rewritten
    assert ConnectionChanged(True, "connected") in seen
    back = await receive_envelopes(a, 1)
    assert back[0].body == b"answer" and back[0].recipient is None and back[0] == reply
    # presence: each sees both online
    await wait_for(lambda: a.online == {"t0", "t1"} and b.online == {"t0", "t1"})
    # the exchange reported everything stored; both outboxes are empty
    await wait_for(lambda: a.outbox_size == 0 and b.outbox_size == 0)
    assert server.metrics.get("envelopes_routed_total") == 6
    await wait_for(lambda: server.router.pending_count() == 0)  # all acknowledged
    assert a.connected and b.connected and a.stats["reconnects"] == 0


async def test_ten_terminals_exchange_envelopes(tmp_path: Path, harness: Harness) -> None:
    line = make_line(tmp_path, 10)
    server = await harness.server([line])
    names = line.terminals
    clients = {t: await harness.client(server, line, t) for t in names}
    for i, t in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        await clients[t].send(None, "roster", f"hello from {t}".encode())
        await clients[t].send(nxt, "direct", f"{t} to {nxt}".encode())
    for i, t in enumerate(names):
        got = await receive_envelopes(clients[t], len(names))  # 9 broadcasts + 1 direct
        broadcasts = sorted(e.sender for e in got if e.msg_type == "roster")
        assert broadcasts == sorted(n for n in names if n != t)
        direct = [e for e in got if e.msg_type == "direct"]
        prev = names[(i - 1) % len(names)]
        assert [(e.sender, e.body) for e in direct] == [(prev, f"{prev} to {t}".encode())]
        # from one sender: in order (the broadcast was sent before the direct one)
        from_prev = [e.msg_type for e in got if e.sender == prev]
        assert from_prev == ["roster", "direct"]
    await wait_for(lambda: all(c.online == set(names) for c in clients.values()))
    assert server.metrics.get("envelopes_routed_total") == 20
    assert server.metrics.get("deliveries_sent_total") == 100


async def test_presence_is_pushed(tmp_path: Path, harness: Harness) -> None:
    line = make_line(tmp_path, 3)
    server = await harness.server([line])
    a = await harness.client(server, line, "t0")
    await wait_for(lambda: a.online == {"t0"})
    b = await harness.client(server, line, "t1")
    await wait_for(lambda: a.online == {"t0", "t1"})
    await b.close()
    await wait_for(lambda: a.online == {"t0"})
    events: list[ClientEvent] = []
    while True:
        try:
            events.append(await a.next_event(timeout=0.05))
        except TimeoutError:
            break
    presence = [e.online for e in events if isinstance(e, PresenceChanged)]
    assert presence[-3:] == [frozenset({"t0"}), frozenset({"t0", "t1"}), frozenset({"t0"})]
    assert not any(isinstance(e, EnvelopeReceived) for e in events)


async def test_healthz_and_metrics(tmp_path: Path, harness: Harness) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    await harness.client(server, line, "t0")
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
        async with http.get(base + "/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
    assert health["status"] == "ok" and health["terminals_online"] == 1 and health["lines"] == 1
    assert "# TYPE hotline_exchange_open_connections gauge" in text
    assert "hotline_exchange_terminals_online 1.0" in text
    assert "hotline_exchange_admitted_total 1.0" in text
    await asyncio.sleep(0)
