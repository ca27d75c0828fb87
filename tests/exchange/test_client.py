"""The client against a hostile exchange double: whatever the exchange delivers, the
terminal checks again and refuses forgeries, replays, misrouted, stale and malformed
envelopes, presence of strangers and bad charters, and still acknowledges them."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from hotline.charter import SignedCharter
from hotline.errors import AuthenticationError
from hotline.exchange.client import (
    ClientEvent,
    EnvelopeReceived,
    EnvelopeRejected,
    ExchangeClient,
    PresenceChanged,
    Refusal,
)
from hotline.exchange.frames import (
    PROTOCOL_REASONS,
    UNLISTED_REASON,
    WS_PATH,
    Ack,
    AdvertisedLimits,
    Challenge,
    CharterFrame,
    Deliver,
    Hello,
    Presence,
    Reject,
    ServerFrame,
    Welcome,
    decode_client_frame,
    encode_frame,
)
from hotline.keys import SigningKey

from .harness import envelope, wait_for
from .lines import Line, make_line


class HostileExchange:
    """Admits anyone, then sends whatever frames the test scripted."""

    def __init__(self, script: list[ServerFrame], exchange_ids: list[str] | None = None) -> None:
        self.script = script
        #: the exchange id of each connection's challenge in turn (then the last again)
        self.exchange_ids = exchange_ids or ["hostile"]
        self.connections = 0
        self.received: list[object] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(WS_PATH, self._handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        limits = AdvertisedLimits(65536, 1000.0, 1000, 60.0)
        exchange_id = self.exchange_ids[min(self.connections, len(self.exchange_ids) - 1)]
        self.connections += 1
        await ws.send_bytes(encode_frame(Challenge(os.urandom(32), exchange_id, "store", limits)))
        msg = await ws.receive()
        if msg.type is not WSMsgType.BINARY:
            return ws  # the terminal refused the challenge
        hello = decode_client_frame(msg.data, 4096)
        assert isinstance(hello, Hello)
        await ws.send_bytes(encode_frame(Welcome(hello.terminal_id, frozenset(), None, 1)))
        for frame in self.script:
            await ws.send_bytes(encode_frame(frame))
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                self.received.append(decode_client_frame(msg.data, 1 << 20))
        return ws

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def hostile() -> AsyncIterator[list[HostileExchange]]:
    made: list[HostileExchange] = []
    yield made
    for h in made:
        await h.stop()


async def _events(client: ExchangeClient, quiet: float = 0.3) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while True:
        try:
            out.append(await client.next_event(timeout=quiet))
        except TimeoutError:
            return out


def _tampered(signed: SignedCharter) -> SignedCharter:
    body = dataclasses.replace(signed.charter, version=signed.version + 1)
    return SignedCharter(body, signed.signatures)  # the old signatures do not cover it


async def test_client_checks_everything_again(
    tmp_path: Path, hostile: list[HostileExchange]
) -> None:
    line = make_line(tmp_path, 3)
    other = make_line(tmp_path, 2, "line-2")
    now = int(time.time() * 1000)
    good = envelope(line, "t1", "t0", 10)
    script: list[ServerFrame] = [
        Deliver(1, good.to_bytes()),
        Deliver(2, good.to_bytes()),  # replayed
        Deliver(3, envelope(line, "t1", "t0", 9).to_bytes()),  # older number
        Deliver(4, envelope(line, "t1", "t0", 20, key=SigningKey.generate()).to_bytes()),
        Deliver(5, envelope(other, "t1", "t0", 21).to_bytes()),  # another line's terminal
        Deliver(6, envelope(line, "t1", "t2", 22).to_bytes()),  # for another terminal
        Deliver(7, envelope(line, "t1", "t0", 23, now_ms=now - 3_600_000).to_bytes()),
        Deliver(8, envelope(line, "t1", "t0", 24, now_ms=now + 3_600_000).to_bytes()),
        Deliver(9, envelope(line, "t0", None, 25).to_bytes()),  # our own, echoed back
        Deliver(10, b"\x00 not an envelope"),
        Presence(frozenset({"t1", "ghost"})),
        CharterFrame(_tampered(line.signed).to_file_bytes()),
        CharterFrame(b"garbage"),
        Deliver(11, envelope(line, "t1", None, 30).to_bytes()),
        Reject(99, "queue_full", "t2"),
    ]
    exchange = HostileExchange(script)
    hostile.append(exchange)
    await exchange.start()
    client = ExchangeClient(
        exchange.url, charter=line.signed, terminal_id="t0", key=line.keys["t0"], ack_delay_s=0.01
    )
    await client.start()
    try:
        events = await _events(client)
        received = [e.envelope for e in events if isinstance(e, EnvelopeReceived)]
        assert [(e.sender, e.seq) for e in received] == [("t1", 10), ("t1", 30)]
        presence = [e.online for e in events if isinstance(e, PresenceChanged)]
        assert presence == [frozenset({"t1"})]  # strangers are not shown
        assert EnvelopeRejected(99, "queue_full", "t2") in events
        stats = client.stats
        assert stats["rejected_replay"] == 2
        assert stats["rejected_bad_signature"] == 1
        assert stats["rejected_wrong_line"] == 1
        assert stats["rejected_misrouted"] == 2  # for another terminal; our own echo
        assert stats["rejected_stale"] == 2
        assert stats["rejected_encoding"] == 1
        assert stats["charter_rejected_bad_signature"] == 1
        assert stats["charter_rejected_charter_format"] == 1
        assert client.charter.version == 1
        # every delivery is acknowledged, refused ones included, so none comes back
        await wait_for(lambda: Ack(11) in exchange.received)
    finally:
        await client.close()


async def test_exchange_id_must_match_the_pin(
    tmp_path: Path, hostile: list[HostileExchange]
) -> None:
    # The pin is checked on the TLS certificate (test_tls.py). The challenge's exchange id
    # must name the same exchange too, so that a terminal never signs an admission meant
    # for another exchange (one exchange relaying another's challenge).
    line: Line = make_line(tmp_path, 2)
    exchange = HostileExchange([])
    hostile.append(exchange)
    await exchange.start()
    client = ExchangeClient(
        exchange.url,
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        tls_fingerprint="sha256:" + "11" * 32,
    )
    with pytest.raises(AuthenticationError) as info:
        await client.start()
    assert info.value.reason == "exchange_id"
    assert exchange.received == []  # no hello was signed or sent


async def test_forged_reject_reasons_become_a_fixed_set(
    tmp_path: Path, hostile: list[HostileExchange]
) -> None:
    """Rejects with reasons and recipients of the exchange's making (seeded random text):
    the client reports them with the protocol's reasons only, as terminals of the charter
    only, and its counters stay a fixed set (issue 9, point 11)."""
    seed = int(os.environ.get("HOTLINE_HOSTILE_SEED", "1011"))
    print(f"hostile seed {seed}")
    rng = random.Random(seed)
    line = make_line(tmp_path, 3)
    script: list[ServerFrame] = [
        Reject(
            rng.choice([None, rng.randrange(1, 10**6)]),
            rng.choice(["replay", "queue_full", rng.randbytes(rng.randrange(1, 900)).hex()]),
            rng.choice([None, "t1", rng.randbytes(20).hex()]),
        )
        for _ in range(400)
    ]
    exchange = HostileExchange(script)
    hostile.append(exchange)
    await exchange.start()
    client = ExchangeClient(
        exchange.url, charter=line.signed, terminal_id="t0", key=line.keys["t0"]
    )
    await client.start()
    try:
        events = [e for e in await _events(client) if isinstance(e, EnvelopeRejected)]
        assert len(events) == 400  # every one reported, the charter rejects too
        assert {e.reason for e in events} <= PROTOCOL_REASONS | {UNLISTED_REASON}
        assert {e.recipient for e in events} <= {None, "t1"}
        assert len(client.stats) <= 8, dict(client.stats)
    finally:
        await client.close()


async def test_a_foreign_exchange_id_on_reconnection_is_loud(
    tmp_path: Path, hostile: list[HostileExchange], caplog: pytest.LogCaptureFixture
) -> None:
    """The first connection names the pinned exchange; after a drop the same address
    names another one (an exchange relaying another's challenge): refused, logged at
    WARNING, reported as an event (issue 9, point 8)."""
    line = make_line(tmp_path, 2)
    pin = "sha256:" + "11" * 32
    exchange = HostileExchange([], exchange_ids=[pin, "sha256:" + "22" * 32])
    hostile.append(exchange)
    await exchange.start()
    client = ExchangeClient(
        exchange.url,
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        tls_fingerprint=pin,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    await client.start()
    try:
        assert exchange.runner is not None
        for ws in list(exchange.runner.server.connections if exchange.runner.server else []):
            ws.force_close()
        events: list[ClientEvent] = []
        for _ in range(40):
            events += await _events(client, quiet=0.1)
            if any(isinstance(e, Refusal) for e in events):
                break
        refusals = [e for e in events if isinstance(e, Refusal)]
        assert refusals and refusals[0].reason == "exchange_id"
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("exchange" in r.getMessage() and "id" in r.getMessage() for r in warnings)
    finally:
        await client.close()
