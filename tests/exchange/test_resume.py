"""Drops, reconnection and resume: nothing lost, nothing twice, within the window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hotline.exchange.client import ConnectionChanged, PresenceChanged

from .harness import Harness, Proxy, receive_envelopes, wait_for
from .lines import make_line


@pytest.fixture
async def proxy_factory() -> AsyncIterator[list[Proxy]]:
    proxies: list[Proxy] = []
    yield proxies
    for proxy in proxies:
        await proxy.close()


async def _proxy(proxies: list[Proxy], port: int) -> Proxy:
    proxy = Proxy(port)
    await proxy.start()
    proxies.append(proxy)
    return proxy


async def test_recipient_drops_and_resumes(
    tmp_path: Path, harness: Harness, proxy_factory: list[Proxy]
) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    proxy = await _proxy(proxy_factory, server.port)
    a = await harness.client(server, line, "t0")
    b = await harness.client(proxy.url(server.url), line, "t1")
    for i in range(5):
        await a.send("t1", "n", str(i).encode())
    first = await receive_envelopes(b, 2)
    await wait_for(lambda: b.stats["received"] == 5)  # the rest are read but not yet taken
    proxy.down = True
    proxy.cut()
    await wait_for(lambda: not b.connected)
    await wait_for(lambda: a.online == {"t0"})
    for i in range(5, 10):
        await a.send("t1", "n", str(i).encode())
    await wait_for(lambda: a.outbox_size == 0)  # stored by the exchange for t1
    assert server.router.pending_count() >= 5
    proxy.down = False
    await wait_for(lambda: b.connected)  # 2, 3, 4 still untaken: the exchange sends them again
    rest = await receive_envelopes(b, 8)
    got = first + rest
    assert [e.body for e in got] == [str(i).encode() for i in range(10)]
    assert [e.seq for e in got] == sorted({e.seq for e in got})  # in order, each once
    await wait_for(lambda: b.connected and server.router.pending_count() == 0)
    with pytest.raises(TimeoutError):
        await receive_envelopes(b, 1, timeout=0.3)  # nothing more, nothing twice
    assert b.stats["reconnects"] >= 1
    assert b.stats["rejected_replay"] >= 1, b.stats  # redelivered unacknowledged ones, dropped here


async def test_sender_drops_while_sending(
    tmp_path: Path, harness: Harness, proxy_factory: list[Proxy]
) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    proxy = await _proxy(proxy_factory, server.port)
    a = await harness.client(proxy.url(server.url), line, "t0")
    b = await harness.client(server, line, "t1")
    for i in range(20):
        await a.send(None, "n", str(i).encode())
        if i == 9:
            proxy.cut()  # mid-stream: some written, some not, none reported stored
    got = await receive_envelopes(b, 20)
    assert [e.body for e in got] == [str(i).encode() for i in range(20)]
    await wait_for(lambda: a.outbox_size == 0)
    with pytest.raises(TimeoutError):
        await receive_envelopes(b, 1, timeout=0.3)
    assert a.stats["reconnects"] >= 1
    assert server.metrics.get("envelopes_routed_total") == 20
    assert server.metrics.get("envelopes_rejected_total", "replay") == 0  # nothing resent twice


async def test_events_on_drop_and_reconnect(
    tmp_path: Path, harness: Harness, proxy_factory: list[Proxy]
) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    proxy = await _proxy(proxy_factory, server.port)
    b = await harness.client(proxy.url(server.url), line, "t1")
    proxy.cut()
    await wait_for(lambda: b.stats["reconnects"] >= 1 and b.connected)
    events = []
    while True:
        try:
            events.append(await b.next_event(timeout=0.1))
        except TimeoutError:
            break
    changes = [e for e in events if isinstance(e, ConnectionChanged)]
    assert [c.connected for c in changes] == [True, False, True]
    assert changes[1].reason != "connected"
    assert any(isinstance(e, PresenceChanged) for e in events)


async def test_after_the_window_the_exchange_forgets(tmp_path: Path, harness: Harness) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line], window_s=0.3)
    a = await harness.client(server, line, "t0")
    await a.send("t1", "n", b"too late")
    await wait_for(lambda: a.outbox_size == 0)
    await wait_for(lambda: server.metrics.get("deliveries_expired_total") == 1)
    b = await harness.client(server, line, "t1")
    with pytest.raises(TimeoutError):
        await receive_envelopes(b, 1, timeout=0.3)
    await a.send("t1", "n", b"in time")
    assert [e.body for e in await receive_envelopes(b, 1)] == [b"in time"]


async def test_client_state_resumes_across_a_terminal_restart(
    tmp_path: Path, harness: Harness
) -> None:
    line = make_line(tmp_path, 2)
    server = await harness.server([line])
    a = await harness.client(server, line, "t0")
    b = await harness.client(server, line, "t1", ack_delay_s=60.0)  # never acknowledges
    for i in range(4):
        await a.send("t1", "n", str(i).encode())
    got = await receive_envelopes(b, 2)
    state = b.state
    assert state.seen == {"t0": got[1].seq} and state.delivered > 0
    await b.close()
    # a restarted t1 with the persisted state gets exactly the two it had not taken
    b2 = await harness.client(server, line, "t1", state=state)
    rest = await receive_envelopes(b2, 2)
    assert [e.body for e in got + rest] == [b"0", b"1", b"2", b"3"]
    with pytest.raises(TimeoutError):
        await receive_envelopes(b2, 1, timeout=0.3)
    # and its own numbers continue above the ones it used before
    before = b2.state.last_seq
    env = await b2.send("t0", "n", b"x")
    assert env.seq > before >= state.last_seq
    assert [e.seq for e in await receive_envelopes(a, 1)] == [env.seq]
