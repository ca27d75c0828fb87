"""The key session with in-memory members (2, 3 and 10): join, leave, rekey, laggards,
directory changes, erasure of secrets. The hostile relay has its own file."""

from __future__ import annotations

import gc
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.e2ee import messages as msgs
from hotline.e2ee import sframe
from hotline.e2ee.epochs import State
from hotline.e2ee.events import (
    EpochActivated,
    EpochFailed,
    KeyRejected,
    MemberLagging,
    PeerCharterVersion,
)
from hotline.e2ee.session import MAX_TIMEOUTS, CallKeySession
from hotline.e2ee.steps import MIN_REQUESTED_REKEY_S
from hotline.errors import (
    CharterVersionMismatch,
    CounterExhausted,
    EpochRollback,
    ExpiredKey,
    KeyAgreementError,
    NoMediaKey,
    NotInDirectory,
    SFrameError,
    StateError,
    UnexpectedMessage,
    UnknownKeyId,
    UsageError,
    WrongContext,
)
from hotline.keys import SigningKey

from .net import CALL, LINE, Delivery, Net, Relay

OPUS = b"\xfc" + b"opus-frame" * 8


def events_of(net: Net, member: str, kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in net[member].events if isinstance(e, kind)]


@pytest.mark.parametrize("kem", ["X25519", "MLKEM768_X25519"])
def test_two_members_agree_and_media_flows(kem: str) -> None:
    net = Net(["alice", "bob"], kem=kem)
    net.set_view(["alice", "bob"])
    assert net.agreed(["alice", "bob"]) == 1
    net.frames_flow(["alice", "bob"])
    net.assert_keys_authentic()
    for who in ("alice", "bob"):
        (act,) = net.activations(who)
        assert act.members == ("alice", "bob")
        assert act.security_code == net[who].session.security_code
        assert not net[who].errors
        assert net[who].session.rejections == {}


def test_single_member_epoch() -> None:
    net = Net(["alice"])
    net.set_view(["alice"])
    assert net.agreed(["alice"]) == 1


def test_no_media_before_the_first_epoch() -> None:
    net = Net(["alice", "bob"])
    with pytest.raises(NoMediaKey):
        net["alice"].session.media.protect("audio", OPUS)


def test_join_then_leave_three_members() -> None:
    net = Net(["a", "b", "c"])
    net.set_view(["a", "b"], at=["a", "b"])
    e1 = net.agreed("ab")
    old_frame = net["a"].session.media.protect("audio", OPUS)
    code1 = net["a"].session.security_code

    net.set_view(["a", "b", "c"])  # c joins
    e2 = net.agreed("abc")
    assert e2 == e1 + 1 and net["a"].session.security_code != code1
    net.frames_flow("abc")
    net.assert_keys_authentic()
    with pytest.raises(UnknownKeyId):  # the joiner gets nothing from before it joined
        net["c"].session.media.unprotect("audio", old_frame)
    c_frame = net["c"].session.media.protect("audio", OPUS)

    net.set_view(["a", "b"], at=["a", "b"])  # c leaves
    e3 = net.agreed("ab")
    assert e3 == e2 + 1
    net.frames_flow("ab")
    new_frame = net["a"].session.media.protect("audio", OPUS)
    with pytest.raises(UnknownKeyId):  # the one who left cannot read the next epoch
        net["c"].session.media.unprotect("audio", new_frame)
    with pytest.raises(ExpiredKey):  # and its keys were erased at once at the others
        net["b"].session.media.unprotect("audio", c_frame)
    assert net["c"].session.epoch == e2  # c's session never learnt of epoch 3
    assert not any(net[x].errors for x in "abc")


def test_sending_pauses_when_a_member_leaves() -> None:
    net = Net(["a", "b", "c"])
    net.set_view("abc")
    net.agreed("abc")
    # only a's call layer has seen c leave so far: a stops sending at once
    net.set_view(["a", "b"], at=["a"])
    with pytest.raises(NoMediaKey, match="c left"):
        net["a"].session.media.protect("audio", OPUS)
    assert net["a"].session.pending_state is State.COLLECTING_EPHEMERALS
    # b's call layer has not caught up: the start is kept, not signed
    assert net["b"].session.pending_epoch is None
    net.set_view(["a", "b"], at=["b"])
    net.agreed("ab")
    net.frames_flow("ab")


