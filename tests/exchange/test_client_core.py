"""The exchange client's sans-I/O core, in memory: no sockets, a virtual clock, and a
hostile exchange double (``memory.py``) whose faults come from a printed, replayable seed.
Issue 9, points 8-11 and 15, and the connection policy (failover, probe, backoff)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from hotline.call.machine import MSG_RING, RING_TIMEOUT_S
from hotline.charter import SignedCharter
from hotline.e2ee.events import PeerCharterVersion
from hotline.encoding import encode
from hotline.envelope import Envelope
from hotline.errors import ExchangeUnavailable, TLSPinMismatch
from hotline.exchange.client_core import (
    REASON_BACK_TO_PRIMARY,
    REORDER_WINDOW,
    CharterUpdated,
    ClientConfig,
    ClientCore,
    Connect,
    ConnectionChanged,
    Disconnect,
    EnvelopeReceived,
    EnvelopeRejected,
    LinkState,
    Probe,
    Refusal,
    make_endpoints,
)
from hotline.exchange.frames import (
    PROTOCOL_REASONS,
    UNLISTED_REASON,
    AdvertisedLimits,
    Challenge,
    CharterFrame,
    Hello,
    Presence,
    Reject,
    Welcome,
    decode_client_frame,
    encode_frame,
)
from hotline.keys import SigningKey
from hotline.ratelog import MAX_DETAIL
from hotline.terminal.dispatch import Route, dispatch

from ..e2ee.net import Delivery, Net, Relay
from .harness import envelope
from .lines import make_line
from .memory import T0, Faults, MemoryExchange, hostile_seed


def received(exchange: MemoryExchange, tid: str) -> list[Envelope]:
    return [e.envelope for e in exchange.events(tid) if isinstance(e, EnvelopeReceived)]


def refusals(exchange: MemoryExchange, tid: str) -> list[Refusal]:
    return [e for e in exchange.events(tid) if isinstance(e, Refusal)]


def _tampered(signed: SignedCharter) -> SignedCharter:
    body = dataclasses.replace(signed.charter, version=signed.version + 1)
    return SignedCharter(body, signed.signatures)  # the old signatures do not cover it


# --- point 9: reordering and duplicates ------------------------------------------------------


def test_reordered_and_duplicated_envelopes_are_each_taken_once(tmp_path: Path) -> None:
    seed = hostile_seed(9001)
    line = make_line(tmp_path, 2)
    exchange = MemoryExchange(line, seed, faults=Faults(reorder=0.4, duplicate=0.3))
    alpha, _ = exchange.terminal("t0"), exchange.terminal("t1")
    sent = [alpha.send("t1", "test", f"{i}".encode(), exchange.now) for i in range(300)]
    exchange.pump()
    exchange.flush_held()
    got = received(exchange, "t1")
    assert sorted(e.seq for e in got) == [e.seq for e in sent], f"seed {seed}"  # all, once
    order = [e.seq for e in got]
    assert order != sorted(order), f"seed {seed}: the double did not reorder"
    # every duplicate was refused, counted and shown, none as "behind"
    dupes = refusals(exchange, "t1")
    assert dupes and {r.reason for r in dupes} == {"delivery_replay"}, f"seed {seed}"
    assert len(dupes) == exchange.duplicated, f"seed {seed}"
    assert all("behind" not in r.detail for r in dupes), f"seed {seed}"
    assert exchange.links["t1"].core.stats["rejected_replay"] == len(dupes)
    # refused deliveries are acknowledged too: the exchange can let go of everything
    exchange.advance(1.0)
    assert exchange.links["t1"].acked == exchange.links["t1"].next_delivery


def test_an_envelope_held_back_beyond_the_window_is_refused_and_shown(tmp_path: Path) -> None:
    seed = hostile_seed(9002)
    line = make_line(tmp_path, 3)
    exchange = MemoryExchange(line, seed)
    near, far = exchange.terminal("t0"), exchange.terminal("t1")
    exchange.terminal("t2")
    within = near.send("t2", "test", b"held", exchange.now)
    first = far.send("t2", "test", b"held", exchange.now)
    exchange.withhold = lambda env: env.seq in (within.seq, first.seq)
    exchange.pump()
    exchange.withhold = lambda env: False
    for i in range(REORDER_WINDOW - 1):  # from t0: the held one stays within the window
        near.send("t2", "test", f"{i}".encode(), exchange.now)
    for i in range(REORDER_WINDOW + 1):  # from t1: it falls out of the window
        far.send("t2", "test", f"{i}".encode(), exchange.now)
    exchange.pump()
    exchange.release()
    got = received(exchange, "t2")
    assert len(got) == 2 * REORDER_WINDOW + 1, f"seed {seed}"
    seqs = {(e.sender, e.seq) for e in got}
    assert ("t0", within.seq) in seqs  # out of order, but still among the window's latest
    assert ("t1", first.seq) not in seqs  # further back than the window: never taken
    behind = refusals(exchange, "t2")
    assert [r.reason for r in behind] == ["delivery_replay"]
    assert "behind" in behind[0].detail and "t1" in behind[0].detail


# --- point 10: a withheld ring -------------------------------------------------------------


def _ring(core: ClientCore, to: str, call_id: str, now: float) -> Envelope:
    body = encode({"call": call_id, "members": [core.terminal_id, to]})
    return core.send(to, MSG_RING, body, now)


def _decide(exchange: MemoryExchange, env: Envelope) -> tuple[Route, str]:
    age_s = (exchange.wall_ms() - env.timestamp_ms) / 1000
    decision = dispatch(
        msg_type=env.msg_type,
        sender=env.sender,
        call_id="c1",
        age_s=age_s,
        ring_members=2,
        ring_purpose="call",
        current=None,
        known_calls=set(),
        max_participants=4,
    )
    return decision.route, decision.detail


def test_a_withheld_ring_released_late_never_rings(tmp_path: Path) -> None:
    seed = hostile_seed(9003)
    line = make_line(tmp_path, 2)
    exchange = MemoryExchange(line, seed)
    alpha, _ = exchange.terminal("t0"), exchange.terminal("t1")
    exchange.withhold = lambda env: env.msg_type == MSG_RING
    _ring(alpha, "t1", "c1", exchange.now)
    exchange.pump()
    assert received(exchange, "t1") == []
    exchange.advance(RING_TIMEOUT_S + 30)  # the caller gave up long ago
    exchange.release()
    (ring,) = received(exchange, "t1")  # fresh as an envelope (max_age_s is 300 s) ...
    route, detail = _decide(exchange, ring)
    assert route is Route.REFUSE and "90 s old" in detail  # ... but far too old as a ring
    # a ring withheld for longer than envelopes live is refused by the core itself
    _ring(alpha, "t1", "c2", exchange.now)
    exchange.pump()
    exchange.advance(301.0)
    exchange.release()
    assert [r.reason for r in refusals(exchange, "t1")] == ["delivery_stale"]
    assert exchange.links["t1"].core.stats["rejected_stale"] == 1
    # a ring that arrives in time rings
    exchange.withhold = lambda env: False
    _ring(alpha, "t1", "c3", exchange.now)
    exchange.advance(2.0)
    route, _ = _decide(exchange, received(exchange, "t1")[-1])
    assert route is Route.NEW_CALL


# --- point 8: every refusal counted by reason and shown --------------------------------------


def test_every_refusal_is_counted_by_reason_and_reported(tmp_path: Path) -> None:
    seed = hostile_seed(9004)
    line = make_line(tmp_path, 3)
    other = make_line(tmp_path, 2, "line-2")
    exchange = MemoryExchange(line, seed)
    core = exchange.terminal("t0")
    now_ms = exchange.wall_ms()
    good = envelope(line, "t1", "t0", 10, now_ms=now_ms)
    forged = [
        (good.to_bytes(), None),
        (good.to_bytes(), "delivery_replay"),
        (envelope(line, "t1", "t0", 20, key=SigningKey.generate(), now_ms=now_ms).to_bytes(),
         "delivery_bad_signature"),
        (envelope(other, "t1", "t0", 21, now_ms=now_ms).to_bytes(), "delivery_wrong_line"),
        (envelope(line, "t1", "t2", 22, now_ms=now_ms).to_bytes(), "delivery_misrouted"),
        (envelope(line, "t1", "t0", 23, now_ms=now_ms - 3_600_000).to_bytes(),
         "delivery_stale"),
        (envelope(line, "t1", "t0", 24, now_ms=now_ms + 3_600_000).to_bytes(),
         "delivery_stale"),
        (envelope(line, "t0", None, 25, now_ms=now_ms).to_bytes(), "delivery_misrouted"),
        (b"\x00 not an envelope", "delivery_encoding"),
    ]  # fmt: skip
    for raw, _ in forged:
        exchange.inject_raw("t0", raw)
    exchange.inject("t0", CharterFrame(_tampered(line.signed).to_file_bytes()))
    exchange.inject("t0", CharterFrame(b"garbage"))
    exchange.inject("t0", Presence(frozenset({"t1", "ghost"})))
    exchange.pump()
    reasons = [r.reason for r in refusals(exchange, "t0")]
    expected = [reason for _, reason in forged if reason is not None]
    assert reasons[: len(expected)] == expected, f"seed {seed}: {reasons}"
    assert reasons[len(expected) :] == ["charter_bad_signature", "charter_charter_format"]
    assert received(exchange, "t0") == [good]
    for reason in set(expected):
        name = "rejected_" + reason.removeprefix("delivery_")
        assert core.stats[name] == expected.count(reason), (name, dict(core.stats))
    assert all(len(r.detail) <= MAX_DETAIL for r in refusals(exchange, "t0"))
    assert core.online == {"t1"}  # a stranger is never shown online
    exchange.advance(1.0)
    assert exchange.links["t0"].acked == exchange.links["t0"].next_delivery


def test_a_foreign_exchange_id_or_certificate_is_refused_and_reported(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    pin = "sha256:" + "11" * 32
    config = ClientConfig(reconnect_min_s=0.1, reconnect_max_s=1.0)
    core = ClientCore(
        config,
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        endpoints=make_endpoints("wss://127.0.0.1:9", pin, (), line.signed),
        now=T0,
        rng=random.Random(1),
    )
    core.start(T0)
    action = core.next_action()
    assert isinstance(action, Connect)
    core.connection_made(action.attempt, T0)
    limits = AdvertisedLimits(65536, 50.0, 200, 60.0)
    core.receive_frame(encode_frame(Challenge(b"c" * 32, "sha256:" + "22" * 32, "s", limits)), T0)
    assert core.frames_to_send(T0) == []  # nothing was signed for the other exchange
    assert isinstance(core.next_action(), Disconnect)
    events = [core.next_event(), core.next_event()]
    assert events == [
        ConnectionChanged(False, "exchange_id"),
        Refusal("exchange_id", events[1].detail if isinstance(events[1], Refusal) else ""),
    ]
    timer = core.get_timer()
    assert timer is not None
    core.handle_timer(timer)
    action = core.next_action()
    assert isinstance(action, Connect) and action.attempt == 2
    core.connection_failed(action.attempt, TLSPinMismatch("not the pinned certificate"), timer)
    assert core.stats["tls_pin_mismatch"] == 1 and core.stats["connect_failed_exchange_id"] == 1
    assert [e for e in iter(core.next_event, None)] == [
        ConnectionChanged(False, "tls_pin"),
        Refusal("tls_pin", "the exchange at wss://127.0.0.1:9/v1/exchange: not the pinned "
                "certificate"),
    ]  # fmt: skip


# --- point 11: what the exchange can fill ----------------------------------------------------


def test_a_flood_of_forgeries_stays_bounded(tmp_path: Path) -> None:
    seed = hostile_seed(9005)
    rng = random.Random(seed)
    line = make_line(tmp_path, 3)
    exchange = MemoryExchange(line, seed)
    core = exchange.terminal("t0", max_events=50)
    link = exchange.links["t0"]
    for _ in range(1500):
        kind = rng.randrange(4)
        if kind == 0:
            reason = rng.choice(
                ["replay", "queue_full", rng.randbytes(rng.randrange(1, 900)).hex()]
            )
            to = rng.choice([None, "t1", rng.randbytes(rng.choice([20, 40])).hex()])
            exchange.inject("t0", Reject(rng.choice([None, rng.randrange(1, 10**6)]), reason, to))
        elif kind == 1:
            exchange.inject_raw("t0", rng.randbytes(rng.randrange(1, 2000)))
        elif kind == 2:
            exchange.inject("t0", CharterFrame(rng.randbytes(rng.randrange(1, 2000))))
        else:
            ghosts = frozenset(rng.randbytes(8).hex() for _ in range(rng.randrange(1, 50)))
            exchange.inject("t0", Presence(ghosts | {"t1"}))
    # the application takes nothing for a while: the core holds at most max_events, the
    # rest stays unread at the exchange (backpressure), never in the terminal's memory
    taken, link.events = link.events, []
    while link.inbox and not core.receiving_paused:
        core.receive_frame(link.inbox.popleft(), exchange.now)
    assert core.receiving_paused and link.inbox, f"seed {seed}"
    link.events = taken
    exchange.pump()
    events = exchange.events("t0")
    rejected = [e for e in events if isinstance(e, EnvelopeRejected)]
    assert rejected, f"seed {seed}"
    assert {e.reason for e in rejected} <= PROTOCOL_REASONS | {UNLISTED_REASON}
    assert {e.recipient for e in rejected} <= {None, "t1"}
    assert all(len(r.detail) <= MAX_DETAIL for r in refusals(exchange, "t0"))
    assert len(core.stats) <= 12, dict(core.stats)  # counter names from a fixed set
    assert core.online <= {"t0", "t1"}
    # and the line still works
    alpha = exchange.terminal("t1")
    sent = alpha.send("t0", "test", b"after the flood", exchange.now)
    exchange.pump()
    assert received(exchange, "t0")[-1] == sent


# --- point 15: charter versions --------------------------------------------------------------


def test_a_newer_charter_reaches_the_terminal_that_holds_an_older_one(tmp_path: Path) -> None:
    seed = hostile_seed(9006)
    v1 = make_line(tmp_path, 2)
    v2 = v1.with_version(2)
    exchange = MemoryExchange(v1, seed, charter_version=1)
    accepted: list[int] = []

    def accept(signed: SignedCharter) -> SignedCharter:
        accepted.append(signed.version)
        return signed

    old = exchange.terminal("t1")
    old_core = exchange.links["t1"].core
    old_core._accept_charter = accept  # as the daemon's charter store does
    new = exchange.terminal("t0", line=v2)  # says version 2 in its hello; pushes it
    assert [SignedCharter.from_file_bytes(c).version for c in exchange.charters_pushed] == [2]
    assert old.charter.version == 2 and accepted == [2]
    assert [e for e in exchange.events("t1") if isinstance(e, CharterUpdated)] == [
        CharterUpdated(old.charter)
    ]
    # an older charter offered to the newer terminal: it answers with its own
    exchange.inject("t0", CharterFrame(v1.signed.to_file_bytes()))
    exchange.pump()
    assert new.charter.version == 2 and len(exchange.charters_pushed) == 2
    assert not refusals(exchange, "t0")
    # a forged version 3 is refused, counted and reported; version 2 stays
    exchange.inject("t1", CharterFrame(_tampered(v2.signed).to_file_bytes()))
    exchange.pump()
    assert [r.reason for r in refusals(exchange, "t1")] == ["charter_bad_signature"]
    assert old.charter.version == 2 and old.stats["charter_rejected_bad_signature"] == 1


def test_the_hello_says_the_charter_version(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2).with_version(3)
    core = ClientCore(
        ClientConfig(),
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        endpoints=make_endpoints("ws://127.0.0.1:1", None, (), line.signed),
        now=T0,
    )
    core.start(T0)
    action = core.next_action()
    assert isinstance(action, Connect)
    core.connection_made(action.attempt, T0)
    limits = AdvertisedLimits(65536, 50.0, 200, 60.0)
    core.receive_frame(encode_frame(Challenge(b"c" * 32, "x", "s", limits)), T0)
    (hello,) = [decode_client_frame(f, 4096) for f in core.frames_to_send(T0)]
    assert isinstance(hello, Hello) and hello.charter_version == 3


# --- the connection policy is the core's ------------------------------------------------------


def _welcome(core: ClientCore, attempt: int, now: float) -> None:
    core.connection_made(attempt, now)
    limits = AdvertisedLimits(65536, 50.0, 200, 60.0)
    core.receive_frame(encode_frame(Challenge(b"c" * 32, "x", "s", limits)), now)
    core.frames_to_send(now)
    core.receive_frame(encode_frame(Welcome("t0", frozenset({"t0"}), None, 1)), now)


def test_failover_and_the_way_back_to_the_first_exchange(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    config = ClientConfig(primary_probe_s=3.0, reconnect_min_s=0.2, reconnect_max_s=4.0)
    endpoints = make_endpoints("ws://127.0.0.1:1", None, [("ws://127.0.0.1:2", None)], line.signed)
    core = ClientCore(
        config,
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        endpoints=endpoints,
        now=T0,
        rng=random.Random(5),
    )
    core.start(T0)
    first = core.next_action()
    assert first == Connect(endpoints[0], 1)
    core.connection_failed(1, ExchangeUnavailable("refused"), T0)
    assert core.state is LinkState.WAITING and core.endpoint == endpoints[1]
    retry = core.get_timer()
    assert retry is not None and T0 + 0.1 <= retry <= T0 + 0.2
    core.handle_timer(retry)
    assert core.next_action() == Connect(endpoints[1], 2)
    _welcome(core, 2, retry)
    assert core.connected and not core.on_primary
    # on the fallback: probe the first every primary_probe_s
    assert core.get_timer() == retry + 3.0
    core.handle_timer(retry + 3.0)
    assert core.next_action() == Probe(endpoints[0])
    assert core.get_timer() is None  # one probe at a time
    core.probe_result(False, retry + 3.5)
    assert core.get_timer() == retry + 6.5
    core.handle_timer(retry + 6.5)
    assert core.next_action() == Probe(endpoints[0])
    core.probe_result(True, retry + 7.0)
    assert core.next_action() == Disconnect(2, REASON_BACK_TO_PRIMARY)
    assert core.get_timer() == retry + 7.0  # at once
    core.handle_timer(retry + 7.0)
    assert core.next_action() == Connect(endpoints[0], 3)
    assert core.stats["back_to_primary"] == 1
    # a close of the old connection arriving late changes nothing
    core.connection_closed(2, 1000, "", retry + 7.1)
    assert core.state is LinkState.CONNECTING


def test_backoff_doubles_to_its_ceiling_with_jitter(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    core = ClientCore(
        ClientConfig(reconnect_min_s=0.2, reconnect_max_s=4.0, connect_timeout_s=5.0),
        charter=line.signed,
        terminal_id="t0",
        key=line.keys["t0"],
        endpoints=make_endpoints("ws://127.0.0.1:1", None, (), line.signed),
        now=T0,
        rng=random.Random(7),
    )
    core.start(T0)
    now, delays = T0, []
    for _ in range(10):
        action = core.next_action()
        assert isinstance(action, Connect)
        core.connection_failed(action.attempt, ExchangeUnavailable("down"), now)
        timer = core.get_timer()
        assert timer is not None
        delays.append(timer - now)
        now = timer
        core.handle_timer(now)
    for i, delay in enumerate(delays):
        ceiling = min(4.0, 0.2 * 2**i)
        assert ceiling / 2 <= delay <= ceiling, (i, delays)
    # an exchange that opens the connection but never says a word: the handshake times out
    action = core.next_action()
    assert isinstance(action, Connect)
    core.connection_made(action.attempt, now)
    assert core.get_timer() == now + 5.0
    core.handle_timer(now + 5.0)
    assert core.next_action() == Disconnect(action.attempt, "unavailable")
    assert core.state is LinkState.WAITING


def test_a_lost_connection_resends_what_the_exchange_did_not_store(tmp_path: Path) -> None:
    seed = hostile_seed(9007)
    line = make_line(tmp_path, 2)
    exchange = MemoryExchange(line, seed)
    alpha = exchange.terminal("t0")
    exchange.terminal("t1")
    exchange.up = False
    exchange.drop("t0")
    assert not alpha.connected
    sent = [alpha.send("t1", "test", f"{i}".encode(), exchange.now) for i in range(5)]
    exchange.advance(10.0)
    assert alpha.outbox_size == 5 and received(exchange, "t1") == []
    exchange.up = True
    exchange.advance(10.0)
    assert alpha.connected and alpha.outbox_size == 0
    assert [e.seq for e in received(exchange, "t1")] == [e.seq for e in sent]
    changes = [e for e in exchange.events("t0") if isinstance(e, ConnectionChanged)]
    assert changes[-3:] == [
        ConnectionChanged(False, "connection_lost"),
        ConnectionChanged(False, "unavailable"),
        ConnectionChanged(True, "connected"),
    ]
    assert alpha.stats["reconnects"] == 1


@pytest.mark.parametrize("field", ["reconnect_min_s", "max_outbox"])
def test_the_configuration_refuses_nonsense(field: str) -> None:
    from hotline.errors import UsageError

    with pytest.raises(UsageError):
        ClientConfig(**{field: 0})


# --- the terminal level: key agreement through the cores and the hostile exchange ------------


class CoreRelay(Relay):
    """Carries the key sessions' messages as envelopes through each terminal's exchange
    core and the in-memory exchange (with its faults); hands on what the cores accept."""

    def __init__(self, exchange: MemoryExchange) -> None:
        self.exchange = exchange
        self.taken = {tid: 0 for tid in exchange.links}

    def route(self, d: Delivery, net: Net) -> list[Delivery]:
        self.exchange.links[d.sender].core.send(d.recipient, d.msg_type, d.body, self.exchange.now)
        return []

    def flush(self, net: Net) -> list[Delivery]:
        self.exchange.pump()
        self.exchange.flush_held()
        out = []
        for tid in self.taken:
            events = self.exchange.events(tid)
            for event in events[self.taken[tid] :]:
                if isinstance(event, EnvelopeReceived):
                    env = event.envelope
                    out.append(Delivery(env.sender, tid, env.msg_type, env.body))
            self.taken[tid] = len(events)
        return out


def test_key_agreement_through_a_hostile_exchange_names_both_charter_versions(
    tmp_path: Path,
) -> None:
    """Two terminals' key sessions talk only through their exchange cores and the seeded
    hostile double (reordering, duplicates): they agree on an epoch and a code; when one
    moves to charter version 2, the other says which versions differ, not only
    wrong_context (point 15); every duplicate is refused by the core and shown."""
    seed = hostile_seed(9008)
    line = make_line(tmp_path, 2)
    exchange = MemoryExchange(line, seed, faults=Faults(reorder=0.3, duplicate=0.3))
    for tid in ("t0", "t1"):
        exchange.terminal(tid)
    net = Net(["t0", "t1"], seed=seed, relay=CoreRelay(exchange), keys=dict(line.keys))
    net.set_view(["t0", "t1"])
    assert net.agreed(["t0", "t1"]) >= 1, f"seed {seed}"
    net["t0"].session.update_directory(net.directory, 2, net.now)
    net.pump()
    reports = [e for e in net["t1"].events if isinstance(e, PeerCharterVersion)]
    assert reports == [PeerCharterVersion("t0", 2, 1)], f"seed {seed}"
    assert reports[0].message == "peer t0 has charter version 2; this terminal has 1"
    # every extra copy the double delivered was refused once, as a duplicate
    assert len(refusals(exchange, "t0")) + len(refusals(exchange, "t1")) == exchange.duplicated
    for tid in ("t0", "t1"):
        assert {r.reason for r in refusals(exchange, tid)} <= {"delivery_replay"}
        assert all("behind" not in r.detail for r in refusals(exchange, tid)), f"seed {seed}"
