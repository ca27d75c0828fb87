"""The call state machine, as one member sees a call. Pure: no I/O, time passed in.

A call has an id and a set of members (terminal ids). It starts with one member ringing
another and grows or shrinks as members invite others and leave; it ends for a member when
that member leaves, or when it is the last one left. There is no time limit.

Messages (bodies are HCE dicts; every one carries ``call``, the call id):

=================  =================================================  ======================
type               body                                               sent to
=================  =================================================  ======================
``call.ring``      ``members``: who is in the call now                the invited terminal
``call.invited``   ``target``: who a member has just rung             every other member
``call.answer``    (nothing more)                                     every member + inviter
``call.decline``   ``reason``                                         the inviter
``call.leave``     ``reason``                                         every member (or the
                                                                      rung terminal, to cancel)
=================  =================================================  ======================

A member accepts a newcomer's ``call.answer`` only if that newcomer was rung by a member
(it rang it itself, or got ``call.invited`` from a member). Every member enforces the
charter's ``max_participants`` (``max_members``): it invites nobody once members and
pending invitations reach it, refuses a ``call.invited`` or a newcomer's ``call.answer`` into
a full call, and refuses a ring into a call that holds it already. Envelopes are signed and checked
against the charter before they reach this machine, so ``sender`` is authentic; the machine
checks that the protocol is followed, and raises :class:`CallProtocolError` when it is not.

Transitions (``state`` × event → ``state``; anything else raises):

===================  =========================  ===================
state                event                      next state
===================  =========================  ===================
idle                 dial (local)               outgoing
idle                 call.ring (remote)         incoming
outgoing             call.answer                active
outgoing             call.decline               ended
outgoing             ring timeout / hang up     ended
incoming             answer (local)             active
incoming             decline (local)            ended
incoming             call.leave (cancel)        ended
incoming             ring timeout               ended
active               invite / call.invited      active
active               call.answer (newcomer)     active
active               call.leave                 active, or ended when alone
active               hang up (local)            ended
===================  =========================  ===================
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from hotline.encoding import Value
from hotline.errors import CallError, StateError

RING_TIMEOUT_S = 60.0
#: how long an invitation to a member of a running call stays valid
INVITE_TIMEOUT_S = 60.0

PURPOSE_CALL = "call"
PURPOSE_CHECK = "check"
PURPOSES = (PURPOSE_CALL, PURPOSE_CHECK)

MSG_RING = "call.ring"
MSG_INVITED = "call.invited"
MSG_ANSWER = "call.answer"
MSG_DECLINE = "call.decline"
MSG_LEAVE = "call.leave"
CALL_MESSAGES = frozenset({MSG_RING, MSG_INVITED, MSG_ANSWER, MSG_DECLINE, MSG_LEAVE})

_Key = TypeVar("_Key")


def charter_departures(old: Mapping[str, _Key], new: Mapping[str, _Key]) -> frozenset[str]:
    """The terminals a new charter takes out of a running call: those it no longer lists,
    and those whose identity key it changed (same id, new key). The holder of the old key
    is out exactly as if it had left; the new key holder comes back only by being rung and
    answering under its new key."""
    return frozenset(t for t, key in old.items() if new.get(t) != key)


class CallProtocolError(CallError):
    """A peer broke the call protocol (wrong state, not a member, malformed body)."""

    reason = "call_protocol"


class CallState(StrEnum):
    IDLE = "idle"
    OUTGOING = "outgoing"
    INCOMING = "incoming"
    ACTIVE = "active"
    ENDED = "ended"


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CallEvent:
    """Base class of what the machine reports to the application."""


@dataclass(frozen=True)
class Ringing(CallEvent):
    caller: str
    members: frozenset[str]
    purpose: str = "call"


@dataclass(frozen=True)
class Answered(CallEvent):
    by: str


@dataclass(frozen=True)
class Declined(CallEvent):
    by: str
    reason: str


@dataclass(frozen=True)
class InviteWithdrawn(CallEvent):
    """Two members invited two terminals at once: the invitation of the member whose id
    sorts first stands at every member, ``target``'s (invited by ``by``) is withdrawn
    (if ``by`` is us, its ring was cancelled)."""

    target: str
    by: str
    because: str


@dataclass(frozen=True)
class MembersChanged(CallEvent):
    members: frozenset[str]
    joined: frozenset[str]
    left: frozenset[str]


@dataclass(frozen=True)
class CallEnded(CallEvent):
    reason: str


@dataclass(frozen=True)
class Outgoing:
    recipient: str
    msg_type: str
    body: dict[str, Value]


@dataclass
class CallMachine:
    """One member's view of one call."""

    self_id: str
    call_id: str
    #: the charter's max_participants (None: no limit, for tests of other rules)
    max_members: int | None = None
    #: the charter's terminal ids: nobody else can be invited (None: not checked, for
    #: tests of other rules)
    known: frozenset[str] | None = None
    state: CallState = CallState.IDLE
    members: frozenset[str] = frozenset()
    #: rung terminals not yet answered: target -> (inviter, deadline)
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: who rang us, while incoming
    caller: str | None = None
    ring_deadline: float | None = None
    end_reason: str | None = None
    #: what the call is for: a person's call, or a readiness check (answered by the
    #: terminal itself, never ringing the principal, pre-empted by any real call)
    purpose: str = PURPOSE_CALL
    _out: list[Outgoing] = field(default_factory=list)
    _events: list[CallEvent] = field(default_factory=list)

    # --- local commands -----------------------------------------------------------------

    def dial(self, target: str, now: float, purpose: str = PURPOSE_CALL) -> None:
        self._require(CallState.IDLE, "dial")
        if target == self.self_id:
            raise StateError("a terminal cannot call itself")
        if purpose not in PURPOSES:
            raise StateError(f"a call is for one of {', '.join(PURPOSES)}, not {purpose!r}")
        self.purpose = purpose
        self.members = frozenset({self.self_id})
        self.state = CallState.OUTGOING
        self.pending[target] = (self.self_id, now + RING_TIMEOUT_S)
        ring: dict[str, Value] = {"members": list[Value](sorted(self.members))}
        if purpose != PURPOSE_CALL:
            ring["purpose"] = purpose
        self._send(target, MSG_RING, ring)

    def invite(self, target: str, now: float) -> None:
        self._require(CallState.ACTIVE, "invite")
        if target in self.members or target in self.pending:
            raise StateError(f"{target} is already in or invited to this call")
        if self._full(len(self.members) + len(self.pending)):
            raise StateError(f"the charter allows at most {self.max_members} terminals in a call")
        if self.pending:
            # one invitation at a time: a terminal rung with the members of its ring would not
            # learn of another one joining meanwhile, and the two would never agree on keys
            rung, (by, _) = sorted(self.pending.items())[0]
            who = "us" if by == self.self_id else by
            raise StateError(
                f"{rung} is still being rung (invited by {who}): invite {target} once "
                "it has answered, declined or the ring has timed out"
            )
        self.pending[target] = (self.self_id, now + INVITE_TIMEOUT_S)
        self._send(target, MSG_RING, {"members": list[Value](sorted(self.members))})
        for member in self._others():
            self._send(member, MSG_INVITED, {"target": target})

    def answer(self, now: float) -> None:
        self._require(CallState.INCOMING, "answer")
        assert self.caller is not None
        self.state = CallState.ACTIVE
        self.ring_deadline = None
        joined = self.members
        self.members = self.members | {self.self_id}
        for member in sorted(self._others()):
            self._send(member, MSG_ANSWER, {})
        self._events.append(MembersChanged(self.members, joined, frozenset()))

    def decline(self, now: float, reason: str = "declined") -> None:
        self._require(CallState.INCOMING, "decline")
        assert self.caller is not None
        self._send(self.caller, MSG_DECLINE, {"reason": reason})
        self._end(reason)

    def hangup(self, now: float, reason: str = "hung up") -> None:
        if self.state in (CallState.IDLE, CallState.ENDED):
            raise StateError(f"no call to hang up (state {self.state})")
        if self.state == CallState.INCOMING:
            self.decline(now, reason)
            return
        for member in sorted(self._others() | set(self.pending)):
            self._send(member, MSG_LEAVE, {"reason": reason})
        self._end(reason)

    # --- remote messages ------------------------------------------------------------------

    def receive(self, sender: str, msg_type: str, body: Mapping[str, Value], now: float) -> None:
        if sender == self.self_id:
            raise CallProtocolError("a message claims to come from ourselves")
        if self.state == CallState.ENDED:
            if msg_type == MSG_LEAVE:
                return  # a leave crossing our own end is harmless and expected
            raise CallProtocolError(f"{msg_type} from {sender} after the call ended")
        if msg_type == MSG_RING:
            self._on_ring(sender, body, now)
        elif msg_type == MSG_INVITED:
            self._on_invited(sender, body, now)
        elif msg_type == MSG_ANSWER:
            self._on_answer(sender)
        elif msg_type == MSG_DECLINE:
            self._on_decline(sender, body)
        elif msg_type == MSG_LEAVE:
            self._on_leave(sender, body)
        else:
            raise CallProtocolError(f"unknown call message type {msg_type!r}")

    def _on_ring(self, sender: str, body: Mapping[str, Value], now: float) -> None:
        if self.state != CallState.IDLE:
            raise CallProtocolError(f"ring from {sender} in state {self.state}")
        raw = body.get("members")
        if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw) or not raw:
            raise CallProtocolError("ring: members must be a non-empty list of terminal ids")
        members = frozenset(str(m) for m in raw)
        if sender not in members or self.self_id in members:
            raise CallProtocolError("ring: the caller must be a member and we must not be one")
        if self._full(len(members)):
            raise self._full_error(f"ring from {sender} into a call of {len(members)}")
        purpose = body.get("purpose", PURPOSE_CALL)
        if purpose not in PURPOSES:
            raise CallProtocolError(f"ring: purpose must be one of {', '.join(PURPOSES)}")
        self.state = CallState.INCOMING
        self.caller = sender
        self.members = members
        self.purpose = str(purpose)
        self.ring_deadline = now + RING_TIMEOUT_S
        self._events.append(Ringing(sender, members, self.purpose))

    def _on_invited(self, sender: str, body: Mapping[str, Value], now: float) -> None:
        self._require_member(sender, MSG_INVITED)
        target = body.get("target")
        if not isinstance(target, str) or target in self.members or target == self.self_id:
            raise CallProtocolError("invited: target must be a terminal id not in the call")
        if self.known is not None and target not in self.known:
            raise CallProtocolError(f"invited: {target[:64]!r} is not a terminal of the charter")
        if self._full(len(self.members)):
            raise self._full_error(f"{sender} invited {target[:64]} into a full call")
        # an inviter's earlier invitation has ended (a decline goes to the inviter alone)
        self.pending = {t: p for t, p in self.pending.items() if p[0] != sender or t == target}
        # one invitation at a time (see ``invite``): two made at once, each member keeps the
        # one whose inviter sorts first, the same at every member, and drops the other
        for other, (by, _) in sorted(self.pending.items()):
            if other == target and by <= sender:
                return  # invited twice: the first inviter's stands
            if other != target and by < sender:
                self._events.append(InviteWithdrawn(target, sender, f"{by} invited {other}"))
                return
        for other, (by, _) in sorted(self.pending.items()):
            del self.pending[other]
            if other != target:
                self._withdraw(other, by, f"{sender} invited {target} at the same time")
        self.pending[target] = (sender, now + INVITE_TIMEOUT_S)

    def _withdraw(self, target: str, by: str, because: str) -> None:
        """``target``'s invitation by ``by`` gives way to another: if we rang it, the ring
        is cancelled (``call.leave`` to the rung terminal)."""
        if by == self.self_id:
            self._send(target, MSG_LEAVE, {"reason": f"invitation withdrawn: {because}"})
        self._events.append(InviteWithdrawn(target, by, because))

    def _on_answer(self, sender: str) -> None:
        if self.state == CallState.INCOMING and sender in self.members:
            # another member answered the same... only the newcomer answers; members never do
            raise CallProtocolError(f"answer from member {sender} while we are being rung")
        if self.state not in (CallState.OUTGOING, CallState.ACTIVE):
            raise CallProtocolError(f"answer from {sender} in state {self.state}")
        if sender not in self.pending:
            raise CallProtocolError(f"answer from {sender}, who was not rung by a member")
        if self._full(len(self.members)):
            del self.pending[sender]
            raise self._full_error(f"answer from {sender} into a full call")
        del self.pending[sender]
        self.state = CallState.ACTIVE
        self.members = self.members | {sender}
        self._events.append(Answered(sender))
        self._events.append(MembersChanged(self.members, frozenset({sender}), frozenset()))

    def _on_decline(self, sender: str, body: Mapping[str, Value]) -> None:
        if sender not in self.pending:
            raise CallProtocolError(f"decline from {sender}, who was not rung")
        reason = body.get("reason")
        reason_text = reason if isinstance(reason, str) else "declined"
        del self.pending[sender]
        self._events.append(Declined(sender, reason_text[:200]))
        if self.state == CallState.OUTGOING and not self.pending:
            self._end(f"declined by {sender}: {reason_text[:200]}")

    def _on_leave(self, sender: str, body: Mapping[str, Value]) -> None:
        reason = body.get("reason")
        reason_text = reason[:200] if isinstance(reason, str) else "left"
        if self.state == CallState.INCOMING:
            if sender != self.caller:
                raise CallProtocolError(f"cancel from {sender}, who did not ring us")
            self._end(f"cancelled by {sender}: {reason_text}")
            return
        self._require_member(sender, MSG_LEAVE)
        self.members = self.members - {sender}
        self.pending = {t: p for t, p in self.pending.items() if p[0] != sender}
        self._events.append(MembersChanged(self.members, frozenset(), frozenset({sender})))
        if self.members == {self.self_id} and not self.pending:
            self._end(f"{sender} hung up: {reason_text}")

    def remove(self, ids: Collection[str], now: float) -> None:
        """Terminals that left the charter (or whose identity key it changed, see
        :func:`charter_departures`) leave the call at once: no message from them is needed
        (nor would one be accepted any more)."""
        gone = frozenset(ids) - {self.self_id}
        if self.state in (CallState.IDLE, CallState.ENDED) or not gone:
            return
        self.pending = {t: p for t, p in self.pending.items() if t not in gone and p[0] not in gone}
        if self.state == CallState.INCOMING and self.caller in gone:
            self._end(f"{self.caller} is no longer in the charter")
            return
        left = self.members & gone
        if left:
            self.members = self.members - left
            self._events.append(MembersChanged(self.members, frozenset(), left))
        if self.state == CallState.OUTGOING and not self.pending:
            self._end("the terminal called is no longer in the charter")
        elif self.state == CallState.ACTIVE and self.members == {self.self_id} and not self.pending:
            self._end("every other member left the charter")

    def drop_unreachable(self, ids: Collection[str], now: float) -> None:
        """Members whose transport stayed lost past the charter's peer timeout leave the
        call; each is told (a leave, if it can still hear), and a call left with no one else
        ends saying who became unreachable."""
        gone = (frozenset(ids) & self.members) - {self.self_id}
        if self.state != CallState.ACTIVE or not gone:
            return
        for target in sorted(gone):
            self._send(target, MSG_LEAVE, {"reason": "unreachable"})
        self.members = self.members - gone
        self._events.append(MembersChanged(self.members, frozenset(), gone))
        if self.members == {self.self_id} and not self.pending:
            self._end(f"{', '.join(sorted(gone))} unreachable")

    # --- timers ---------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        deadlines = [d for _, d in self.pending.values()]
        if self.ring_deadline is not None:
            deadlines.append(self.ring_deadline)
        return min(deadlines) if deadlines and self.state != CallState.ENDED else None

    def handle_timer(self, now: float) -> None:
        if self.state == CallState.ENDED:
            return
        if self.ring_deadline is not None and now >= self.ring_deadline:
            self._end("not answered in time")
            return
        for target, (inviter, deadline) in list(self.pending.items()):
            if now >= deadline:
                del self.pending[target]
                if inviter == self.self_id:
                    self._send(target, MSG_LEAVE, {"reason": "not answered in time"})
                self._events.append(Declined(target, "no answer"))
        if self.state == CallState.OUTGOING and not self.pending:
            self._end("not answered in time")

    # --- output ---------------------------------------------------------------------------

    def outgoing(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[CallEvent]:
        events, self._events = self._events, []
        return events

    # --- helpers --------------------------------------------------------------------------

    def _others(self) -> set[str]:
        return set(self.members) - {self.self_id}

    def _send(self, recipient: str, msg_type: str, extra: dict[str, Value]) -> None:
        body: dict[str, Value] = {"call": self.call_id}
        body.update(extra)
        self._out.append(Outgoing(recipient, msg_type, body))

    def _end(self, reason: str) -> None:
        self.state = CallState.ENDED
        self.end_reason = reason
        self.pending.clear()
        self.ring_deadline = None
        self._events.append(CallEnded(reason))

    def _full(self, count: int) -> bool:
        """Whether ``count`` terminals leave no room for one more."""
        return self.max_members is not None and count >= self.max_members

    def _full_error(self, what: str) -> CallProtocolError:
        return CallProtocolError(
            f"{what}: the charter allows at most {self.max_members} terminals in a call",
            reason="call_full",
        )

    def _require(self, state: CallState, action: str) -> None:
        if self.state != state:
            raise StateError(f"cannot {action} in state {self.state}")

    def _require_member(self, sender: str, msg_type: str) -> None:
        if self.state != CallState.ACTIVE or sender not in self.members:
            raise CallProtocolError(f"{msg_type} from {sender}, not a member of this active call")
