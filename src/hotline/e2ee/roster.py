"""Rosters: who proposes one, and the checks a member makes before it signs one.

**Who proposes.** The *leader* of an epoch is the member with the lowest terminal id (by
code point, which is also UTF-8 byte order) among the members of that epoch's roster. The
leader opens the epoch (``e2ee.start``), collects the ephemeral keys, proposes the roster
and makes the epoch secret that every sender's key is derived from (docs/protocol.md §4
says what that lets a malicious leader do, and why the protocol is built that way).

**What a member checks.** Every member approves a roster only if

* it was proposed by the leader of *its own* member list (so the exchange cannot pick a
  proposer, and two honest members never wait for different proposers once their call
  layers agree);
* its member list equals the participant set that member's own call layer gave it, and
  contains the member itself;
* its epoch is newer than every epoch the member has seen in this call;
* every member is in the charter's directory with the identity key shown, and the
  member's own entry is exactly the hash of the ephemeral key and the commitment it made
  (the leader checked every member's signature on its ephemeral key; each member checks
  that its own entry was not substituted, so a substituted entry is refused by its owner).

The roster carries the leader's commitment to the epoch secret; approving the roster fixes
it, and every member checks the secret it opens against it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from hotline.e2ee.messages import EpochStart, RosterEntry, RosterProposal
from hotline.e2ee.sender_keys import Kem
from hotline.errors import DowngradeRefused, NotInDirectory, RosterMismatch
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
    start: EpochStart,
    self_id: str,
    own_ek_hash: bytes,
    own_commit: bytes,
    directory: Mapping[str, PublicKey],
    kem: Kem,
    suite: str,
) -> Roster:
    """Every check a member makes before it signs ``proposal`` (see the module docstring).
    Raises :class:`RosterMismatch`, :class:`NotInDirectory` or :class:`DowngradeRefused`."""
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
        if entry.member == self_id and (entry.ek_hash != own_ek_hash or entry.commit != own_commit):
            raise RosterMismatch("our own ephemeral key or commitment was substituted")
    return Roster(
        epoch=epoch,
        members=proposal.members,
        entries={e.member: e for e in proposal.entries},
        roster_hash=proposal.roster_hash,
        proposal=proposal,
    )