def test_leader_leaves_and_the_next_one_leads() -> None:
    net = Net(["a", "b", "c"])
    net.set_view("abc")
    net.agreed("abc")
    net.set_view(["b", "c"], at=["b", "c"])
    assert net.agreed("bc") == 2
    start = [d for d in net.log if d.msg_type == msgs.MSG_START][-1]
    assert start.sender == "b"


def test_ten_members_hybrid_join_and_leave() -> None:
    ids = [f"t{i:02d}" for i in range(10)]
    net = Net(ids, kem="MLKEM768_X25519")
    net.set_view(ids[:9], at=ids[:9])
    net.agreed(ids[:9])
    net.set_view(ids)  # the tenth joins
    net.agreed(ids)
    net.frames_flow([ids[0], ids[5], ids[9]])
    net.assert_keys_authentic()
    net.set_view(ids[1:], at=ids[1:])  # the leader leaves
    net.agreed(ids[1:])
    frame = net[ids[1]].session.media.protect("audio", OPUS)
    with pytest.raises(UnknownKeyId):
        net[ids[0]].session.media.unprotect("audio", frame)
    assert len({net[i].session.security_code for i in ids[1:]}) == 1


def test_staggered_views_on_join() -> None:
    """The leader hears of the joiner before the others do: they keep its start until
    their own call layer agrees, then finish the epoch."""
    net = Net(["a", "b", "c"])
    net.set_view(["a", "b"], at=["a", "b"])
    net.agreed("ab")
    net.set_view(["a", "b", "c"], at=["a", "c"])
    assert net["b"].session.epoch == 1 and net["a"].session.epoch == 1
    net.set_view(["a", "b", "c"], at=["b"])
    net.agreed("abc")


def test_waiting_for_a_leader_that_never_starts() -> None:
    net = Net(["a", "b", "c"], ack_timeout_s=5)
    net.set_view("abc")
    net.agreed("abc")
    net.set_view(["a", "b"], at=["b"])  # a (the leader) never hears that c left
    net.advance(5.1)
    (lag,) = events_of(net, "b", MemberLagging)
    assert lag == MemberLagging(2, ("a",))


def test_periodic_rekey_and_erasure_after_grace() -> None:
    net = Net(["a", "b", "c"], rekey_interval_s=300, grace_s=10)
    net.set_view("abc")
    e1 = net.agreed("abc")
    code1 = net["a"].session.security_code
    old = net["b"].session.media.protect("audio", OPUS)
    net.advance(299)
    assert net.agreed("abc") == e1
    net.advance(2)  # the leader's rekey timer fires at 300 s
    e2 = net.agreed("abc")
    assert e2 == e1 + 1 and net["a"].session.security_code != code1
    assert net["a"].events[-1] == EpochActivated(
        e2, ("a", "b", "c"), net["a"].session.security_code
    )
    assert net["a"].session.media.unprotect("audio", old) == OPUS  # grace: still accepted
    net.advance(10)
    late = net["b"].session.media.protect("audio", OPUS)  # now under e2
    assert net["a"].session.media.unprotect("audio", late) == OPUS
    # the keys of e1 are gone everywhere
    assert sframe.make_kid(e1, 1) not in net["a"].session.media.receive_kids()
    with pytest.raises(ExpiredKey):
        net["c"].session.media.unprotect("audio", old)
    assert net["b"].session.media.stats().receive_epochs == (e2,)
    net.advance(600)
    assert net.agreed("abc") == e2 + 2  # and again every 300 s


