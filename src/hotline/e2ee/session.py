"""The call's key session: rosters, sender keys, epochs and the security code, sans I/O.

The call layer drives one :class:`CallKeySession` per call::

    session.set_participants(ids, now)            # who is in the call (us included)
    session.receive(sender, msg_type, body, now)  # an e2ee.* message from the exchange
    session.handle_timer(now)                     # when session.next_timer() is due
    for o in session.outgoing(): send(o)          # messages to send (drained)
    for e in session.events(): show(e)            # EpochActivated, MemberLagging, ...
    session.media                                 # the FrameCrypto the media engine calls

One epoch, at every member (docs/protocol.md has the full specification)::

    leader  --e2ee.start------> all        opens epoch E for the members it sees
    member  --e2ee.ephemeral--> leader     fresh KEM key for E, signed; commitment to a nonce
    leader  --e2ee.roster-----> all        every member's signed ephemeral key
    member  --e2ee.sender_key-> all        roster signature; fresh base key sealed to each
                                           other member; the nonce revealed
    member  --e2ee.ack--------> all        "I hold every key of E; transcript T"
    every member switches its sending to E once it holds every member's ack.

Nothing here performs I/O, reads the clock or the OS random source on its own (HPKE's
encapsulation randomness excepted: ``cryptography`` draws it itself).
"""

from __future__ import annotations

import logging
import os
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
    MemberLagging,
    Outgoing,
    PeerCharterVersion,
)
from hotline.e2ee.media import MediaCrypto
from hotline.e2ee.roster import Roster, check_roster, check_start, leader_of
from hotline.e2ee.security_code import security_code
from hotline.e2ee.sender_keys import (
    BASE_KEY_SIZE,
    EphemeralKeyPair,
    check_key_commitment,
    kem_by_name,
    key_commit_info,
    key_commitment,
    parse_public_key,
    seal,
    seal_info,
    zeroize,
)
from hotline.e2ee.sframe import DEFAULT_SUITE, MAX_EPOCH, suite_by_name
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
    UsageError,
    WrongContext,
)
from hotline.keys import PublicKey, SigningKey

log = logging.getLogger(__name__)

#: an attempt is abandoned after this many acknowledgement timeouts (MemberLagging before)
MAX_TIMEOUTS: Final = 3
#: how far ahead of the newest epoch we know a leader may jump (after abandoned attempts)
MAX_EPOCH_STEP: Final = 64
#: how often we answer one member's retransmissions for one epoch with ours
MAX_NUDGES: Final = MAX_TIMEOUTS
#: after a timed-out join/leave epoch, the leader tries again this many times in a row
MAX_RETRIES: Final = 2
NONCE_SIZE: Final = m.NONCE_SIZE
#: how many (member, charter version) pairs we report a version mismatch for, per call
MAX_VERSION_REPORTS: Final = 64


@dataclass
class _Active:
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


