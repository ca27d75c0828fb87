"""The call state machine: in-memory members driven against each other (h11 style)."""

from __future__ import annotations

import pytest

from hotline.call.machine import (
    INVITE_TIMEOUT_S,
    Answered,
    CallEnded,
    CallMachine,
    CallProtocolError,
    CallState,
    Declined,
    InviteWithdrawn,
    MembersChanged,
    Ringing,
    charter_departures,
)
from hotline.errors import StateError


class Net:
    """Delivers every outgoing message to its recipient's machine, in order."""

    def __init__(self, *ids: str) -> None:
        self.m = {i: CallMachine(i, "call-1") for i in ids}
        self.events: dict[str, list[object]] = {i: [] for i in ids}

    def pump(self, now: float = 0.0) -> None:
        moved = True
        while moved:
            moved = False
            for sender, machine in self.m.items():
                for out in machine.outgoing():
                    moved = True
                    self.m[out.recipient].receive(sender, out.msg_type, out.body, now)
        for i, machine in self.m.items():
            self.events[i].extend(machine.events())


def test_dial_answer_hangup() -> None:
    net = Net("a", "b")
    net.m["a"].dial("b", 0)
    net.pump()
    assert net.m["b"].state == CallState.INCOMING
    assert Ringing("a", frozenset({"a"})) in net.events["b"]
    net.m["b"].answer(1)
    net.pump()
    assert net.m["a"].state == net.m["b"].state == CallState.ACTIVE
    assert net.m["a"].members == net.m["b"].members == {"a", "b"}
    assert Answered("b") in net.events["a"]
    net.m["b"].hangup(2)
    net.pump()
    assert net.m["a"].state == net.m["b"].state == CallState.ENDED
    assert any(isinstance(e, CallEnded) for e in net.events["a"])


def test_decline_and_timeout() -> None:
    net = Net("a", "b")
    net.m["a"].dial("b", 0)
    net.pump()
    net.m["b"].decline(1, "busy")
    net.pump()
    assert net.m["a"].state == CallState.ENDED
    assert Declined("b", "busy") in net.events["a"]

    net = Net("a", "b")
    net.m["a"].dial("b", 0)
    net.pump()
    timer = net.m["a"].next_timer()
    assert timer is not None
    net.m["a"].handle_timer(timer)
    net.m["b"].handle_timer(timer)
    net.pump(timer)
    assert net.m["a"].state == net.m["b"].state == CallState.ENDED


def test_third_member_joins_and_leaves() -> None:
    net = Net("a", "b", "c")
    net.m["a"].dial("b", 0)
    net.pump()
    net.m["b"].answer(0)
    net.pump()
    net.m["b"].invite("c", 1)
    net.pump()
    assert net.m["c"].state == CallState.INCOMING
    net.m["c"].answer(2)
    net.pump()
    for i in "abc":
        assert net.m[i].members == {"a", "b", "c"}, i
    net.m["c"].hangup(3)
    net.pump()
    assert net.m["a"].members == net.m["b"].members == {"a", "b"}
    assert net.m["a"].state == CallState.ACTIVE
    assert MembersChanged(frozenset({"a", "b"}), frozenset(), frozenset({"c"})) in net.events["a"]


def test_uninvited_answer_and_foreign_leave_are_refused() -> None:
    net = Net("a", "b", "x")
    net.m["a"].dial("b", 0)
    net.pump()
    net.m["b"].answer(0)
    net.pump()
    with pytest.raises(CallProtocolError, match="not rung"):
        net.m["a"].receive("x", "call.answer", {"call": "call-1"}, 1)
    with pytest.raises(CallProtocolError, match="not a member"):
        net.m["a"].receive("x", "call.leave", {"call": "call-1"}, 1)
    with pytest.raises(CallProtocolError, match="unknown"):
        net.m["a"].receive("b", "call.bogus", {"call": "call-1"}, 1)
    with pytest.raises(CallProtocolError, match="ourselves"):
        net.m["a"].receive("a", "call.leave", {"call": "call-1"}, 1)
    with pytest.raises(CallProtocolError):
        CallMachine("z", "c").receive("a", "call.ring", {"call": "c", "members": "a"}, 0)


def test_illegal_local_commands() -> None:
    m = CallMachine("a", "c")
    with pytest.raises(StateError):
        m.answer(0)
    with pytest.raises(StateError):
        m.hangup(0)
    with pytest.raises(StateError):
        m.dial("a", 0)