def test_member_that_never_acknowledges() -> None:
    class DropAcksFromC(Relay):
        def route(self, d: Delivery, net: Net) -> list[Delivery]:
            return [] if d.sender == "c" and d.msg_type == msgs.MSG_ACK else [d]

    net = Net(["a", "b", "c"], relay=DropAcksFromC(), ack_timeout_s=5)
    net.set_view(["a", "b"], at=["a", "b"])
    e1 = net.agreed("ab")
    net.set_view("abc")  # c joins but its acknowledgements never arrive
    assert net["a"].session.epoch == e1 and net["a"].session.pending_state is State.AWAITING_ACKS
    net.frames_flow("ab")  # meanwhile a and b keep talking under the old epoch
    net.advance(5.5)
    assert events_of(net, "a", MemberLagging) == [MemberLagging(e1 + 1, ("c",))]
    assert events_of(net, "b", MemberLagging) == [MemberLagging(e1 + 1, ("c",))]
    net.advance(5 * MAX_TIMEOUTS)
    (failed,) = events_of(net, "b", EpochFailed)
    assert failed.epoch == e1 + 1 and "c" in failed.reason
    # the call layer drops the laggard: a and b stay in the epoch c never had keys for
    net.set_view(["a", "b"], at=["a", "b"])
    assert net.agreed("ab") == e1
    net.frames_flow("ab")
    with pytest.raises(UnknownKeyId):
        net["c"].session.media.unprotect("audio", net["a"].session.media.protect("audio", OPUS))
    net.assert_keys_authentic()


def test_lost_start_is_retransmitted() -> None:
    class DropFirstStart(Relay):
        dropped = False

        def route(self, d: Delivery, net: Net) -> list[Delivery]:
            if d.msg_type == msgs.MSG_START and not self.dropped:
                self.dropped = True
                return []
            return [d]

    net = Net(["a", "b"], relay=DropFirstStart(), ack_timeout_s=5)
    net.set_view("ab")
    assert net["a"].session.epoch == 0
    net.advance(5.1)
    assert net.agreed("ab") == 1
    assert events_of(net, "a", MemberLagging) == [MemberLagging(1, ("b",))]


def test_member_removed_from_the_directory() -> None:
    net = Net(["a", "b", "c"])
    net.set_view("abc")
    e1 = net.agreed("abc")
    c_old = [d for d in net.log if d.sender == "c" and d.msg_type == msgs.MSG_ACK][-1]
    new_directory = {k: v for k, v in net.directory.items() if k != "c"}
    for x in "ab":
        net[x].view = frozenset("ab")
        net[x].session.update_directory(new_directory, 2, net.now)
    net.pump()
    e2 = net.agreed("ab")
    assert e2 == e1 + 1
    assert net["a"].session.charter_version == 2
    frame = net["a"].session.media.protect("audio", OPUS)
    with pytest.raises(UnknownKeyId):
        net["c"].session.media.unprotect("audio", frame)
    # c still holds its identity key, but nothing it signs is accepted any more
    with pytest.raises(NotInDirectory):
        net["a"].session.receive("c", c_old.msg_type, c_old.body, net.now)
    forged = msgs.build_start(
        net.keys["c"],
        msgs.Context("line-sochi-washington", "call-2021-12-07", 2),
        epoch=e2 + 1,
        signer="c",
        members=["a", "b", "c"],
        kem="X25519",
        suite="AES_128_GCM_SHA256_128",
        reason="join",
    )
    with pytest.raises(NotInDirectory):
        net["b"].session.receive("c", msgs.MSG_START, forged, net.now)
    # and the call layer cannot bring c back in
    with pytest.raises(NotInDirectory):
        net["a"].session.set_participants({"a", "b", "c"}, net.now)
    assert net["a"].session.participants == frozenset("ab")


def test_charter_version_change_rekeys_and_binds_the_version() -> None:
    net = Net(["a", "b"])
    net.set_view("ab")
    net.agreed("ab")
    net["a"].session.update_directory(net.directory, 2, net.now)
    net.pump()
    # b is still on version 1: it refuses a's version-2 start
    assert any(isinstance(e, WrongContext) for e in net["b"].errors)
    net["b"].session.update_directory(net.directory, 2, net.now)
    net.advance(5.1)  # a retransmits
    assert net.agreed("ab") == 2
    with pytest.raises(UsageError):
        net["a"].session.update_directory(net.directory, 1, net.now)


