"""Rosters: who proposes one, and the checks a member makes before it signs one.

**Who proposes.** The *leader* of an epoch is the member with the lowest terminal id (by
code point, which is also UTF-8 byte order) among the members of that epoch's roster. The
leader opens the epoch (``e2ee.start``), collects the ephemeral keys and proposes the
roster. Nothing else is special about it.

**Why that is safe.** Being leader gives no power a member does not already have: every
member signs a roster only if

* it was proposed by the leader of *its own* member list (so the exchange cannot pick a
  proposer, and two honest members never wait for different proposers once their call
  layers agree);
* its member list equals the participant set that member's own call layer gave it, and
  contains the member itself;
* its epoch is newer than every epoch the member has seen in this call;
* every member is in the charter's directory with the identity key shown, every ephemeral
  key carries its owner's signature (bound to line, call, charter version and epoch), and
  the member's own entry is exactly the key and commitment it made.

A malicious leader can only fail to propose (a denial of service that every member sees as
:class:`~hotline.e2ee.events.MemberLagging`) or propose a roster the others refuse.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from hotline.e2ee.messages import (
    Context,
    EpochStart,
    RosterEntry,
    RosterProposal,
    ephemeral_signed_bytes,
)
from hotline.e2ee.sender_keys import Kem, parse_public_key
from hotline.errors import (
    DowngradeRefused,
    MalformedMessage,
    NotInDirectory,
    RosterMismatch,
    SignatureError,
)
from hotline.keys import PublicKey


def leader_of(members: Collection[str]) -> str:
    """The member that proposes a roster of ``members``: the lowest terminal id."""
    if not members:
        raise RosterMismatch("a roster needs at least one member")
    return min(members)


@dataclass(frozen=True)
class Roster:
    """A roster this member has checked and signed."""

    epoch: int
    members: tuple[str, ...]
    entries: Mapping[str, RosterEntry]
    roster_hash: bytes
    proposal: RosterProposal

    def index_of(self, member: str) -> int:
        """The member's KID sender index: its position in the sorted member list."""
        return self.members.index(member)


def check_policy(kem: str, suite: str, *, want_kem: Kem, want_suite: str) -> None:
    if kem != want_kem.name:
        raise DowngradeRefused(f"KEM {kem[:64]!r} is not the charter's {want_kem.name}")
    if suite != want_suite:
        raise DowngradeRefused(f"cipher suite {suite[:64]!r} is not the charter's {want_suite}")


def check_start(
    start: EpochStart,
    *,
    self_id: str,
    directory: Mapping[str, PublicKey],
    kem: Kem,
    suite: str,
    max_members: int,
) -> None:
    """Checks on ``e2ee.start`` that do not depend on our participant set."""
    if start.signer != leader_of(start.members):
        raise RosterMismatch(
            f"epoch {start.epoch} opened by {start.signer}, not by its leader "
            f"{leader_of(start.members)}"
        )
    if self_id not in start.members:
        raise RosterMismatch(f"epoch {start.epoch} does not include us")
    if len(start.members) > max_members:
        raise RosterMismatch(
            f"epoch {start.epoch} names {len(start.members)} members; the charter allows "
            f"at most {max_members}",
            reason="too_many_members",
        )
    unknown = [m for m in start.members if m not in directory]
    if unknown:
        raise NotInDirectory(f"epoch {start.epoch} names terminals not in the charter: {unknown}")
    check_policy(start.kem, start.suite, want_kem=kem, want_suite=suite)


def check_roster(
    proposal: RosterProposal,
    *,
    ctx: Context,
    start: EpochStart,
    self_id: str,
    own_ek: bytes,
    own_commit: bytes,
    directory: Mapping[str, PublicKey],
    kem: Kem,
    suite: str,
) -> Roster:
    """Every check a member makes before it signs ``proposal`` (see the module docstring).
    Raises :class:`RosterMismatch`, :class:`NotInDirectory`, :class:`DowngradeRefused` or
    :class:`MalformedMessage`."""
    epoch = proposal.epoch
    if proposal.epoch != start.epoch:
        raise RosterMismatch(f"roster for epoch {proposal.epoch}, expected {start.epoch}")
    if proposal.signer != start.signer:
        raise RosterMismatch(f"roster proposed by {proposal.signer}, not by {start.signer}")
    if proposal.members != start.members:
        raise RosterMismatch(f"roster of epoch {epoch} does not list the members it opened with")
    check_policy(proposal.kem, proposal.suite, want_kem=kem, want_suite=suite)
    for entry in proposal.entries:
        identity = directory.get(entry.member)
        if identity is None:
            raise NotInDirectory(f"roster names {entry.member}, who is not in the charter")
        if entry.identity_key != identity.raw:
            raise RosterMismatch(f"identity key of {entry.member} is not the charter's")
        signed = ephemeral_signed_bytes(
            ctx, epoch=epoch, member=entry.member, kem=kem.name, ek=entry.ek, commit=entry.commit
        )
        try:
            identity.verify(entry.ek_sig, signed, what=f"ephemeral key of {entry.member}")
        except SignatureError as exc:
            raise RosterMismatch(
                f"ephemeral key of {entry.member} is not signed by {entry.member}"
            ) from exc
        try:
            parse_public_key(kem, entry.ek)
        except MalformedMessage as exc:
            raise RosterMismatch(f"ephemeral key of {entry.member} is unusable") from exc
        if entry.member == self_id and (entry.ek != own_ek or entry.commit != own_commit):
            raise RosterMismatch("our own ephemeral key or commitment was substituted")
    return Roster(
        epoch=epoch,
        members=proposal.members,
        entries={e.member: e for e in proposal.entries},
        roster_hash=proposal.roster_hash,
        proposal=proposal,
    )