class CallKeySession:
    """The key agreement of one call at one member (see the module docstring).

    Parameters:
        line_id, call_id: what every message is bound to.
        self_id: our terminal id; ``identity_key`` its charter identity key.
        directory: terminal id -> identity public key, for every terminal of the charter.
        charter_version: the charter's version (bound into every message).
        kem: "MLKEM768_X25519" (default, post-quantum hybrid) or "X25519".
        suite: the SFrame cipher suite name (RFC 9605 spelling).
        max_members: the charter's max_participants: no epoch has more members (a start
            naming more is refused as ``too_many_members``).
        rekey_interval_s: the leader starts a new epoch this long after each activation.
        ack_timeout_s: an epoch not complete after this long raises MemberLagging (and we
            retransmit our messages); after ``MAX_TIMEOUTS`` of them, EpochFailed.
        grace_s: receive keys of the previous epoch are erased this long after a switch.
        rng: the random source (seeds of ephemeral keys, base keys, nonces).
        replay_window, key_history, counter_limit: passed to the media crypto.
    """

    def __init__(
        self,
        *,
        line_id: str,
        call_id: str,
        self_id: str,
        identity_key: SigningKey,
        directory: Mapping[str, PublicKey],
        charter_version: int,
        kem: str = "MLKEM768_X25519",
        suite: str = DEFAULT_SUITE.name,
        max_members: int = m.MAX_MEMBERS,
        rekey_interval_s: float = 300,
        ack_timeout_s: float = 5,
        grace_s: float = 10,
        rng: Callable[[int], bytes] = os.urandom,
        replay_window: int = 1024,
        key_history: int = 3,
        counter_limit: int | None = None,
    ) -> None:
        if directory.get(self_id) != identity_key.public:
            raise UsageError(f"{self_id} with this identity key is not in the directory")
        if min(rekey_interval_s, ack_timeout_s, grace_s) <= 0:
            raise UsageError("rekey interval, acknowledgement timeout and grace must be > 0")
        if not 1 <= max_members <= m.MAX_MEMBERS:
            raise UsageError(f"max_members must be in 1..{m.MAX_MEMBERS}")
        self._max_members = max_members
        self.self_id = self_id
        self._key = identity_key
        self._directory: dict[str, PublicKey] = dict(directory)
        self._ctx = m.Context(line_id, call_id, charter_version)
        self._kem = kem_by_name(kem)
        self._suite_name = suite_by_name(suite).name
        self._rekey_interval = rekey_interval_s
        self._ack_timeout = ack_timeout_s
        self._grace = grace_s
        self._rng = rng
        limit = {} if counter_limit is None else {"counter_limit": counter_limit}
        self.media = MediaCrypto(
            suite_by_name(suite), history=key_history, replay_window=replay_window, **limit
        )
        self._participants: frozenset[str] = frozenset()
        self._active: _Active | None = None
        self._pending: Attempt | None = None
        self._highest = 0  # the newest epoch we accepted a start for
        self._newest_heard = 0  # the newest epoch any valid start named
        self._retries = 0
        self._deferred: m.EpochStart | None = None
        self._retiring: list[tuple[float, int]] = []
        self._seen: dict[bytes, tuple[int, str]] = {}
        self._slots: dict[tuple[int, str, str], bytes] = {}
        self._nudges: Counter[tuple[str, int]] = Counter()
        self._awaiting_since: float | None = None
        self._awaiting_reported = False
        self._next_rekey_at: float | None = None
        self._rekey_lag_reported = False
        self._out: list[Outgoing] = []
        self._last_own: Outgoing | None = None  # the newest message we signed
        self._events: list[E2EEEvent] = []
        self._rejections: Counter[str] = Counter()
        self.duplicates = 0
        self._closed = False
        self._version_reports: set[tuple[str, int]] = set()

    # --- read-only state ---------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch we send under (0 before the first activation)."""
        return self._active.epoch if self._active else 0

    @property
    def security_code(self) -> str | None:
        return self._active.security_code if self._active else None

    @property
    def members(self) -> tuple[str, ...]:
        """The members of the active epoch, sorted."""
        return self._active.members if self._active else ()

    @property
    def participants(self) -> frozenset[str]:
        return self._participants

    @property
    def pending_epoch(self) -> int | None:
        return self._pending.epoch if self._pending else None

    @property
    def pending_state(self) -> State | None:
        return self._pending.state if self._pending else None

    @property
    def rejections(self) -> dict[str, int]:
        """Refused messages so far, by reason."""
        return dict(self._rejections)

    @property
    def charter_version(self) -> int:
        return self._ctx.charter_version

    @property
    def kem(self) -> str:
        """The charter's KEM that new epochs use."""
        return self._kem.name

    @property
    def suite(self) -> str:
        """The charter's SFrame cipher suite that new epochs use."""
        return self._suite_name

    # --- the call layer's inputs -------------------------------------------------------------

    def set_participants(self, ids: Collection[str], now: float) -> None:
        """The call layer's view of who is in the call (us included). Starts a new epoch if
        it differs from the active epoch's members (we lead) or waits for the leader's.

        When a member of the active epoch is gone, sending pauses at once (``protect``
        raises NoMediaKey) and its receive keys are erased: the one who left gets nothing
        new. Raises :class:`NotInDirectory` (and changes nothing) for unknown terminals."""
        if self._closed:
            raise StateError("the call's key session is closed")
        new = frozenset(ids)
        if self.self_id not in new:
            raise UsageError("the participants must include this terminal")
        unknown = sorted(new - self._directory.keys())
        if unknown:
            self._rejections[NotInDirectory.reason] += 1
            raise NotInDirectory(f"participants not in the charter: {unknown}")
        if len(new) > self._max_members:
            raise UsageError(f"the charter allows at most {self._max_members} participants")
        self._participants = new
        self._retries = 0
        self._drop_departed(now)
        self._reconcile(now)

    def update_directory(
        self,
        directory: Mapping[str, PublicKey],
        charter_version: int,
        now: float,
        *,
        kem: str | None = None,
        suite: str | None = None,
        max_members: int | None = None,
    ) -> None:
        """A new charter: terminals no longer in it leave the call at once, and a new epoch
        binds the new version. A terminal whose identity key changed (same id, new key) is
        treated exactly like one that left: it is no participant any more (the call layer
        must admit the new key holder afresh), sending pauses and its receive keys are
        erased. If we ourselves were removed, all keys are erased and :class:`StateError`
        is raised (the call must end).

        ``kem``, ``suite`` and ``max_members`` (default: unchanged) are the new charter's
        policy: the epoch bound to the new version uses them; the old epoch keeps its own
        suite until it is retired. A call with more participants than a lowered limit
        cannot agree a new epoch: the call layer ends it.
        """
        if charter_version < self._ctx.charter_version:
            raise UsageError("a charter version older than the one in use")
        new_kem = kem_by_name(kem) if kem is not None else self._kem
        new_suite = suite_by_name(suite).name if suite is not None else self._suite_name
        limit = self._max_members if max_members is None else max_members
        if not 1 <= limit <= m.MAX_MEMBERS:
            raise UsageError(f"max_members must be in 1..{m.MAX_MEMBERS}")
        if directory.get(self.self_id) != self._key.public:
            self._erase_everything("this terminal is no longer in the charter")
            raise StateError("this terminal is no longer in the charter; the call must end")
        old = self._directory
        self._directory = dict(directory)
        self._ctx = m.Context(self._ctx.line_id, self._ctx.call_id, charter_version)
        self._kem, self._suite_name, self._max_members = new_kem, new_suite, limit
        self._participants = frozenset(
            p for p in self._participants if p in directory and directory[p] == old.get(p)
        )
        if self._deferred is not None and self._deferred.context != self._ctx:
            self._deferred = None
        self._drop_departed(now)
        self._reconcile(now)

    def close(self, reason: str = "the call ended") -> None:
        """The call is over: erase every key now and refuse everything from here on (no
        more epochs, no more rekeys)."""
        if self._closed:
            return
        self._closed = True
        self._erase_everything(reason)
        self._participants = frozenset()
        self._deferred = None
        self._next_rekey_at = None
        self._awaiting_since = None

    @property
    def closed(self) -> bool:
        return self._closed

    def receive(self, sender: str, msg_type: str, body: bytes, now: float) -> None:
        """Process one ``e2ee.*`` message from ``sender`` (as the exchange authenticated it).

        Raises a :class:`~hotline.errors.KeyAgreementError` subclass for anything refused;
        every refusal is counted (:attr:`rejections`), logged and reported as
        :class:`KeyRejected`. Exact duplicates are ignored (counted in ``duplicates``)."""
        if self._closed:
            refused = UnexpectedMessage("the call's key session is closed")
            self._reject(sender, msg_type, refused)
            raise refused
        try:
            self._receive(sender, msg_type, body, now)
        except E2EEError as exc:
            self._reject(sender, msg_type, exc)
            raise

    def outgoing(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[E2EEEvent]:
        events, self._events = self._events, []
        return events

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` has something to do (None: nothing scheduled). Every
        time returned here is one that ``handle_timer`` acts on, so calling it does not
        return the same past time again."""
        if self._closed:
            return None
        times: list[float] = [t for t, _ in self._retiring]
        a, active, rekey_at = self._pending, self._active, self._next_rekey_at
        if a is not None:
            times.append(a.started_at + self._ack_timeout * (a.timeouts + 1))
        elif (
            active is not None
            and rekey_at is not None
            and self._participants == self._current(active)
        ):
            if self._leads(active.members):
                times.append(rekey_at)
            elif not self._rekey_lag_reported:
                times.append(rekey_at + self._ack_timeout)
        if a is None and self._awaiting_since is not None and not self._awaiting_reported:
            times.append(self._awaiting_since + self._ack_timeout)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._closed:
            return
        # end of grace: erase old epochs' receive keys
        due = [e for t, e in self._retiring if t <= now]
        if due:
            self._retiring = [(t, e) for t, e in self._retiring if t > now]
            self.media.erase_epochs_through(max(due))
            log.info("e2ee: erased the keys of epochs up to %d", max(due))
        a = self._pending
        if a is not None and now >= a.started_at + self._ack_timeout * (a.timeouts + 1):
            a.timeouts += 1
            missing = a.missing()
            if a.timeouts >= MAX_TIMEOUTS:
                self._abandon(a, f"timed out waiting for {', '.join(missing)}")
                if a.reason == "rekey":
                    self._next_rekey_at = now + self._rekey_interval
                elif not self._leads(self._participants):
                    self._reconcile(now)  # wait for (and report) the leader again
                elif self._retries < MAX_RETRIES:
                    self._retries += 1  # try again under a new epoch number
                    self._reconcile(now)
            else:
                log.warning("e2ee: epoch %d waits for %s", a.epoch, missing)
                self._events.append(MemberLagging(a.epoch, missing))
                self._out.extend(a.sent)
        active = self._active
        rekey_at = self._next_rekey_at
        if (
            self._pending is None
            and active is not None
            and rekey_at is not None
            and self._participants == self._current(active)
            and now >= rekey_at
        ):
            if self._leads(active.members):
                self._begin_as_leader(now, "rekey")
            elif not self._rekey_lag_reported and now >= rekey_at + self._ack_timeout:
                self._rekey_lag_reported = True
                self._events.append(MemberLagging(self._highest + 1, (leader_of(active.members),)))
        if (
            self._pending is None
            and self._awaiting_since is not None
            and not self._awaiting_reported
            and now >= self._awaiting_since + self._ack_timeout
        ):
            self._awaiting_reported = True
            self._events.append(MemberLagging(self._highest + 1, (leader_of(self._participants),)))

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

    def _current(self, active: _Active) -> frozenset[str]:
        """The active epoch's members that still hold the identity key it was made for."""
        return frozenset(
            p
            for p in active.members
            if (key := self._directory.get(p)) is not None and key.raw == active.identities[p]
        )

    def _drop_departed(self, now: float) -> None:
        """Members of the active epoch who left, or whose identity key changed (the old
        key holder is out as if it had left): pause sending, erase their receive keys."""
        active = self._active
        if active is None:
            return
        current = self._current(active)
        gone = [p for p in active.members if p not in self._participants or p not in current]
        if gone:
            log.info(
                "e2ee: %s left epoch %d; sending paused until the next epoch", gone, self.epoch
            )
            self.media.pause_sending(f"{', '.join(gone)} left; waiting for the next epoch")
            for p in gone:
                self.media.forget_sender(p)

    def _erase_everything(self, reason: str) -> None:
        if self._pending is not None:
            self._abandon(self._pending, reason)
        self.media.pause_sending(reason)
        self.media.erase_epochs_through(MAX_EPOCH)
        self._retiring.clear()

    def _reconcile(self, now: float) -> None:
        """Start (as leader) or accept (a deferred start) the epoch the participants need."""
        target = self._participants
        active = self._active
        current = self._current(active) if active else frozenset()
        charter_moved = active is not None and (
            active.charter_version != self._ctx.charter_version
            or (active.kem, active.suite) != (self._kem.name, self._suite_name)
        )
        a = self._pending
        if a is not None and (frozenset(a.members) != target or a.start.context != self._ctx):
            self._abandon(a, "the participants or the charter changed")
            a = None
        if a is not None or (target == current and not charter_moved):
            self._awaiting_since = None
            return
        if self._leads(target):
            if not active:
                reason = "start"
            elif charter_moved and target == current:
                reason = "charter"
            elif target > current:
                reason = "join"
            elif target < current:
                reason = "leave"
            else:
                reason = "change"
            self._begin_as_leader(now, reason)
            return
        d = self._deferred
        if d is not None and frozenset(d.members) == target and d.epoch > self._highest:
            self._deferred = None
            self._accept_start(d, now)
        elif self._awaiting_since is None:
            self._awaiting_since = now
            self._awaiting_reported = False

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
        entries = [
            m.RosterEntry(
                member=member,
                identity_key=self._directory[member].raw,
                ek=a.ephemerals[member].ek,
                commit=a.ephemerals[member].commit,
                ek_sig=a.ephemerals[member].signature,
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
        )
        self._send_own(a, m.MSG_ROSTER, body, now)

    def _keys_complete(self, a: Attempt, now: float) -> None:
        assert a.roster is not None
        a.advance(Event.KEYS_COMPLETE)
        if a.ephemeral is not None:  # forward secrecy: nothing left to open
            a.ephemeral.erase()
            a.ephemeral = None
        suite = suite_by_name(a.start.suite)  # the policy this epoch was checked against
        self.media.install_receive_keys(a.epoch, a.members, a.base_keys, suite)
        a.keys_installed = True
        for key in a.base_keys.values():
            zeroize(key)
        a.base_keys.clear()
        a.transcript = transcript_hash(
            a.roster.roster_hash, {s: k.signed for s, k in a.sender_keys.items()}
        )
        a.security_code = security_code(
            a.roster.roster_hash, {s: k.reveal for s, k in a.sender_keys.items()}
        )
        body = m.build_ack(
            self._key,
            self._ctx,
            epoch=a.epoch,
            signer=self.self_id,
            roster_hash=a.roster.roster_hash,
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
        self._active = _Active(
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
        if isinstance(msg, m.SenderKey):
            msg.verify_roster_signature(identity)
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
        elif isinstance(msg, m.SenderKey):
            self._on_sender_key(msg, now)
        elif isinstance(msg, m.Ack):
            self._on_ack(msg, now)
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
        assert a.ephemeral is not None
        roster = check_roster(
            msg,
            ctx=self._ctx,
            start=a.start,
            self_id=self.self_id,
            own_ek=a.ephemeral.public,
            own_commit=a.commit,
            directory=self._directory,
            kem=self._kem,
            suite=self._suite_name,
        )
        base_key = bytearray(self._rng(BASE_KEY_SIZE))
        sealed: dict[str, bytes] = {}
        for member in roster.members:
            if member == self.self_id:
                continue
            info = seal_info(
                self._ctx.line_id,
                self._ctx.call_id,
                epoch=a.epoch,
                sender=self.self_id,
                recipient=member,
                roster_hash=roster.roster_hash,
            )
            try:
                sealed[member] = seal(self._kem, roster.entries[member].ek, base_key, info)
            except SealedKeyError as exc:
                zeroize(base_key)
                raise RosterMismatch(f"cannot seal to the ephemeral key of {member}") from exc
        self._record(msg)
        a.roster = roster
        a.base_key = base_key
        a.advance(Event.ROSTER_ACCEPTED)
        body = m.build_sender_key(
            self._key,
            self._ctx,
            epoch=a.epoch,
            signer=self.self_id,
            roster_hash=roster.roster_hash,
            reveal=a.reveal,
            sealed=sealed,
            key_commit=key_commitment(base_key, self._commit_info(a.epoch, roster, self.self_id)),
        )
        self._send_own(a, m.MSG_SENDER_KEY, body, now)
        self._drain(a, now)

    def _on_sender_key(self, msg: m.SenderKey, now: float) -> None:
        a = self._attempt_for(msg)
        if a.roster is None:
            self._buffer(a, msg)
            return
        if a.state is not State.COLLECTING_KEYS:
            raise UnexpectedMessage(f"every key of epoch {a.epoch} is already in")
        roster = a.roster
        if msg.roster_hash != roster.roster_hash:
            raise RosterMismatch(f"{msg.signer[:64]} signed another roster for epoch {a.epoch}")
        if set(msg.sealed) != set(roster.members) - {msg.signer}:
            raise SealedKeyError(f"{msg.signer[:64]} did not seal its key to exactly the others")
        if m.commitment(a.epoch, msg.signer, msg.reveal) != roster.entries[msg.signer].commit:
            raise SealedKeyError(f"{msg.signer[:64]} revealed a nonce it did not commit to")
        if msg.signer != self.self_id:
            assert a.ephemeral is not None
            info = seal_info(
                self._ctx.line_id,
                self._ctx.call_id,
                epoch=a.epoch,
                sender=msg.signer,
                recipient=self.self_id,
                roster_hash=roster.roster_hash,
            )
            opened = bytearray(a.ephemeral.open(msg.sealed[self.self_id], info))
            try:  # the same key as every other member opened: the one the sender committed to
                info = self._commit_info(a.epoch, roster, msg.signer)
                check_key_commitment(msg.key_commit, opened, info)
            except SealedKeyError as exc:
                zeroize(opened)
                raise SealedKeyError(
                    f"{msg.signer[:64]} sealed us a key other than the one it committed to"
                ) from exc
            a.base_keys[msg.signer] = opened
        self._record(msg)
        a.sender_keys[msg.signer] = msg
        if len(a.sender_keys) == len(a.members):
            self._keys_complete(a, now)

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

    def _commit_info(self, epoch: int, roster: Roster, sender: str) -> bytes:
        return key_commit_info(
            self._ctx.line_id,
            self._ctx.call_id,
            charter_version=self._ctx.charter_version,
            epoch=epoch,
            sender=sender,
            roster_hash=roster.roster_hash,
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
            if isinstance(msg, m.SenderKey) and a.state is not State.COLLECTING_KEYS:
                continue
            if isinstance(msg, m.Ack) and a.transcript is None:
                continue
            del a.buffered[slot]
            try:
                self._dispatch(msg, now)
            except E2EEError as exc:
                self._reject(msg.signer, msg.msg_type, exc)