def test_self_removed_from_directory_erases_everything() -> None:
    net = Net(["a", "b"])
    net.set_view("ab")
    net.agreed("ab")
    with pytest.raises(StateError):
        net["b"].session.update_directory({"a": net.directory["a"]}, 2, net.now)
    with pytest.raises(NoMediaKey):
        net["b"].session.media.protect("audio", OPUS)
    assert net["b"].session.media.receive_kids() == []


def test_ephemeral_private_keys_and_old_base_keys_are_erased() -> None:
    net = Net(["a", "b"], grace_s=10)
    net.set_view("ab")
    net.agreed("ab")
    frame_e1 = net["a"].session.media.protect("audio", OPUS)
    # start a rekey by hand and watch b open the epoch secret and derive the keys
    session_b = net["b"].session
    net["a"].session.handle_timer(net.now + 300)
    net.now += 300
    captured: dict[str, object] = {}

    original_on_secret = session_b._on_secret
    original_keys_complete = session_b._keys_complete
    original_activate = session_b._activate
    original_install = session_b.media.install_receive_keys

    def spy_secret(msg, now):  # type: ignore[no-untyped-def]
        a = session_b._pending
        assert a is not None and a.ephemeral is not None
        captured["ephemeral"] = weakref.ref(a.ephemeral)
        captured["seed"] = a.ephemeral.seed_view()
        assert a.ephemeral.seed_view() is not None and any(a.ephemeral.seed_view())
        original_on_secret(msg, now)

    def spy_keys(a, now):  # type: ignore[no-untyped-def]
        # the ephemeral key is gone as soon as the secret is opened
        assert a.ephemeral is None
        captured["secret"] = a.secret
        assert isinstance(a.secret, bytearray) and any(a.secret)
        original_keys_complete(a, now)

    def spy_install(epoch, roster, keys, suite=None):  # type: ignore[no-untyped-def]
        captured["base_keys"] = list(keys.values())
        assert keys and all(any(k) for k in keys.values())
        original_install(epoch, roster, keys, suite)

    def spy_activate(a, now):  # type: ignore[no-untyped-def]
        captured["own_base_key"] = a.base_key
        original_activate(a, now)

    session_b._on_secret = spy_secret  # type: ignore[method-assign]
    session_b._keys_complete = spy_keys  # type: ignore[method-assign]
    session_b._activate = spy_activate  # type: ignore[method-assign]
    session_b.media.install_receive_keys = spy_install  # type: ignore[method-assign]
    net.pump()
    e2 = net.agreed("ab")
    # the ephemeral private key: seed overwritten, object gone
    seed = captured["seed"]
    assert isinstance(seed, bytearray) and not any(seed)
    gc.collect()
    ref = captured["ephemeral"]
    assert isinstance(ref, weakref.ref) and ref() is None
    # the epoch secret and the base keys derived from it were overwritten in place
    secret = captured["secret"]
    assert isinstance(secret, bytearray) and not any(secret)
    assert all(not any(k) for k in captured["base_keys"])  # type: ignore[attr-defined]
    own = captured["own_base_key"]
    assert isinstance(own, bytearray) and not any(own)
    # the previous epoch's keys survive the grace period only
    assert net["b"].session.media.unprotect("audio", frame_e1) == OPUS
    net.advance(10.5)
    assert [sframe.kid_epoch(k) for k in net["b"].session.media.receive_kids()] == [e2]
    with pytest.raises(ExpiredKey):
        net["b"].session.media.unprotect("audio", frame_e1)


