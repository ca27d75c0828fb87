"""Epochs: the state of one epoch at one member, as a transition table, and its bookkeeping.

An epoch goes through these states at each member (the leader collects ephemeral keys, the
others wait for the roster)::

    (none) --START_LED------> COLLECTING_EPHEMERALS --ROSTER_ACCEPTED--+
    (none) --START_ACCEPTED-> AWAITING_ROSTER ------ROSTER_ACCEPTED----+
                                                                       v
             COLLECTING_KEYS --KEYS_COMPLETE--> AWAITING_ACKS --ACKS_COMPLETE--> ACTIVE
    ACTIVE --SUPERSEDED--> RETIRED --GRACE_OVER--> ERASED
    any pending state --ABANDONED--> FAILED

The table :data:`TRANSITIONS` is the only place where the order is written down; any other
step raises :class:`~hotline.errors.StateError` (that is our bug, never the peer's: the
session checks the peer's message before it asks for a transition).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from hotline.e2ee.events import Outgoing
from hotline.e2ee.messages import Ack, Ephemeral, EpochStart, Message, SenderKey
from hotline.e2ee.roster import Roster
from hotline.e2ee.sender_keys import EphemeralKeyPair, zeroize
from hotline.encoding import encode
from hotline.errors import StateError

TRANSCRIPT_LABEL: Final = "hotline.e2ee.v1.transcript"


class State(StrEnum):
    COLLECTING_EPHEMERALS = "collecting_ephemerals"
    AWAITING_ROSTER = "awaiting_roster"
    COLLECTING_KEYS = "collecting_keys"
    AWAITING_ACKS = "awaiting_acks"
    ACTIVE = "active"
    RETIRED = "retired"
    ERASED = "erased"
    FAILED = "failed"


class Event(StrEnum):
    START_LED = "start_led"  # we are the leader and opened the epoch
    START_ACCEPTED = "start_accepted"  # we accepted the leader's e2ee.start
    ROSTER_ACCEPTED = "roster_accepted"  # we checked and signed the roster, sent our key
    KEYS_COMPLETE = "keys_complete"  # we hold every member's base key, sent our ack
    ACKS_COMPLETE = "acks_complete"  # every member acknowledged: we send under this epoch
    SUPERSEDED = "superseded"  # a newer epoch became active
    GRACE_OVER = "grace_over"  # the grace period ended: keys erased
    ABANDONED = "abandoned"  # timed out, superseded before completion, participants changed


PENDING: Final = frozenset(
    {State.COLLECTING_EPHEMERALS, State.AWAITING_ROSTER, State.COLLECTING_KEYS, State.AWAITING_ACKS}
)

#: (state, event) -> next state; ``None`` is "no epoch yet"
TRANSITIONS: Final[Mapping[tuple[State | None, Event], State]] = {
    (None, Event.START_LED): State.COLLECTING_EPHEMERALS,
    (None, Event.START_ACCEPTED): State.AWAITING_ROSTER,
    (State.COLLECTING_EPHEMERALS, Event.ROSTER_ACCEPTED): State.COLLECTING_KEYS,
    (State.AWAITING_ROSTER, Event.ROSTER_ACCEPTED): State.COLLECTING_KEYS,
    (State.COLLECTING_KEYS, Event.KEYS_COMPLETE): State.AWAITING_ACKS,
    (State.AWAITING_ACKS, Event.ACKS_COMPLETE): State.ACTIVE,
    (State.ACTIVE, Event.SUPERSEDED): State.RETIRED,
    (State.RETIRED, Event.GRACE_OVER): State.ERASED,
    **{(s, Event.ABANDONED): State.FAILED for s in PENDING},
}


def transition(state: State | None, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise StateError(f"no transition from {state} on {event}") from None


def transcript_hash(roster_hash: bytes, sender_keys: Mapping[str, bytes]) -> bytes:
    """What every member acknowledges: the roster and every sender key message's signed
    bytes (by member). Two members with the same transcript hold the same keys."""
    return hashlib.sha256(
        encode(
            {
                "t": TRANSCRIPT_LABEL,
                "roster": roster_hash,
                "sender_keys": [
                    [m, hashlib.sha256(sender_keys[m]).digest()] for m in sorted(sender_keys)
                ],
            }
        )
    ).digest()


@dataclass
class Attempt:
    """One epoch at this member, from its start until it is active or abandoned. Its
    secrets (ephemeral key pair, unrevealed nonce, base keys) are kept out of ``repr``."""

    epoch: int
    members: tuple[str, ...]
    leader: str
    reason: str
    start: EpochStart
    started_at: float
    state: State | None = None
    #: our ephemeral key pair; erased as soon as every sealed key is opened
    ephemeral: EphemeralKeyPair | None = field(default=None, repr=False)
    #: the nonce we committed to (revealed in our sender key message)
    reveal: bytes = field(default=b"", repr=False)
    commit: bytes = b""
    #: leader only: the members' ephemeral messages
    ephemerals: dict[str, Ephemeral] = field(default_factory=dict)
    roster: Roster | None = None
    #: our base key for this epoch, until it is handed to the media crypto
    base_key: bytearray | None = field(default=None, repr=False)
    sender_keys: dict[str, SenderKey] = field(default_factory=dict)
    #: other members' opened base keys, until they are handed to the media crypto
    base_keys: dict[str, bytearray] = field(default_factory=dict, repr=False)
    transcript: bytes | None = None
    security_code: str | None = None
    acks: dict[str, Ack] = field(default_factory=dict)
    #: messages that arrived before we could check them (at most one per kind and member)
    buffered: dict[tuple[str, str], Message] = field(default_factory=dict)
    #: every message we sent for this epoch (retransmitted on timeout, or on request)
    sent: list[Outgoing] = field(default_factory=list)
    timeouts: int = 0
    keys_installed: bool = False

    def advance(self, event: Event) -> None:
        self.state = transition(self.state, event)

    def missing(self) -> tuple[str, ...]:
        """Whose next message we are waiting for."""
        if self.state is State.COLLECTING_EPHEMERALS:
            return tuple(m for m in self.members if m not in self.ephemerals)
        if self.state is State.AWAITING_ROSTER:
            return (self.leader,)
        if self.state is State.COLLECTING_KEYS:
            return tuple(m for m in self.members if m not in self.sender_keys)
        if self.state is State.AWAITING_ACKS:
            return tuple(m for m in self.members if m not in self.acks)
        return ()

    def erase_secrets(self) -> None:
        """Erase the ephemeral private key and every base key this attempt still holds."""
        if self.ephemeral is not None:
            self.ephemeral.erase()
            self.ephemeral = None
        if self.base_key is not None:
            zeroize(self.base_key)
            self.base_key = None
        for key in self.base_keys.values():
            zeroize(key)
        self.base_keys.clear()
