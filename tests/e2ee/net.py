"""In-memory members of a call, connected by a relay that may be honest or hostile.

Each member has its own :class:`CallKeySession`, its own view of the participants (what its
call layer would say) and a recording random source, so tests can check that every key a
member accepted was made by the member it is attributed to. Time is simulated.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hotline.e2ee.events import E2EEEvent, EpochActivated
from hotline.e2ee.session import CallKeySession
from hotline.errors import E2EEError
from hotline.keys import PublicKey, SigningKey

LINE = "line-sochi-washington"
CALL = "call-2021-12-07"


@dataclass(frozen=True)
class Delivery:
    sender: str  # what the exchange claims
    recipient: str
    msg_type: str
    body: bytes


class Relay:
    """Honest: delivers everything once, in order."""

    def route(self, d: Delivery, net: Net) -> list[Delivery]:
        return [d]

    def flush(self, net: Net) -> list[Delivery]:
        return []


@dataclass
class Member:
    id: str
    key: SigningKey
    session: CallKeySession
    view: frozenset[str] = frozenset()
    events: list[E2EEEvent] = field(default_factory=list)
    errors: list[E2EEError] = field(default_factory=list)
    #: everything this member's random source produced
    random_outputs: list[bytes] = field(default_factory=list)


class Net:
    def __init__(
        self,
        ids: Iterable[str],
        *,
        seed: int = 0,
        kem: str = "X25519",
        relay: Relay | None = None,
        keys: dict[str, SigningKey] | None = None,
        call_id: str = CALL,
        **session_kw: Any,
    ) -> None:
        self.seed = seed
        self.call_id = call_id
        self.kem = kem
        self.relay = relay or Relay()
        self.session_kw = session_kw
        self.now = 0.0
        self.keys = {i: (keys or {}).get(i) or SigningKey.generate() for i in ids}
        self.directory: dict[str, PublicKey] = {i: k.public for i, k in self.keys.items()}
        self.members: dict[str, Member] = {}
        for i in self.keys:
            self.add_member(i)
        #: every delivery the relay saw (for replays)
        self.log: list[Delivery] = []

    def _rng(self, member: str) -> tuple[Callable[[int], bytes], list[bytes]]:
        outputs: list[bytes] = []
        r = random.Random(f"{self.seed}/{member}")

        def rng(n: int) -> bytes:
            b = r.randbytes(n)
            outputs.append(b)
            return b

        return rng, outputs

    def add_member(
        self, member: str, key: SigningKey | None = None, *, charter_version: int = 1
    ) -> Member:
        """A member (again, when ``member`` exists: a new session replaces the old one)."""
        if key is not None:
            self.keys[member] = key
            self.directory[member] = key.public
        rng, outputs = self._rng(member)
        session = CallKeySession(
            line_id=LINE,
            call_id=self.call_id,
            self_id=member,
            identity_key=self.keys[member],
            directory=self.directory,
            charter_version=charter_version,
            kem=self.kem,
            rng=rng,
            **self.session_kw,
        )
        m = Member(member, self.keys[member], session, random_outputs=outputs)
        self.members[member] = m
        return m

    def __getitem__(self, member: str) -> Member:
        return self.members[member]

    # --- the call layer ----------------------------------------------------------------------

    def set_view(self, ids: Iterable[str], at: Iterable[str] | None = None) -> None:
        """Tell the call layer of each member in ``at`` (default: ``ids``) that the call
        is ``ids``."""
        view = frozenset(ids)
        for member in at if at is not None else view:
            m = self.members[member]
            m.view = view
            m.session.set_participants(view, self.now)
        self.pump()

    def pump(self, max_rounds: int = 10_000) -> None:
        """Deliver messages until nobody has anything more to send."""
        for _ in range(max_rounds):
            queue: list[Delivery] = []
            for m in self.members.values():
                for o in m.session.outgoing():
                    targets = [o.recipient] if o.recipient else sorted(m.view - {m.id})
                    queue.extend(Delivery(m.id, t, o.msg_type, o.body) for t in targets)
                m.events.extend(m.session.events())
            deliveries: list[Delivery] = []
            for d in queue:
                self.log.append(d)
                deliveries.extend(self.relay.route(d, self))
            if not queue:
                deliveries.extend(self.relay.flush(self))
            if not deliveries and not queue:
                return
            for d in deliveries:
                self.deliver(d)
        raise AssertionError("the members never stopped sending")

    def deliver(self, d: Delivery) -> None:
        m = self.members.get(d.recipient)
        if m is None:
            return
        try:
            m.session.receive(d.sender, d.msg_type, d.body, self.now)
        except E2EEError as exc:
            m.errors.append(exc)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, firing every timer on the way."""
        end = self.now + seconds
        for _ in range(100_000):
            due = [t for m in self.members.values() if (t := m.session.next_timer()) is not None]
            nxt = min(due, default=None)
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            for m in self.members.values():
                t = m.session.next_timer()
                if t is not None and t <= self.now:
                    m.session.handle_timer(self.now)
            self.pump()
        else:
            raise AssertionError("timers keep firing without progress")
        self.now = end
        self.pump()

    # --- checks ------------------------------------------------------------------------------

    def activations(self, member: str) -> list[EpochActivated]:
        return [e for e in self.members[member].events if isinstance(e, EpochActivated)]

    def agreed(self, ids: Iterable[str]) -> int:
        """Assert that ``ids`` share one active epoch, members and code; return the epoch."""
        sessions = [self.members[i].session for i in ids]
        epochs = {s.epoch for s in sessions}
        codes = {s.security_code for s in sessions}
        rosters = {s.members for s in sessions}
        assert len(epochs) == 1 and 0 not in epochs, epochs
        assert len(codes) == 1 and None not in codes, codes
        assert rosters == {tuple(sorted(ids))}, rosters
        return epochs.pop()

    def frames_flow(self, ids: Iterable[str], label: bytes = b"frame") -> None:
        """Every member's video and audio frame decrypts at every other member."""
        ids = list(ids)
        for s in ids:
            key_frame = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\x68\x01" + label * 4
            delta = b"\x31\x02\x00" + label * 3
            sent = [
                ("video", key_frame),
                ("video", delta),
                ("audio", label + s.encode()),
            ]
            protected = [(k, f, self.members[s].session.media.protect(k, f)) for k, f in sent]
            for r in ids:
                if r == s:
                    continue
                media = self.members[r].session.media
                for kind, frame, data in protected:
                    assert media.unprotect(kind, data) == frame

    def assert_keys_authentic(self) -> None:
        """Every receive key any member holds is the key of the member it is filed under,
        derived from an epoch secret that the epoch's leader's random source made, under a
        roster that leader signed (protocol v2: the leader makes the epoch secret)."""
        from hotline.e2ee import messages, sframe
        from hotline.e2ee.sender_keys import derive_sender_key, sender_key_info

        rosters: dict[int, list[messages.RosterProposal]] = {}
        for d in self.log:
            if d.msg_type != messages.MSG_ROSTER:
                continue
            try:
                proposal = messages.parse(d.msg_type, d.body)
                proposal.verify(self.directory[proposal.signer])
            except (E2EEError, KeyError):
                continue
            assert isinstance(proposal, messages.RosterProposal)
            rosters.setdefault(proposal.epoch, []).append(proposal)
        for m in self.members.values():
            store = m.session.media._store
            for kid in store.kids():
                owner = store.sender_of(kid)
                assert owner is not None
                epoch, index = kid >> 8, kid & 0xFF
                entry = store.entry(kid)
                expected = []
                for proposal in rosters.get(epoch, []):
                    if proposal.members[index] != owner:
                        continue
                    info = sender_key_info(
                        proposal.context.line_id,
                        proposal.context.call_id,
                        charter_version=proposal.context.charter_version,
                        epoch=epoch,
                        roster_hash=proposal.roster_hash,
                        sender=owner,
                        index=index,
                    )
                    for secret in self.members[proposal.signer].random_outputs:
                        if len(secret) == 32:
                            key = bytes(derive_sender_key(secret, info))
                            expected.append(sframe.SFrameKey(store.suite, kid, key).nonce(0))
                assert entry.key.nonce(0) in expected, (m.id, kid, owner)