def test_old_epoch_messages_are_refused_and_counted() -> None:
    net = Net(["a", "b"])
    net.set_view("ab")
    net.agreed("ab")
    old = [d for d in net.log if d.recipient == "b"]
    net.advance(301)
    assert net.agreed("ab") == 2
    for d in old:
        with pytest.raises(EpochRollback):
            net["b"].session.receive(d.sender, d.msg_type, d.body, net.now)
    assert net["b"].session.rejections == {"epoch_rollback": len(old)}
    rejected = events_of(net, "b", KeyRejected) + [
        e for e in net["b"].session.events() if isinstance(e, KeyRejected)
    ]
    assert {(e.sender, e.reason) for e in rejected} == {("a", "epoch_rollback")}


def test_duplicates_are_ignored_and_counted() -> None:
    net = Net(["a", "b"])
    net.set_view("ab")
    net.agreed("ab")
    for d in [d for d in net.log if d.recipient == "b"]:
        net.deliver(d)
    assert not net["b"].errors and net["b"].session.duplicates > 0
    net.pump()  # b answered with its own messages once; a treats them as duplicates too
    assert net.agreed("ab") == 1


def test_counter_limit_is_enforced_through_the_session() -> None:
    net = Net(["a", "b"], counter_limit=2)
    net.set_view("ab")
    net.agreed("ab")
    for _ in range(3):
        net["a"].session.media.protect("audio", OPUS)
    with pytest.raises(CounterExhausted):
        net["a"].session.media.protect("audio", OPUS)


def test_bad_construction() -> None:
    key = SigningKey.generate()
    with pytest.raises(UsageError):
        CallKeySession(
            line_id="l", call_id="c", self_id="a", identity_key=key, directory={}, charter_version=1
        )
    with pytest.raises(UsageError):
        CallKeySession(
            line_id="l",
            call_id="c",
            self_id="a",
            identity_key=key,
            directory={"a": key.public},
            charter_version=1,
            kem="RSA",
        )
    s = CallKeySession(
        line_id="l",
        call_id="c",
        self_id="a",
        identity_key=key,
        directory={"a": key.public},
        charter_version=1,
    )
    with pytest.raises(UsageError):
        s.set_participants({"b"}, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([*msgs.MSG_TYPES, "e2ee.other", ""]),
    st.sampled_from(["a", "b", "mallory"]),
    st.binary(max_size=300),
)
def test_receive_arbitrary_input_gives_only_key_agreement_errors(
    msg_type: str, sender: str, body: bytes
) -> None:
    key = SigningKey.generate()
    s = CallKeySession(
        line_id="l",
        call_id="c",
        self_id="a",
        identity_key=key,
        directory={"a": key.public, "b": SigningKey.generate().public},
        charter_version=1,
        kem="X25519",
    )
    s.set_participants({"a", "b"}, 0)
    with pytest.raises(KeyAgreementError):
        s.receive(sender, msg_type, body, 0)
    assert sum(s.rejections.values()) == 1


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sets(st.sampled_from("abd")),  # who besides c the call layer says is in
            st.sets(st.sampled_from("abcd"), min_size=1),  # whose call layer hears it now
            st.floats(min_value=0, max_value=40),  # then this much time passes
        ),
        max_size=6,
    ),
    st.sets(st.sampled_from("abd"), min_size=1),
)
def test_any_sequence_of_views_converges(
    steps: list[tuple[set[str], set[str], float]], final_others: set[str]
) -> None:
    """Call layers that disagree for a while, in any order, with time passing: afterwards
    the members always agree, and no timer spins without progress."""
    net = Net("abcd", ack_timeout_s=5, rekey_interval_s=30)
    for others, hearing, dt in steps:
        view = {"c", *others}  # the leader changes as a and b come and go
        net.set_view(view, at=sorted((hearing & view) or {"c"}))
        net.advance(dt)
    final = sorted({"c", *final_others})
    net.set_view(final, at=final)
    net.advance(60)
    net.set_view(final, at=final)
    net.advance(20)
    net.agreed(final)
    net.frames_flow(final)
    net.assert_keys_authentic()


