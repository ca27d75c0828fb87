"""Which call a verified envelope belongs to, and what the terminal does with it (pure).

The terminal daemon asks :func:`dispatch` for every envelope the exchange client verified
(signature, freshness, order) and acts on the :class:`Decision`: no other place decides
whether an envelope starts a call, goes to the running one, is declined (busy, full) or is
refused (unknown namespace, stale or replayed ring, no such call). A readiness check is a
call like any other, with ``purpose`` "check" on its ring: the terminal answers it by
itself, and a real ring pre-empts a running check.

The namespaces a terminal takes, and who handles them, are one registry
(:data:`NAMESPACES`): ``call.*`` (the call machine), ``e2ee.*`` (the key session),
``check.*`` (a readiness check's reports). Everything else is refused.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from hotline.call.machine import PURPOSE_CALL, PURPOSE_CHECK, RING_TIMEOUT_S

MSG_RING = "call.ring"

#: message namespace -> what handles it; every handler lives in the call it names
NAMESPACES: dict[str, str] = {
    "call.": "the call machine",
    "e2ee.": "the key agreement",
    "check.": "the readiness check",
}


class Route(Enum):
    NEW_CALL = "new_call"  #: a ring for an idle terminal: a new incoming call
    PREEMPT = "preempt"  #: a real ring while a check runs: end the check, then a new call
    TO_CALL = "to_call"  #: for the current call
    TO_ENDED = "to_ended"  #: for the current call, which has ended: answer with a leave too
    LEAVE_ENDED = "leave_ended"  #: for a call this terminal has left: answer with a leave
    DECLINE = "decline"  #: a ring that cannot be taken (``reason``: busy, full)
    REFUSE = "refuse"  #: counted, logged, shown (``reason``)


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class CurrentCall:
    """What dispatch needs to know of the terminal's current call."""

    call_id: str
    live: bool  #: ringing, being rung or active (not ended)
    ended: bool
    purpose: str = PURPOSE_CALL


def namespace_of(msg_type: str) -> str | None:
    return next((ns for ns in NAMESPACES if msg_type.startswith(ns)), None)


def dispatch(
    *,
    msg_type: str,
    sender: str,
    call_id: str,
    age_s: float,
    ring_members: int,
    ring_purpose: str,
    current: CurrentCall | None,
    known_calls: Collection[str],
    max_participants: int,
) -> Decision:
    """Decide for one verified envelope. ``ring_members`` and ``ring_purpose`` are read
    from a ring's body (0 and "call" for other messages)."""
    if namespace_of(msg_type) is None:
        return Decision(Route.REFUSE, "unknown_type", f"{msg_type} from {sender}")
    if msg_type == MSG_RING:
        if age_s > RING_TIMEOUT_S:
            # released late by the exchange: its caller gave up long ago (a phantom)
            return Decision(
                Route.REFUSE,
                "stale_ring",
                f"ring {call_id} from {sender}: {age_s:.0f} s old "
                f"(rings time out after {RING_TIMEOUT_S:.0f} s)",
            )
        live = current is not None and current.live
        if current is not None and call_id == current.call_id and live:
            return Decision(Route.TO_CALL)
        if call_id in known_calls:
            # an old ring again (a replay across our restart): never a new call
            return Decision(Route.REFUSE, "replayed_ring", f"{call_id} from {sender}")
        if ring_members + 1 > max_participants:
            return Decision(Route.DECLINE, "full")
        if not live:
            return Decision(Route.NEW_CALL)
        assert current is not None
        if current.purpose == PURPOSE_CHECK and ring_purpose == PURPOSE_CALL:
            return Decision(Route.PREEMPT)  # a real call always pre-empts a line check
        return Decision(Route.DECLINE, "busy")
    if current is None or call_id != current.call_id:
        if call_id in known_calls:
            return Decision(Route.LEAVE_ENDED, "no_such_call", f"{msg_type} from {sender}")
        return Decision(Route.REFUSE, "no_such_call", f"{msg_type} from {sender}")
    if current.ended:
        return Decision(Route.TO_ENDED)
    return Decision(Route.TO_CALL)