def test_members_removed_from_the_charter_leave_at_once() -> None:
    net = Net("a", "b", "c")
    net.m["a"].dial("b", 0)
    net.pump()
    net.m["b"].answer(0)
    net.pump()
    net.m["a"].invite("c", 1)
    net.pump()
    net.m["c"].answer(2)
    net.pump()
    net.m["a"].remove({"c"}, 3)
    assert net.m["a"].members == {"a", "b"}
    assert net.m["a"].state == CallState.ACTIVE
    net.m["a"].remove({"b"}, 4)
    assert net.m["a"].state == CallState.ENDED
    assert net.m["a"].outgoing() == [], "nothing is sent to removed terminals"

    ringing = Net("a", "b")
    ringing.m["a"].dial("b", 0)
    ringing.pump()
    ringing.m["b"].remove({"a"}, 1)
    assert ringing.m["b"].state == CallState.ENDED


def test_a_changed_identity_key_is_a_departure() -> None:
    """A new charter that gives c a new identity key removes c exactly like one that drops
    c: the old key holder is out, and the new one comes back only when rung and answering."""
    old = {"a": b"key-a", "b": b"key-b", "c": b"key-c"}
    new = {"a": b"key-a", "b": b"key-b", "c": b"key-c2"}
    assert charter_departures(old, new) == {"c"}
    assert charter_departures(old, {"a": b"key-a"}) == {"b", "c"}
    assert charter_departures(old, old) == frozenset()

    net = Net("a", "b", "c")
    net.m["a"].dial("b", 0)
    net.pump()
    net.m["b"].answer(0)
    net.pump()
    net.m["a"].invite("c", 1)
    net.pump()
    net.m["c"].answer(2)
    net.pump()
    for x in "ab":
        net.m[x].remove(charter_departures(old, new), 3)
        assert net.m[x].members == {"a", "b"}
    with pytest.raises(CallProtocolError):  # the new key holder must be rung again
        net.m["a"].receive("c", "call.answer", {"call": "call-1"}, 4)
    net.m["a"].invite("c", 5)
    net.m["c"] = CallMachine("c", "call-1")  # the new key holder's terminal
    net.pump()
    net.m["c"].answer(6)
    net.pump()
    assert net.m["a"].members == net.m["b"].members == {"a", "b", "c"}


def test_max_participants_is_enforced_by_every_member() -> None:
    """The charter allows two terminals: a member cannot invite a third, and a member whose
    daemon would let one in (a malicious or buggy peer) cannot get it accepted by others."""
    net = Net("a", "b", "c")
    for machine in net.m.values():
        machine.max_members = 2
    net.m["a"].dial("b", 0)
    net.pump()
    net.m["b"].answer(0)
    net.pump()
    with pytest.raises(StateError, match="at most 2"):
        net.m["a"].invite("c", 1)
    # b tells a it rang c; a refuses the invitation, and so c's answer
    with pytest.raises(CallProtocolError, match="at most 2"):
        net.m["a"].receive("b", "call.invited", {"call": "call-1", "target": "c"}, 1)
    with pytest.raises(CallProtocolError):
        net.m["a"].receive("c", "call.answer", {"call": "call-1"}, 2)
    assert net.m["a"].members == {"a", "b"}
    # c, rung into a call that already holds two terminals, refuses the ring
    with pytest.raises(CallProtocolError, match="at most 2"):
        net.m["c"].receive("b", "call.ring", {"call": "call-1", "members": ["a", "b"]}, 3)
    assert net.m["c"].state == CallState.IDLE


def test_an_answer_beyond_max_participants_is_refused() -> None:
    """Even when an invitation got through, the answer that would pass the limit is
    refused (a member whose machine let two invitations ring at once)."""
    m = CallMachine("a", "call-1", max_members=3)
    m.dial("b", 0)
    m.receive("b", "call.answer", {"call": "call-1"}, 0)
    m.pending["d"] = ("b", 60.0)  # as a member with another rule would have it
    m.pending["c"] = ("a", 60.0)
    m.receive("c", "call.answer", {"call": "call-1"}, 2)
    with pytest.raises(CallProtocolError, match="at most 3"):
        m.receive("d", "call.answer", {"call": "call-1"}, 2)
    assert m.members == {"a", "b", "c"}