def test_close_erases_every_key_and_ends_rekeys() -> None:
    net = Net(["alice", "bob"], rekey_interval_s=5)
    net.set_view(["alice", "bob"])
    assert net.agreed(["alice", "bob"]) == 1
    frame = net["bob"].session.media.protect("audio", OPUS)
    alice = net["alice"].session
    assert alice.media.receive_kids() and alice.next_timer() is not None
    alice.close()
    assert alice.closed
    assert alice.media.receive_kids() == [], "receive keys erased"
    with pytest.raises(NoMediaKey):
        alice.media.protect("audio", OPUS)
    with pytest.raises(SFrameError):
        alice.media.unprotect("audio", frame)
    assert alice.next_timer() is None, "no rekey after the call"
    alice.handle_timer(net.now + 3600)
    assert alice.outgoing() == []
    with pytest.raises(UnexpectedMessage):
        alice.receive("bob", "e2ee.ack", b"anything", net.now)
    with pytest.raises(StateError):
        alice.set_participants(["alice", "bob"], net.now)


def rekey_c(net: Net) -> tuple[SigningKey, dict[str, object]]:
    """A new charter (version 2) replaces c's identity key; a and b adopt it."""
    new_key = SigningKey.generate()
    new_directory = {**net.directory, "c": new_key.public}
    for x in "ab":
        net[x].session.update_directory(new_directory, 2, net.now)
    return new_key, new_directory


def test_rekeyed_terminal_leaves_like_a_departure() -> None:
    """Same id, new identity key: the old key holder is out at once (sending paused, its
    keys erased, it is no participant any more) and gets nothing of the next epoch; the new
    key holder comes in only through a fresh epoch."""
    net = Net(["a", "b", "c"])
    net.set_view("abc")
    e1 = net.agreed("abc")
    old_c = net["c"]
    c_frame = old_c.session.media.protect("audio", OPUS)
    new_key, _ = rekey_c(net)
    for x in "ab":
        session = net[x].session
        assert session.participants == frozenset("ab")
        with pytest.raises(NoMediaKey):
            session.media.protect("audio", OPUS)
        with pytest.raises(ExpiredKey):
            session.media.unprotect("audio", c_frame)
        net[x].view = frozenset("ab")
    net.pump()
    e2 = net.agreed("ab")
    assert e2 == e1 + 1
    with pytest.raises(UnknownKeyId):
        old_c.session.media.unprotect("audio", net["a"].session.media.protect("audio", OPUS))
    # the new key holder answers afresh: a new epoch, and the old holder still reads nothing
    net.add_member("c", key=new_key, charter_version=2)
    net.set_view("abc")
    assert net.agreed("abc") == e2 + 1
    net.frames_flow("abc")
    with pytest.raises(UnknownKeyId):
        old_c.session.media.unprotect("audio", net["a"].session.media.protect("audio", OPUS))


def test_rekeyed_terminal_readmitted_at_once_still_needs_a_new_epoch() -> None:
    """The call layer lists c again straight away (it does not know the key changed): the
    old key holder's keys are erased all the same, and the epoch that follows is sealed to
    the new key holder only."""
    net = Net(["a", "b", "c"])
    net.set_view("abc")
    e1 = net.agreed("abc")
    old_c = net["c"]
    c_frame = old_c.session.media.protect("audio", OPUS)
    new_key, _ = rekey_c(net)
    for x in "ab":
        net[x].session.set_participants(frozenset("abc"), net.now)
        with pytest.raises(NoMediaKey):
            net[x].session.media.protect("audio", OPUS)
        with pytest.raises(ExpiredKey):
            net[x].session.media.unprotect("audio", c_frame)
    net.pump()
    # the old holder cannot complete the epoch (its signatures no longer verify)
    assert net["a"].session.epoch == e1 and net["a"].session.pending_epoch is not None
    net.add_member("c", key=new_key, charter_version=2)
    net.set_view("abc")
    net.advance(5.1)  # the leader retransmits its start, now to the new key holder
    assert net.agreed("abc") > e1
    net.frames_flow("abc")
    with pytest.raises(UnknownKeyId):
        old_c.session.media.unprotect("audio", net["a"].session.media.protect("audio", OPUS))


