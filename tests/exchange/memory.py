"""An exchange in memory for terminals' :class:`ClientCore` s, honest or hostile, on a
virtual clock: no sockets, no sleeping, and every fault drawn from one seeded generator
(replay a run with ``HOTLINE_HOSTILE_SEED=<seed>``; every test prints its seed).

The double speaks the exchange's side of the protocol (challenge, welcome, accepted,
deliveries, presence, charters) to the cores of the terminals of one line. Hostile, it
reorders deliveries, delivers them twice, withholds what a predicate picks and releases
it later, forges rejects with reasons and recipients of its own making, and floods.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hotline.envelope import Envelope
from hotline.errors import ExchangeUnavailable
from hotline.exchange.client_core import (
    ClientConfig,
    ClientCore,
    ClientEvent,
    Connect,
    Disconnect,
    LinkState,
    Probe,
    make_endpoints,
)
from hotline.exchange.frames import (
    Accepted,
    Ack,
    AdvertisedLimits,
    Challenge,
    CharterFrame,
    Deliver,
    Hello,
    Presence,
    Send,
    ServerFrame,
    Welcome,
    auth_message,
    decode_client_frame,
    encode_frame,
)

from .lines import Line

#: the virtual clock starts here (monotonic seconds); wall time is real time at the start
T0 = 1000.0


def hostile_seed(default: int) -> int:
    seed = int(os.environ.get("HOTLINE_HOSTILE_SEED", str(default)))
    print(f"hostile seed {seed} (replay with HOTLINE_HOSTILE_SEED={seed})")
    return seed


@dataclass
class Faults:
    """What the exchange does wrong, as chances per delivery."""

    #: hold a delivery back and let up to ``reorder_depth`` later ones pass it
    reorder: float = 0.0
    reorder_depth: int = 4
    #: deliver it twice (the second time at once or after later ones)
    duplicate: float = 0.0


@dataclass
class _Link:
    core: ClientCore
    attempt: int = 0
    open: bool = False
    challenge: bytes = b""
    inbox: deque[bytes] = field(default_factory=deque)
    held: list[tuple[int, bytes]] = field(default_factory=list)  # (deliveries left, raw)
    next_delivery: int = 0
    acked: int = 0
    events: list[ClientEvent] = field(default_factory=list)


class MemoryExchange:
    def __init__(
        self,
        line: Line,
        seed: int,
        *,
        faults: Faults | None = None,
        exchange_id: str = "memory",
        charter_version: int | None = None,
        limits: AdvertisedLimits | None = None,
    ) -> None:
        self.line = line
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.exchange_id = exchange_id
        self.charter_version = charter_version or line.signed.version
        self.limits = limits or AdvertisedLimits(65536, 1e6, 10**6, 60.0)
        self.now = T0
        #: wall-clock seconds minus the virtual clock (envelopes carry real dates)
        self.wall_offset = time.time() - T0
        self.up = True
        self.links: dict[str, _Link] = {}
        #: what the withhold predicate picked: (recipient, raw envelope)
        self.withheld: list[tuple[str, bytes]] = []
        self.withhold: Callable[[Envelope], bool] = lambda env: False
        #: every charter file a terminal pushed, in order
        self.charters_pushed: list[bytes] = []
        self.routed = 0
        #: extra copies delivered
        self.duplicated = 0

    # --- terminals ---------------------------------------------------------------------

    def terminal(self, tid: str, *, line: Line | None = None, **config: object) -> ClientCore:
        """A terminal's core, connected through this exchange (started at once)."""
        line = line or self.line
        core = ClientCore(
            ClientConfig(**config),  # type: ignore[arg-type]
            charter=line.signed,
            terminal_id=tid,
            key=line.keys[tid],
            endpoints=make_endpoints("ws://127.0.0.1:1", None, (), line.signed),
            now=self.now,
            wall_offset_s=self.wall_offset,
            rng=random.Random(self.rng.random()),
        )
        self.links[tid] = _Link(core)
        core.start(self.now)
        self.pump()
        return core

    def events(self, tid: str) -> list[ClientEvent]:
        """Every event the terminal's application took so far (they are taken in pump)."""
        return self.links[tid].events

    def wall_ms(self) -> int:
        return int((self.now + self.wall_offset) * 1000)

    # --- time and traffic --------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let virtual time pass, running every timer that falls due on the way."""
        end = self.now + seconds
        while True:
            timers = [t for link in self.links.values() if (t := link.core.get_timer())]
            due = min([t for t in timers if t <= end], default=None)
            if due is None:
                break
            self.now = max(self.now, due)
            self.pump()
        self.now = end
        self.pump()

    def pump(self, max_rounds: int = 10_000) -> None:
        """Run every terminal and the exchange until nothing moves."""
        for _ in range(max_rounds):
            moved = False
            for tid, link in list(self.links.items()):
                moved |= self._step(tid, link)
            if not moved:
                return
        raise AssertionError("the in-memory exchange never settled")

    def _step(self, tid: str, link: _Link) -> bool:
        core, now, moved = link.core, self.now, False
        core.handle_timer(now)
        while (action := core.next_action()) is not None:
            moved = True
            if isinstance(action, Connect):
                if not self.up:
                    core.connection_failed(action.attempt, ExchangeUnavailable("down"), now)
                    continue
                link.attempt, link.open = action.attempt, True
                link.inbox.clear()
                link.challenge = self.rng.randbytes(32)
                core.connection_made(action.attempt, now)
                store = "memory-store"
                challenge = Challenge(link.challenge, self.exchange_id, store, self.limits)
                link.inbox.append(encode_frame(challenge))
            elif isinstance(action, Disconnect):
                link.open = False
                self._presence()
            elif isinstance(action, Probe):
                core.probe_result(self.up, now)
        for data in core.frames_to_send(now):
            moved = True
            self._from_terminal(tid, link, data)
        while link.inbox and link.open and not core.receiving_paused:
            moved = True
            core.receive_frame(link.inbox.popleft(), now)
        while (event := core.next_event(now)) is not None:
            moved = True
            link.events.append(event)
        return moved

    def _from_terminal(self, tid: str, link: _Link, data: bytes) -> None:
        frame = decode_client_frame(data, 1 << 21)
        if isinstance(frame, Hello):
            identity = self.line.signed.charter.terminal(tid).identity_key
            message = auth_message(link.challenge, self.exchange_id, frame.line_id, tid)
            identity.verify(frame.signature, message)
            welcome = Welcome(tid, self._online() | {tid}, None, self.charter_version)
            link.inbox.append(encode_frame(welcome))
            self._presence()
        elif isinstance(frame, Send):
            env = Envelope.from_bytes(frame.envelope, 1 << 20)
            link.inbox.append(encode_frame(Accepted(env.seq)))
            self.routed += 1
            targets = [env.recipient] if env.recipient else [t for t in self.links if t != tid]
            for to in targets:
                if to in self.links:
                    self.route(to, env)
        elif isinstance(frame, Ack):
            link.acked = max(link.acked, frame.upto)
        elif isinstance(frame, CharterFrame):
            self.charters_pushed.append(frame.data)
            for other, other_link in self.links.items():
                if other != tid:
                    other_link.inbox.append(encode_frame(CharterFrame(frame.data)))

    def _online(self) -> frozenset[str]:
        return frozenset(t for t, link in self.links.items() if link.core.connected)

    def _presence(self) -> None:
        online = self._online()
        for link in self.links.values():
            if link.open and link.core.state is LinkState.CONNECTED:
                link.inbox.append(encode_frame(Presence(online)))

    # --- what a hostile exchange does with a delivery ------------------------------------

    def route(self, to: str, env: Envelope) -> None:
        if self.withhold(env):
            self.withheld.append((to, env.raw))
            return
        self.deliver(to, env.raw)

    def deliver(self, to: str, raw: bytes) -> None:
        """Hand ``raw`` to ``to``, with the faults' reordering and duplicates."""
        link = self.links[to]
        faults = self.faults
        copies = 2 if self.rng.random() < faults.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            if self.rng.random() < faults.reorder:
                link.held.append((self.rng.randint(1, faults.reorder_depth), raw))
                continue
            self._enqueue(link, raw)
            due = [h for h in link.held if h[0] <= 1]
            link.held = [(n - 1, r) for n, r in link.held if n > 1]
            for _, late in due:
                self._enqueue(link, late)

    def flush_held(self) -> None:
        """Deliver what reordering still holds back."""
        for link in self.links.values():
            held, link.held = link.held, []
            for _, raw in held:
                self._enqueue(link, raw)
        self.pump()

    def release(self) -> None:
        """Deliver everything withheld so far."""
        withheld, self.withheld = self.withheld, []
        for to, raw in withheld:
            self.deliver(to, raw)
        self.pump()

    def inject(self, to: str, frame: ServerFrame) -> None:
        self.links[to].inbox.append(encode_frame(frame))

    def inject_raw(self, to: str, raw: bytes) -> None:
        """A delivery of bytes of the exchange's making."""
        self._enqueue(self.links[to], raw)

    def drop(self, tid: str) -> None:
        """Close the terminal's connection (as a network failure would)."""
        link = self.links[tid]
        link.open = False
        link.core.connection_closed(link.attempt, None, "", self.now)
        self._presence()

    def _enqueue(self, link: _Link, raw: bytes) -> None:
        link.next_delivery += 1
        link.inbox.append(encode_frame(Deliver(link.next_delivery, raw)))
