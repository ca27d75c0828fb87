"""The terminal's dispatch core (pure): which call an envelope belongs to, and what then."""

from __future__ import annotations

from hotline.terminal.dispatch import NAMESPACES, CurrentCall, Decision, Route, dispatch


def decide(msg_type: str = "call.ring", **overrides: object) -> Decision:
    args: dict[str, object] = {
        "msg_type": msg_type,
        "sender": "bravo",
        "call_id": "call-2",
        "age_s": 0.5,
        "ring_members": 1,
        "ring_purpose": "call",
        "current": None,
        "known_calls": set(),
        "max_participants": 4,
    }
    args.update(overrides)
    return dispatch(**args)  # type: ignore[arg-type]


LIVE_CALL = CurrentCall("call-1", live=True, ended=False, purpose="call")
LIVE_CHECK = CurrentCall("call-1", live=True, ended=False, purpose="check")
ENDED = CurrentCall("call-1", live=False, ended=True)


def test_one_registry_of_namespaces() -> None:
    assert set(NAMESPACES) == {"call.", "e2ee.", "check."}
    assert decide("chat.hello").route is Route.REFUSE
    assert decide("chat.hello").reason == "unknown_type"


def test_rings() -> None:
    assert decide().route is Route.NEW_CALL
    assert decide(current=ENDED).route is Route.NEW_CALL
    assert decide(current=LIVE_CALL) == Decision(Route.DECLINE, "busy")
    assert decide(ring_members=4) == Decision(Route.DECLINE, "full")
    stale = decide(age_s=61)
    assert (
        stale.route is Route.REFUSE and stale.reason == "stale_ring" and "61 s old" in stale.detail
    )
    assert decide(known_calls={"call-2"}).reason == "replayed_ring"
    # a ring of the current call goes to it (the machine refuses it there)
    assert decide(call_id="call-1", current=LIVE_CALL).route is Route.TO_CALL


def test_a_real_call_preempts_a_check_and_a_check_never_preempts() -> None:
    assert decide(current=LIVE_CHECK).route is Route.PREEMPT
    assert decide(current=LIVE_CHECK, ring_purpose="check") == Decision(Route.DECLINE, "busy")
    assert decide(current=LIVE_CALL, ring_purpose="check") == Decision(Route.DECLINE, "busy")


def test_other_messages_go_to_their_call_or_are_refused() -> None:
    for msg_type in ("call.answer", "e2ee.sender_key", "check.report"):
        assert decide(msg_type, call_id="call-1", current=LIVE_CALL).route is Route.TO_CALL
    assert decide("call.sdp", call_id="call-1", current=ENDED).route is Route.TO_ENDED
    assert decide("call.sdp").reason == "no_such_call"
    left = decide("call.sdp", known_calls={"call-2"}, current=LIVE_CALL)
    assert left.route is Route.LEAVE_ENDED