def test_a_new_charter_policy_reaches_the_running_call() -> None:
    """A charter that changes the KEM and the SFrame suite: the epoch bound to it uses both
    (its ephemeral keys are hybrid, its frames suite 5); the old epoch's frames, sent
    under suite 4, still open during the grace period."""
    net = Net(["a", "b"], kem="X25519")
    net.set_view("ab")
    e1 = net.agreed("ab")
    old_frame = net["a"].session.media.protect("audio", OPUS)
    assert net["a"].session.media.stats().sending_suite == "AES_128_GCM_SHA256_128"
    for x in "ab":
        net[x].session.update_directory(
            net.directory, 2, net.now, kem="MLKEM768_X25519", suite="AES_256_GCM_SHA512_128"
        )
    net.pump()
    assert net.agreed("ab") == e1 + 1
    ephemerals = [d for d in net.log if d.msg_type == msgs.MSG_EPHEMERAL]
    last = msgs.parse(msgs.MSG_EPHEMERAL, ephemerals[-1].body)
    assert isinstance(last, msgs.Ephemeral) and last.kem == "MLKEM768_X25519"
    assert len(last.ek) == 1216
    for x in "ab":
        session = net[x].session
        assert session.kem == "MLKEM768_X25519" and session.suite == "AES_256_GCM_SHA512_128"
        assert session.media.stats().sending_suite == "AES_256_GCM_SHA512_128"
    new_frame = net["a"].session.media.protect("audio", OPUS)
    # 2-byte header, 16-byte tag either way; the keys differ in size, checked by the vectors:
    # here the frame must open under the suite-5 key and not under a suite-4 derivation
    assert net["b"].session.media.unprotect("audio", new_frame) == OPUS
    assert net["b"].session.media.unprotect("audio", old_frame) == OPUS
    kid = sframe.decode_header(new_frame)[0]
    assert net["b"].session.media._store.entry(kid).key.suite.name == "AES_256_GCM_SHA512_128"


def test_max_participants_bounds_every_epoch() -> None:
    """The charter allows two terminals: the call layer cannot list three, and a start
    naming three (signed by its rightful leader) is refused and counted."""
    net = Net(["a", "b", "c"], max_members=2)
    with pytest.raises(UsageError, match="at most 2"):
        net["a"].session.set_participants(frozenset("abc"), net.now)
    body = msgs.build_start(
        net.keys["a"],
        msgs.Context(LINE, CALL, 1),
        epoch=1,
        signer="a",
        members=["a", "b", "c"],
        kem="X25519",
        suite="AES_128_GCM_SHA256_128",
        reason="start",
    )
    with pytest.raises(KeyAgreementError, match="at most 2"):
        net["b"].session.receive("a", msgs.MSG_START, body, net.now)
    assert net["b"].session.rejections == {"too_many_members": 1}
    net.set_view("ab")
    assert net.agreed("ab") == 1


def test_an_older_charter_is_named_with_both_versions() -> None:
    """b still holds charter version 1 when a moves to version 2: b says which versions
    differ (once per peer and version, as an event the call layer shows), not only
    wrong_context; a claim that does not carry a's signature is not believed."""
    net = Net(["a", "b"])
    net.set_view("ab")
    net.agreed("ab")
    net["a"].session.update_directory(net.directory, 2, net.now)
    net.pump()
    (err,) = [e for e in net["b"].errors if isinstance(e, WrongContext)]
    assert isinstance(err, CharterVersionMismatch)
    assert "a has charter version 2; this terminal has 1" in str(err)
    assert net["b"].session.rejections == {"charter_version_mismatch": 1}
    assert events_of(net, "b", PeerCharterVersion) == [PeerCharterVersion("a", 2, 1)]
    assert events_of(net, "b", PeerCharterVersion)[0].message == (
        "peer a has charter version 2; this terminal has 1"
    )
    net.advance(5.1)  # a retransmits: counted again, shown once
    assert len(events_of(net, "b", PeerCharterVersion)) == 1
    # the same claim with a signature that is not a's: a plain wrong_context
    forged = msgs.build_start(
        SigningKey.generate(),
        msgs.Context(LINE, CALL, 3),
        epoch=9,
        signer="a",
        members=["a", "b"],
        kem="X25519",
        suite="AES_128_GCM_SHA256_128",
        reason="charter",
    )
    with pytest.raises(WrongContext) as refused:
        net["b"].session.receive("a", msgs.MSG_START, forged, net.now)
    assert not isinstance(refused.value, CharterVersionMismatch)
    net.pump()
    assert len(events_of(net, "b", PeerCharterVersion)) == 1


