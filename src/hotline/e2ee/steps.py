"""The steps of one epoch at one member: what we send and what we check.

:class:`EpochSteps` is the half of :class:`~hotline.e2ee.session.CallKeySession` that runs
the protocol of docs/protocol.md: our steps (§4, §6: open an epoch as its leader, accept a
start, send our ephemeral key, propose the roster and seal the epoch secret to every member
(leader), confirm the roster, derive every sender's key, acknowledge, switch)
and the checks on every message kind we receive, in the order of §5. The session adds the
call layer's inputs (participants, directory), the timers and the reconciliation of the
participants with the epochs; its ``__init__`` sets every attribute declared here.

Nothing here performs I/O or reads the clock; ``now`` is passed in.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

from hotline.e2ee import messages as m
from hotline.e2ee.epochs import Attempt, Event, State, transcript_hash
from hotline.e2ee.events import (
    E2EEEvent,
    EpochActivated,
    EpochFailed,
    KeyRejected,
    Outgoing,
    PeerCharterVersion,
)
from hotline.e2ee.media import KeySink
from hotline.e2ee.roster import Roster, check_roster, check_start, leader_of
from hotline.e2ee.security_code import security_code
from hotline.e2ee.sender_keys import (
    SECRET_SIZE,
    EphemeralKeyPair,
    Kem,
    check_secret_commitment,
    derive_sender_key,
    parse_public_key,
    seal,
    seal_info,
    secret_commit_info,
    secret_commitment,
    sender_key_info,
    zeroize,
)
from hotline.e2ee.sframe import MAX_EPOCH, suite_by_name
from hotline.errors import (
    BadKeySignature,
    CharterVersionMismatch,
    DowngradeRefused,
    E2EEError,
    EpochRollback,
    Equivocation,
    NotInDirectory,
    RosterMismatch,
    SealedKeyError,
    SenderMismatch,
    StateError,
    TranscriptMismatch,
    UnexpectedMessage,
    WrongContext,
)
from hotline.keys import PublicKey, SigningKey

log = logging.getLogger("hotline.e2ee.session")

#: an attempt is abandoned after this many acknowledgement timeouts (MemberLagging before)
MAX_TIMEOUTS: Final = 3
#: how far ahead of the newest epoch we know a leader may jump (after abandoned attempts)
MAX_EPOCH_STEP: Final = 64
#: how often we answer one member's retransmissions for one epoch with ours
MAX_NUDGES: Final = MAX_TIMEOUTS
NONCE_SIZE: Final = m.NONCE_SIZE
#: how many (member, charter version) pairs we report a version mismatch for, per call
MAX_VERSION_REPORTS: Final = 64
#: a rekey another member asks for starts at the earliest this long after the active epoch
#: began (the epoch's own members asked for it; a new one every few seconds at most)
MIN_REQUESTED_REKEY_S: Final = 2.0


@dataclass
class Active:
    """The epoch we send under."""

    epoch: int
    members: tuple[str, ...]
    roster_hash: bytes
    security_code: str
    activated_at: float
    charter_version: int
    sent: list[Outgoing]
    #: member -> the identity key (raw) the epoch's roster was made for
    identities: Mapping[str, bytes]
    #: the charter policy the epoch was made under
    kem: str
    suite: str


class EpochSteps:
    """Our steps and the checks on their messages (see the module docstring)."""

    # set by CallKeySession.__init__ (and changed by its inputs)
    self_id: str
    _key: SigningKey
    _directory: dict[str, PublicKey]
    _ctx: m.Context
    _kem: Kem
    _suite_name: str
    _max_members: int
    _rng: Callable[[int], bytes]
    _grace: float
    _rekey_interval: float
    media: KeySink
    _participants: frozenset[str]
    _active: Active | None
    _pending: Attempt | None
    _highest: int
    _newest_heard: int
    _retries: int
    _deferred: m.EpochStart | None
    _retiring: list[tuple[float, int]]
    _seen: dict[bytes, tuple[int, str]]
    _slots: dict[tuple[int, str, str], bytes]
    _nudges: Counter[tuple[str, int]]
    _awaiting_since: float | None
    _next_rekey_at: float | None
    _rekey_lag_reported: bool
    _out: list[Outgoing]
    _last_own: Outgoing | None
    _events: list[E2EEEvent]
    _rejections: Counter[str]
    duplicates: int
    _version_reports: set[tuple[str, int]]

    def _reconcile(self, now: float) -> None:
        """Start or accept the epoch the participants need (the session's)."""
        raise NotImplementedError

    # --- bookkeeping -------------------------------------------------------------------------

    def _leads(self, members: Collection[str]) -> bool:
        return leader_of(members) == self.self_id

    def _reject(self, sender: str, msg_type: str, exc: E2EEError) -> None:
        self._rejections[exc.reason] += 1
        self._events.append(KeyRejected(sender, exc.reason, msg_type))
        log.warning(
            "e2ee: refused %s from %s: %s (%s)", msg_type[:40], sender[:64], exc, exc.reason
        )

    def _record(self, msg: m.Message) -> None:
        self._seen[msg.digest] = (msg.epoch, msg.signer)
        self._slots[(msg.epoch, msg.msg_type, msg.signer)] = msg.digest

    def _emit(self, a: Attempt | None, recipient: str | None, msg_type: str, body: bytes) -> None:
        out = Outgoing(recipient, msg_type, body)
        self._out.append(out)
        self._last_own = out
        if a is not None:
            a.sent.append(out)

    def _send_own(self, a: Attempt, msg_type: str, body: bytes, now: float) -> None:
        """Send one of our messages to every participant and process it ourselves."""
        self._emit(a, None, msg_type, body)
        msg = m.parse(msg_type, body)
        self._record(msg)
        self._dispatch(msg, now)

    def _abandon(self, a: Attempt, reason: str) -> None:
        a.advance(Event.ABANDONED)
        a.erase_secrets()
        if a.keys_installed:
            self.media.erase_epoch(a.epoch)
        if self._pending is a:
            self._pending = None
        log.warning("e2ee: epoch %d abandoned: %s", a.epoch, reason)
        self._events.append(EpochFailed(a.epoch, reason))

    # --- the protocol: our steps -------------------------------------------------------------

    def _begin_as_leader(self, now: float, reason: str) -> None:
        epoch = max(self._highest, self._newest_heard) + 1
        if epoch > MAX_EPOCH:
            raise StateError("no epochs left in this call")
        members = sorted(self._participants)
        body = m.build_start(
            self._key,
            self._ctx,
            epoch=epoch,
            signer=self.self_id,
            members=members,
            kem=self._kem.name,
            suite=self._suite_name,
            reason=reason,
        )
        start = m.parse(m.MSG_START, body)
        assert isinstance(start, m.EpochStart)
        self._accept_start(start, now, own_body=body)

    def _accept_start(self, start: m.EpochStart, now: float, own_body: bytes | None = None) -> None:
        if self._pending is not None:
            self._abandon(self._pending, f"superseded by epoch {start.epoch}")
        if self._deferred is not None and self._deferred.epoch <= start.epoch:
            self._deferred = None
        self._highest = start.epoch
        self._awaiting_since = None
        leader = start.signer
        a = Attempt(
            epoch=start.epoch,
            members=start.members,
            leader=leader,
            reason=start.reason,
            start=start,
            started_at=now,
        )
        a.advance(Event.START_LED if leader == self.self_id else Event.START_ACCEPTED)
        self._pending = a
        self._record(start)
        if own_body is not None:
            self._emit(a, None, m.MSG_START, own_body)
        a.ephemeral = EphemeralKeyPair.generate(self._kem, self._rng)
        a.ek_hash = m.ephemeral_key_hash(a.ephemeral.public)
        a.reveal = bytes(self._rng(NONCE_SIZE))
        a.commit = m.commitment(a.epoch, self.self_id, a.reveal)
        body = m.build_ephemeral(
            self._key,
            self._ctx,
            epoch=a.epoch,
            signer=self.self_id,
            kem=self._kem.name,
            ek=a.ephemeral.public,
            commit=a.commit,
        )
        if leader == self.self_id:
            msg = m.parse(m.MSG_EPHEMERAL, body)
            self._record(msg)
            self._dispatch(msg, now)
        else:
            self._emit(a, leader, m.MSG_EPHEMERAL, body)
            msg = m.parse(m.MSG_EPHEMERAL, body)
            self._record(msg)

    def _propose_roster(self, a: Attempt, now: float) -> None:
        """Leader: make the epoch secret, commit to it in the roster, seal it to every other
        member's ephemeral key (one ``e2ee.secret`` each), then confirm our own roster."""
        secret = bytearray(self._rng(SECRET_SIZE))
        entries = [
            m.RosterEntry(
                member=member,
                identity_key=self._directory[member].raw,
                ek_hash=m.ephemeral_key_hash(a.ephemerals[member].ek),
                commit=a.ephemerals[member].commit,
            )
            for member in a.members
        ]
        body = m.build_roster(
            self._key,
            self._ctx,
            epoch=a.epoch,
            signer=self.self_id,
            kem=self._kem.name,
            suite=self._suite_name,
            entries=entries,
            secret_commit=secret_commitment(secret, self._secret_commit_info(a)),
        )
        roster = m.parse(m.MSG_ROSTER, body)
        assert isinstance(roster, m.RosterProposal)
        secrets: list[tuple[str, bytes]] = []
        for member in a.members:
            if member == self.self_id:
                continue
            info = self._seal_info(a, member, roster.roster_hash)
            try:
                sealed = seal(self._kem, a.ephemerals[member].ek, secret, info)
            except SealedKeyError as exc:
                zeroize(secret)
                del a.ephemerals[member]  # we wait for a usable key from it (MemberLagging)
                raise SealedKeyError(
                    f"cannot seal the epoch secret to the ephemeral key of {member[:64]}"
                ) from exc
            secrets.append(
                (
                    member,
                    m.build_secret(
                        self._key,
                        self._ctx,
                        epoch=a.epoch,
                        signer=self.self_id,
                        recipient=member,
                        roster_hash=roster.roster_hash,
                        sealed=sealed,
                    ),
                )
            )
        a.secret = secret
        a.secret_held = True
        self._emit(a, None, m.MSG_ROSTER, body)
        for member, secret_body in secrets:
            self._emit(a, member, m.MSG_SECRET, secret_body)
        self._record(roster)
        self._dispatch(roster, now)

    def _maybe_complete(self, a: Attempt, now: float) -> None:
        if a.state is State.COLLECTING_KEYS and a.secret_held and len(a.confirms) == len(a.members):
            self._keys_complete(a, now)

    def _keys_complete(self, a: Attempt, now: float) -> None:
        roster = a.roster
        assert roster is not None and a.secret is not None
        a.advance(Event.KEYS_COMPLETE)
        if a.ephemeral is not None:  # forward secrecy: nothing left to open
            a.ephemeral.erase()
            a.ephemeral = None
        keys: dict[str, bytearray] = {}
        for index, member in enumerate(roster.members):
            key = derive_sender_key(a.secret, self._sender_key_info(a, roster, member, index))
            if member == self.self_id:
                a.base_key = key
            else:
                keys[member] = key
        zeroize(a.secret)
        a.secret = None
        suite = suite_by_name(a.start.suite)  # the policy this epoch was checked against
        self.media.install_receive_keys(a.epoch, a.members, keys, suite)
        a.keys_installed = True
        for key in keys.values():
            zeroize(key)
        a.transcript = transcript_hash(
            roster.roster_hash, {s: c.signed for s, c in a.confirms.items()}
        )
        a.security_code = security_code(
            roster.roster_hash, {s: c.reveal for s, c in a.confirms.items()}
        )
        body = m.build_ack(
            self._key,
            self._ctx,
            epoch=a.epoch,
            signer=self.self_id,
            roster_hash=roster.roster_hash,
            transcript_hash=a.transcript,
        )
        self._send_own(a, m.MSG_ACK, body, now)
        self._drain(a, now)

    def _activate(self, a: Attempt, now: float) -> None:
        assert a.roster is not None and a.base_key is not None and a.security_code is not None
        a.advance(Event.ACKS_COMPLETE)
        old = self._active
        suite = suite_by_name(a.start.suite)
        self.media.activate_send(a.epoch, a.roster.index_of(self.self_id), a.base_key, suite)
        zeroize(a.base_key)
        a.base_key = None
        self._active = Active(
            epoch=a.epoch,
            members=a.members,
            roster_hash=a.roster.roster_hash,
            security_code=a.security_code,
            activated_at=now,
            charter_version=a.start.context.charter_version,
            sent=a.sent,
            identities={p: e.identity_key for p, e in a.roster.entries.items()},
            kem=a.start.kem,
            suite=a.start.suite,
        )
        self._pending = None
        if old is not None:
            self._retiring.append((now + self._grace, old.epoch))
        # forget what only mattered for older epochs
        self._seen = {d: v for d, v in self._seen.items() if v[0] >= a.epoch}
        self._slots = {k: v for k, v in self._slots.items() if k[0] >= a.epoch}
        self._nudges = Counter({k: v for k, v in self._nudges.items() if k[1] >= a.epoch})
        self._next_rekey_at = now + self._rekey_interval
        self._rekey_lag_reported = False
        self._retries = 0
        log.info("e2ee: epoch %d active with %d members", a.epoch, len(a.members))
        self._events.append(EpochActivated(a.epoch, a.members, a.security_code))
        self._reconcile(now)

    # --- the protocol: their messages --------------------------------------------------------

    def _receive(self, sender: str, msg_type: str, body: bytes, now: float) -> None:
        msg = m.parse(msg_type, body)
        if msg.signer != sender:
            raise SenderMismatch(
                f"{msg_type} signed by {msg.signer[:64]} but sent by {sender[:64]}"
            )
        identity = self._directory.get(sender)
        if identity is None:
            raise NotInDirectory(f"{sender[:64]} is not in the charter")
        if msg.context != self._ctx:
            self._check_charter_version(msg, identity)
            raise WrongContext(f"{msg_type} is for another line, call or charter version")
        if msg.digest in self._seen:
            self._duplicate(msg)
            return
        msg.verify(identity)
        if isinstance(msg, m.Secret) and msg.recipient != self.self_id:
            raise UnexpectedMessage(
                f"epoch secret of epoch {msg.epoch} sealed to {msg.recipient[:64]}, not to us"
            )
        if (msg.epoch, msg.msg_type, msg.signer) in self._slots:
            raise Equivocation(
                f"{sender[:64]} signed two different {msg_type} messages for epoch {msg.epoch}"
            )
        self._learn_epoch(msg, now)
        self._dispatch(msg, now)

    def _check_charter_version(self, msg: m.Message, identity: PublicKey) -> None:
        """A message of this line and call under another charter version: if its sender
        really signed it, say which versions differ (raise CharterVersionMismatch and report
        it once); an unsigned claim is only a wrong context."""
        ours, theirs = self._ctx, msg.context
        if (theirs.line_id, theirs.call_id) != (ours.line_id, ours.call_id):
            return
        try:
            msg.verify(identity)
        except BadKeySignature:
            return
        key = (msg.signer, theirs.charter_version)
        if key not in self._version_reports and len(self._version_reports) < MAX_VERSION_REPORTS:
            self._version_reports.add(key)
            event = PeerCharterVersion(msg.signer, theirs.charter_version, ours.charter_version)
            log.warning("e2ee: %s", event.message)
            self._events.append(event)
        raise CharterVersionMismatch(
            f"{msg.signer[:64]} has charter version {theirs.charter_version}; "
            f"this terminal has {ours.charter_version}"
        )

    def _learn_epoch(self, msg: m.Message, now: float) -> None:
        """Any message a member of this call signed tells us an epoch number in use. If we
        lead an epoch that a member has already passed, it will refuse our start as a
        rollback: start again above it at once instead of waiting for the timeout."""
        if msg.signer not in self._participants:
            return  # only members of this call may move our idea of the epoch in use
        ceiling = max(self._highest, self._newest_heard)
        if msg.epoch <= self._newest_heard or (ceiling and msg.epoch > ceiling + MAX_EPOCH_STEP):
            return
        self._newest_heard = msg.epoch
        a = self._pending
        if (
            a is not None
            and a.leader == self.self_id
            and a.state is State.COLLECTING_EPHEMERALS
            and msg.signer in a.members
            and msg.epoch >= a.epoch
            and not (msg.epoch == a.epoch and isinstance(msg, m.Ephemeral))
        ):
            reason = a.reason
            self._abandon(a, f"{msg.signer[:64]} is already at epoch {msg.epoch}")
            self._begin_as_leader(now, reason)

    def _duplicate(self, msg: m.Message) -> None:
        """An exact copy of a message we already processed: maybe its sender is missing
        ours (it retransmits on timeout); answer a few times with our messages."""
        self.duplicates += 1
        if msg.signer == self.self_id:
            return
        key = (msg.signer, msg.epoch)
        if self._nudges[key] >= MAX_NUDGES:
            return
        a, active = self._pending, self._active
        if a is not None and a.epoch == msg.epoch:
            sent = a.sent
        elif active is not None and active.epoch == msg.epoch:
            sent = active.sent
        else:
            return
        self._nudges[key] += 1
        for out in sent:
            if out.recipient in (None, msg.signer):
                self._out.append(Outgoing(msg.signer, out.msg_type, out.body))

    def _tell_epoch(self, leader: str) -> None:
        """A leader proposed an epoch we are already past (it missed our newer epochs): send
        it our latest signed message, from which it learns the number (a few times per
        leader and epoch, like the answers to retransmissions)."""
        out = self._last_own
        key = (leader, self._highest)
        if out is None or leader == self.self_id or self._nudges[key] >= MAX_NUDGES:
            return
        self._nudges[key] += 1
        self._out.append(Outgoing(leader, out.msg_type, out.body))

    def _dispatch(self, msg: m.Message, now: float) -> None:
        if isinstance(msg, m.EpochStart):
            self._on_start(msg, now)
        elif isinstance(msg, m.Ephemeral):
            self._on_ephemeral(msg, now)
        elif isinstance(msg, m.RosterProposal):
            self._on_roster(msg, now)
        elif isinstance(msg, m.Secret):
            self._on_secret(msg, now)
        elif isinstance(msg, m.Confirm):
            self._on_confirm(msg, now)
        elif isinstance(msg, m.Ack):
            self._on_ack(msg, now)
        elif isinstance(msg, m.RekeyRequest):
            self._on_rekey_request(msg, now)
        else:  # pragma: no cover - parse() returns only the types above
            raise UnexpectedMessage(f"unknown message {msg.msg_type}")

    def _attempt_for(self, msg: m.Message) -> Attempt:
        a = self._pending
        if a is not None and msg.epoch == a.epoch:
            if msg.signer not in a.members:
                raise UnexpectedMessage(f"{msg.signer[:64]} is not a member of epoch {a.epoch}")
            return a
        if msg.epoch > self._highest:
            raise UnexpectedMessage(f"{msg.msg_type} for epoch {msg.epoch}, which has not started")
        raise EpochRollback(f"{msg.msg_type} for epoch {msg.epoch}, which is over or abandoned")

    def _on_start(self, start: m.EpochStart, now: float) -> None:
        check_start(
            start,
            self_id=self.self_id,
            directory=self._directory,
            kem=self._kem,
            suite=self._suite_name,
            max_members=self._max_members,
        )
        if start.epoch <= self._highest:
            self._tell_epoch(start.signer)
            raise EpochRollback(f"epoch {start.epoch} is not newer than epoch {self._highest}")
        if self._highest > 0 and start.epoch > self._highest + MAX_EPOCH_STEP:
            raise UnexpectedMessage(f"epoch {start.epoch} jumps too far past {self._highest}")
        if frozenset(start.members) != self._participants:
            # the right leader for that member set, but our call layer does not (yet) agree:
            # keep it until set_participants says the same, never sign it before
            if self._deferred is None or self._deferred.epoch < start.epoch:
                self._deferred = start
            log.info("e2ee: epoch %d deferred until our participants match", start.epoch)
            return
        self._accept_start(start, now)

    def _on_ephemeral(self, msg: m.Ephemeral, now: float) -> None:
        a = self._attempt_for(msg)
        if a.leader != self.self_id:
            raise UnexpectedMessage(f"we do not lead epoch {a.epoch}; {a.leader} collects keys")
        if a.state is not State.COLLECTING_EPHEMERALS:
            raise UnexpectedMessage(f"the roster of epoch {a.epoch} is already proposed")
        if msg.kem != self._kem.name:
            raise DowngradeRefused(f"KEM {msg.kem[:64]!r} is not the charter's {self._kem.name}")
        parse_public_key(self._kem, msg.ek)
        self._record(msg)
        a.ephemerals[msg.signer] = msg
        if len(a.ephemerals) == len(a.members):
            self._propose_roster(a, now)

    def _on_roster(self, msg: m.RosterProposal, now: float) -> None:
        a = self._attempt_for(msg)
        if msg.signer != a.leader:
            raise RosterMismatch(f"roster of epoch {a.epoch} not proposed by {a.leader}")
        if a.state not in (State.COLLECTING_EPHEMERALS, State.AWAITING_ROSTER):
            raise UnexpectedMessage(f"the roster of epoch {a.epoch} is already signed")
        roster = check_roster(
            msg,
            start=a.start,
            self_id=self.self_id,
            own_ek_hash=a.ek_hash,
            own_commit=a.commit,
            directory=self._directory,
            kem=self._kem,
            suite=self._suite_name,
        )
        self._record(msg)
        a.roster = roster
        a.advance(Event.ROSTER_ACCEPTED)
        body = m.build_confirm(
            self._key,
            self._ctx,
            epoch=a.epoch,
            signer=self.self_id,
            roster_hash=roster.roster_hash,
            reveal=a.reveal,
        )
        self._send_own(a, m.MSG_CONFIRM, body, now)
        self._drain(a, now)

    def _on_secret(self, msg: m.Secret, now: float) -> None:
        a = self._attempt_for(msg)
        if msg.signer != a.leader:
            raise UnexpectedMessage(
                f"epoch secret of epoch {a.epoch} from {msg.signer[:64]}, not its leader"
            )
        if a.roster is None:
            self._buffer(a, msg)
            return
        if a.state is not State.COLLECTING_KEYS or a.secret_held:
            raise UnexpectedMessage(f"we already hold the secret of epoch {a.epoch}")
        roster = a.roster
        if msg.roster_hash != roster.roster_hash:
            raise RosterMismatch(f"epoch secret of epoch {a.epoch} sealed for another roster")
        assert a.ephemeral is not None
        info = self._seal_info(a, self.self_id, roster.roster_hash)
        opened = bytearray(a.ephemeral.open(msg.sealed, info))
        try:  # the secret every other member opened: the one the signed roster commits to
            check_secret_commitment(
                roster.proposal.secret_commit, opened, self._secret_commit_info(a)
            )
        except SealedKeyError as exc:
            zeroize(opened)
            raise SealedKeyError(
                f"the leader {a.leader[:64]} sealed us a secret other than the one its roster "
                "commits to"
            ) from exc
        self._record(msg)
        a.ephemeral.erase()  # forward secrecy: nothing left to open
        a.ephemeral = None
        a.secret = opened
        a.secret_held = True
        self._maybe_complete(a, now)

    def _on_confirm(self, msg: m.Confirm, now: float) -> None:
        a = self._attempt_for(msg)
        if a.roster is None:
            self._buffer(a, msg)
            return
        if a.state is not State.COLLECTING_KEYS:
            raise UnexpectedMessage(f"every confirm of epoch {a.epoch} is already in")
        roster = a.roster
        if msg.roster_hash != roster.roster_hash:
            raise RosterMismatch(f"{msg.signer[:64]} approved another roster for epoch {a.epoch}")
        if m.commitment(a.epoch, msg.signer, msg.reveal) != roster.entries[msg.signer].commit:
            raise SealedKeyError(f"{msg.signer[:64]} revealed a nonce it did not commit to")
        self._record(msg)
        a.confirms[msg.signer] = msg
        self._maybe_complete(a, now)

    def _on_rekey_request(self, msg: m.RekeyRequest, now: float) -> None:
        """A member of the active epoch asks us, its leader, for a new epoch now (its media
        engine may not use its send key again). At most one rekey per epoch follows: a
        request must name the active epoch, and the next epoch makes it stale."""
        active = self._active
        if active is None or msg.epoch != active.epoch:
            raise UnexpectedMessage(
                f"rekey request for epoch {msg.epoch}; the active epoch is "
                f"{active.epoch if active else 'none'}"
            )
        if msg.signer not in active.members or msg.signer == self.self_id:
            raise UnexpectedMessage(f"rekey request from {msg.signer[:64]}, not a member")
        if not self._leads(active.members):
            raise UnexpectedMessage(f"rekey request to {self.self_id}, not the leader")
        self._seen[msg.digest] = (msg.epoch, msg.signer)  # a copy is a duplicate
        if self._pending is not None:
            return  # the epoch under way is the answer
        # not sooner than MIN_REQUESTED_REKEY_S after the active epoch began: a member that
        # asks again after every new epoch cannot keep the leader rekeying without pause
        due = max(now, active.activated_at + MIN_REQUESTED_REKEY_S)
        log.info(
            "e2ee: %s asks for a new epoch (%s), in %.1f s",
            msg.signer[:64],
            msg.reason[:64],
            due - now,
        )
        if self._next_rekey_at is None or due < self._next_rekey_at:
            self._next_rekey_at = due
        self._rekey_lag_reported = False

    def _on_ack(self, msg: m.Ack, now: float) -> None:
        a = self._attempt_for(msg)
        if a.transcript is None:
            self._buffer(a, msg)
            return
        assert a.roster is not None
        if msg.roster_hash != a.roster.roster_hash or msg.transcript_hash != a.transcript:
            raise TranscriptMismatch(
                f"{msg.signer[:64]} acknowledged another transcript of epoch {a.epoch}"
            )
        self._record(msg)
        a.acks[msg.signer] = msg
        if len(a.acks) == len(a.members):
            self._activate(a, now)

    def _seal_info(self, a: Attempt, recipient: str, roster_hash: bytes) -> bytes:
        return seal_info(
            self._ctx.line_id,
            self._ctx.call_id,
            charter_version=self._ctx.charter_version,
            epoch=a.epoch,
            leader=a.leader,
            recipient=recipient,
            roster_hash=roster_hash,
        )

    def _secret_commit_info(self, a: Attempt) -> bytes:
        return secret_commit_info(
            self._ctx.line_id,
            self._ctx.call_id,
            charter_version=self._ctx.charter_version,
            epoch=a.epoch,
            leader=a.leader,
        )

    def _sender_key_info(self, a: Attempt, roster: Roster, sender: str, index: int) -> bytes:
        return sender_key_info(
            self._ctx.line_id,
            self._ctx.call_id,
            charter_version=self._ctx.charter_version,
            epoch=a.epoch,
            roster_hash=roster.roster_hash,
            sender=sender,
            index=index,
        )

    def _buffer(self, a: Attempt, msg: m.Message) -> None:
        """Keep a message that came before the one it depends on (the relay may reorder)."""
        self._record(msg)
        a.buffered[(msg.msg_type, msg.signer)] = msg

    def _drain(self, a: Attempt, now: float) -> None:
        """Process buffered messages that can be checked now."""
        for slot in sorted(a.buffered):
            if self._pending is not a:
                return
            msg = a.buffered[slot]
            if isinstance(msg, (m.Secret, m.Confirm)) and a.state is not State.COLLECTING_KEYS:
                continue
            if isinstance(msg, m.Ack) and a.transcript is None:
                continue
            del a.buffered[slot]
            try:
                self._dispatch(msg, now)
            except E2EEError as exc:
                self._reject(msg.signer, msg.msg_type, exc)
