"""The call's key session: rosters, sender keys, epochs and the security code, sans I/O.

The call layer drives one :class:`CallKeySession` per call::

    session.set_participants(ids, now)            # who is in the call (us included)
    session.receive(sender, msg_type, body, now)  # an e2ee.* message from the exchange
    session.handle_timer(now)                     # when session.next_timer() is due
    for o in session.outgoing(): send(o)          # messages to send (drained)
    for e in session.events(): show(e)            # EpochActivated, MemberLagging, ...
    session.media                                 # the KeySink the keys go to (frame crypto)

One epoch, at every member (docs/protocol.md has the full specification)::

    leader  --e2ee.start------> all        opens epoch E for the members it sees
    member  --e2ee.ephemeral--> leader     fresh KEM key for E, signed; commitment to a nonce
    leader  --e2ee.roster-----> all        every member's ephemeral key hash and nonce
                                           commitment; commitment to a fresh epoch secret
    leader  --e2ee.secret-----> each       the epoch secret sealed to that member's key
    member  --e2ee.confirm----> all        approves the roster; the nonce revealed
    member  --e2ee.ack--------> all        "I hold every key of E; transcript T"
    every sender's base key of E is derived from the epoch secret; every member switches
    its sending to E once it holds every member's ack.

Nothing here performs I/O, reads the clock or the OS random source on its own (HPKE's
encapsulation randomness excepted: ``cryptography`` draws it itself).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Final

from hotline.e2ee import messages as m
from hotline.e2ee.epochs import Attempt, State
from hotline.e2ee.events import E2EEEvent, MemberLagging, Outgoing
from hotline.e2ee.media import KeySink, MediaCrypto
from hotline.e2ee.roster import leader_of
from hotline.e2ee.sender_keys import kem_by_name
from hotline.e2ee.sframe import DEFAULT_SUITE, MAX_EPOCH, suite_by_name
from hotline.e2ee.steps import (
    MAX_EPOCH_STEP,
    MAX_NUDGES,
    MAX_TIMEOUTS,
    MAX_VERSION_REPORTS,
    Active,
    EpochSteps,
)
from hotline.errors import (
    E2EEError,
    NotInDirectory,
    StateError,
    UnexpectedMessage,
    UsageError,
)
from hotline.keys import PublicKey, SigningKey

log = logging.getLogger(__name__)

__all__ = [
    "MAX_EPOCH_STEP",
    "MAX_NUDGES",
    "MAX_RETRIES",
    "MAX_TIMEOUTS",
    "MAX_VERSION_REPORTS",
    "CallKeySession",
]

#: after a timed-out join/leave epoch, the leader tries again this many times in a row
MAX_RETRIES: Final = 2


class CallKeySession(EpochSteps):
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
        rng: the random source (seeds of ephemeral keys, epoch secrets, nonces).
        replay_window, key_history, counter_limit: passed to the media crypto.
        key_sink: the media engine's frame crypto, which receives every key installed,
            activated, paused or erased (default: a :class:`MediaCrypto` made here from
            the three parameters above).
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
        key_sink: KeySink | None = None,
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
        #: where the keys go (the media engine's frame crypto); by default a MediaCrypto
        self.media: KeySink = (
            key_sink
            if key_sink is not None
            else MediaCrypto(
                suite_by_name(suite), history=key_history, replay_window=replay_window, **limit
            )
        )
        self._participants: frozenset[str] = frozenset()
        self._active: Active | None = None
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

    def rekey_soon(self, now: float, reason: str = "send key lost") -> str:
        """The media engine lost the use of its send key (a browser page that took over
        mid-call must not reuse it): a new epoch as soon as this member can have one.

        Returns what happens: ``"pending"`` (an epoch under way brings a new send key),
        ``"now"`` (we lead: the rekey is due at once), ``"asked"`` (another member leads:
        we sent it a signed ``e2ee.rekey`` request naming the active epoch), ``"waiting"``
        (no active epoch: the next one brings the key), ``"closed"``."""
        if self._closed:
            return "closed"
        if self._pending is not None:
            return "pending"
        active = self._active
        if active is None:
            return "waiting"
        if self._leads(active.members):
            self._next_rekey_at = now
            self._rekey_lag_reported = False
            return "now"
        body = m.build_rekey(
            self._key, self._ctx, epoch=active.epoch, signer=self.self_id, reason=reason
        )
        self._out.append(Outgoing(leader_of(active.members), m.MSG_REKEY, body))
        return "asked"

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

    def _current(self, active: Active) -> frozenset[str]:
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