def in_a_call(*ids: str) -> Net:
    """``ids[0]`` rang the others one at a time; all answered."""
    net = Net(*ids)
    net.m[ids[0]].dial(ids[1], 0)
    net.pump()
    net.m[ids[1]].answer(0)
    net.pump()
    for other in ids[2:]:
        net.m[ids[0]].invite(other, 0)
        net.pump()
        net.m[other].answer(0)
        net.pump()
    return net


def test_two_invitations_made_at_once_converge_on_the_first_inviters() -> None:
    """a and c invite x and y at the same moment (neither knew of the other's): every
    member keeps a's invitation (a sorts first) and drops c's; c cancels y's ring, and
    everyone says so. x answers into one call that every member agrees on; y's answer,
    had it come, is refused."""
    net = in_a_call("a", "b", "c")
    for machine in net.m.values():
        machine.events()  # what the set-up reported
    net.events = {i: [] for i in net.m}
    for extra in ("x", "y"):
        net.m[extra] = CallMachine(extra, "call-1")
        net.events[extra] = []
    net.m["c"].invite("y", 1)
    net.m["a"].invite("x", 1)  # before c's call.invited reached a
    net.pump(1)
    for member in ("a", "b", "c"):
        assert set(net.m[member].pending) == {"x"}, (member, net.m[member].pending)
        withdrawn = [e for e in net.events[member] if isinstance(e, InviteWithdrawn)]
        assert [(e.target, e.by) for e in withdrawn] == [("y", "c")], (member, withdrawn)
    assert net.m["y"].state == CallState.ENDED  # its ring was cancelled by c
    assert "invitation withdrawn" in (net.m["y"].end_reason or "")
    net.m["x"].answer(2)
    net.pump(2)
    assert all(net.m[i].members == {"a", "b", "c", "x"} for i in ("a", "b", "c", "x"))
    with pytest.raises(CallProtocolError, match="not rung"):
        net.m["a"].receive("y", "call.answer", {"call": "call-1"}, 3)


def test_an_invitation_names_a_terminal_of_the_charter() -> None:
    m = CallMachine("a", "call-1", known=frozenset({"a", "b", "c"}))
    m.dial("b", 0)
    m.receive("b", "call.answer", {"call": "call-1"}, 0)
    for target in ("mallory", "x" * 5000, "a"):
        with pytest.raises(CallProtocolError):
            m.receive("b", "call.invited", {"call": "call-1", "target": target}, 1)
    assert m.pending == {}
    m.receive("b", "call.invited", {"call": "call-1", "target": "c"}, 1)
    assert set(m.pending) == {"c"}


def test_an_inviters_new_invitation_replaces_its_ended_one() -> None:
    """A decline goes to the inviter alone: the others still hold its invitation when it
    invites the next terminal, which replaces it."""
    m = CallMachine("a", "call-1")
    m.dial("b", 0)
    m.receive("b", "call.answer", {"call": "call-1"}, 0)
    m.receive("b", "call.invited", {"call": "call-1", "target": "c"}, 1)
    m.receive("b", "call.invited", {"call": "call-1", "target": "d"}, 5)  # c declined to b
    assert m.pending == {"d": ("b", 5 + INVITE_TIMEOUT_S)}
    assert not [e for e in m.events() if isinstance(e, InviteWithdrawn)]


def test_one_invitation_at_a_time() -> None:
    """Two invitations ringing at once would leave each invitee unaware of the other (each
    was rung with the members of its own ring) and the call's keys would never agree: the
    second is refused, at the inviter and at a member the first was announced to, until the
    first is answered, declined or timed out."""
    net = Net("a", "b", "c", "d")
    net.m["a"].dial("b", 0)
    net.pump()
    net.m["b"].answer(0)
    net.pump()
    net.m["a"].invite("c", 1)
    net.pump()
    with pytest.raises(StateError, match="c is still being rung \\(invited by us\\)"):
        net.m["a"].invite("d", 1)
    with pytest.raises(StateError, match="c is still being rung \\(invited by a\\)"):
        net.m["b"].invite("d", 1)
    net.m["c"].answer(2)
    net.pump()
    net.m["b"].invite("d", 3)  # c has joined: the next one may be rung
    net.pump()
    net.m["d"].answer(4)
    net.pump()
    assert all(m.members == {"a", "b", "c", "d"} for m in net.m.values())