def test_rekey_soon_starts_a_new_epoch_at_once() -> None:
    """A media engine that lost the use of its send key (a browser page that took over
    mid-call) asks for a new epoch: the leader starts it at once; a member asks the leader
    with a signed e2ee.rekey naming the active epoch, and the leader starts it at once."""
    net = Net(["a", "b"], rekey_interval_s=300)
    net.set_view("ab")
    e1 = net.agreed("ab")
    assert net["a"].session.rekey_soon(net.now) == "now"
    net.advance(0.1)  # the leader's timer is due at once
    e2 = net.agreed("ab")
    assert e2 == e1 + 1
    assert net["b"].session.rekey_soon(net.now, "the page took over mid-call") == "asked"
    net.pump()
    net.advance(0.1)
    # e2 began just now: a requested rekey waits until it is MIN_REQUESTED_REKEY_S old
    assert net.agreed("ab") == e2
    net.advance(MIN_REQUESTED_REKEY_S)
    e3 = net.agreed("ab")
    assert e3 == e2 + 1
    assert net["b"].session.rekey_soon(net.now, "asked again at once") == "asked"
    net.pump()
    net.advance(MIN_REQUESTED_REKEY_S - 0.5)
    assert net.agreed("ab") == e3  # a member asking after every epoch gets one per 2 s
    net.advance(0.6)
    e3 = net.agreed("ab")
    assert e3 == e2 + 2
    net.frames_flow("ab")  # both send under the new epoch's keys
    assert net["b"].session.media.stats().sending_epoch == e3
    assert net["a"].session.rejections == {} and not net["a"].errors
    net.advance(299)
    assert net.agreed("ab") == e3  # the periodic rekey counts from the new activation
    net.advance(2)
    assert net.agreed("ab") == e3 + 1
    net["a"].session.close()
    assert net["a"].session.rekey_soon(net.now) == "closed"


def test_rekey_requests_are_refused_unless_for_the_active_epoch_to_its_leader() -> None:
    net = Net(["a", "b", "c"], rekey_interval_s=300)
    net.set_view("abc")
    e1 = net.agreed("abc")
    ctx = msgs.Context(LINE, CALL, 1)

    def request(signer: str, to: str, epoch: int) -> None:
        body = msgs.build_rekey(net.keys[signer], ctx, epoch=epoch, signer=signer, reason="x")
        net.deliver(Delivery(signer, to, msgs.MSG_REKEY, body))

    request("b", "a", e1 + 5)  # not the active epoch
    request("b", "c", e1)  # c does not lead
    request("c", "a", e1 - 1 if e1 > 1 else e1 + 1)
    assert net["a"].session.rejections == {"unexpected_message": 2}
    assert net["c"].session.rejections == {"unexpected_message": 1}
    net.advance(1)
    assert net.agreed("abc") == e1  # none of them started an epoch
    request("b", "a", e1)
    request("b", "a", e1)  # the same request again: a duplicate, ignored
    assert net["a"].session.duplicates >= 1
    net.pump()
    net.advance(MIN_REQUESTED_REKEY_S)
    e2 = net.agreed("abc")  # numbered above the highest epoch a member named (e1 + 5)
    assert e2 > e1
    request("b", "a", e1)  # stale now: the epoch it named is over
    net.advance(1)
    assert net.agreed("abc") == e2
    assert net["a"].session.rejections == {"unexpected_message": 3}
