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
from hotline.e2ee.messages import LABEL_PREFIX, Ack, Confirm, Ephemeral, EpochStart, Message
from hotline.e2ee.roster import Roster
from hotline.e2ee.sender_keys import EphemeralKeyPair, zeroize
from hotline.encoding import encode
from hotline.errors import StateError

TRANSCRIPT_LABEL: Final = LABEL_PREFIX + "transcript"


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
    ROSTER_ACCEPTED = "roster_accepted"  # we checked the roster and sent our confirm
    KEYS_COMPLETE = "keys_complete"  # we hold the secret and every confirm, sent our ack
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


def transcript_hash(roster_hash: bytes, confirms: Mapping[str, bytes]) -> bytes:
    """What every member acknowledges: the roster (which carries the leader's commitment to
    the epoch secret) and every confirm message's signed bytes (by member). Two members with
    the same transcript approved the same roster, opened a secret matching the same
    commitment, and saw the same revealed nonces: they hold the same keys and show the
    same code."""
    return hashlib.sha256(
        encode(
            {
                "t": TRANSCRIPT_LABEL,
                "roster": roster_hash,
                "confirms": [[m, hashlib.sha256(confirms[m]).digest()] for m in sorted(confirms)],
            }
        )
    ).digest()


@dataclass
class Attempt:
    """One epoch at this member, from its start until it is active or abandoned. Its
    secrets (ephemeral key pair, unrevealed nonce, epoch secret, base key) are kept out of
    ``repr``."""

    epoch: int
    members: tuple[str, ...]
    leader: str
    reason: str
    start: EpochStart
    started_at: float
    state: State | None = None
    #: our ephemeral key pair; erased as soon as the epoch secret is opened
    ephemeral: EphemeralKeyPair | None = field(default=None, repr=False)
    #: ``ephemeral_key_hash`` of our ephemeral public key (what the roster lists)
    ek_hash: bytes = b""
    #: the nonce we committed to (revealed in our confirm message)
    reveal: bytes = field(default=b"", repr=False)
    commit: bytes = b""
    #: leader only: the members' ephemeral messages
    ephemerals: dict[str, Ephemeral] = field(default_factory=dict)
    roster: Roster | None = None
    #: the epoch secret (made by the leader, opened by the others), until every sender's
    #: base key is derived from it
    secret: bytearray | None = field(default=None, repr=False)
    #: we held the epoch secret (it stays True after the buffer is erased)
    secret_held: bool = False
    #: our base key for this epoch, until it is handed to the media crypto
    base_key: bytearray | None = field(default=None, repr=False)
    confirms: dict[str, Confirm] = field(default_factory=dict)
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
            return tuple(
                m
                for m in self.members
                if m not in self.confirms or (m == self.leader and not self.secret_held)
            )
        if self.state is State.AWAITING_ACKS:
            return tuple(m for m in self.members if m not in self.acks)
        return ()

    def erase_secrets(self) -> None:
        """Erase the ephemeral private key, the epoch secret and the base key this attempt
        still holds."""
        if self.ephemeral is not None:
            self.ephemeral.erase()
            self.ephemeral = None
        if self.secret is not None:
            zeroize(self.secret)
            self.secret = None
        if self.base_key is not None:
            zeroize(self.base_key)
            self.base_key = None
