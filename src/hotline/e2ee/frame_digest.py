"""Sender authenticity of frames inside the group: signed frame digests (sans I/O).

Every member holds every sender key of its epoch, so any member could protect a frame under
another member's KID, and through an SFU (one connection for all senders) nothing would
show it. So each sender signs, with its charter identity key, which frames it sent
(docs/protocol.md §11)::

    frame hash   = SHA-256("hotline.e2ee.v1.frame-hash" || kind byte || protected frame)[:16]
    e2ee.frame_digest (once a second per KID, and at once when the KID's epoch ends):
        signed {t, line, call, cv, epoch, from, kid, first_ctr, last_ctr, hashes}
        hashes = the frame hash of every counter first_ctr .. last_ctr, in counter order
                 (16 zero bytes: no frame was sent with that counter)

and every receiver checks each frame it accepted against its sender's signed hash of the
same counter: the same hash, the frame is *verified*; another hash, it was *forged* (an
alarm at once); no signed hash within :data:`COVER_DEADLINE_S`, it is *unsigned*. Frames
lost in transit are simply never looked up: the digest lists every counter, so a receiver
needs no frame it did not get.

Three parts, all driven by the call layer with ``now`` passed in:

* :class:`DigestSigner` (sender): the frame crypto's records of sent frames in, ranges to
  sign out;
* :class:`DigestVerifier` (receiver): records of accepted frames and signed ranges in,
  :class:`FrameAlarm` out;
* :class:`FrameAuthenticity`: both for one call, plus the messages (sign, parse, check the
  signer) — what a call session holds.

The frame crypto (:class:`hotline.e2ee.media.MediaCrypto`) computes the hashes on its own
threads, in counter order, and hands them over as :class:`FrameHashes`.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from hotline.e2ee import messages as m
from hotline.e2ee.sframe import kid_epoch
from hotline.errors import (
    E2EEError,
    Equivocation,
    SenderMismatch,
    UnexpectedMessage,
    WrongContext,
)
from hotline.keys import PublicKey, SigningKey

FRAME_HASH_LABEL: Final = b"hotline.e2ee.v1.frame-hash"
FRAME_HASH_SIZE: Final = m.FRAME_HASH_SIZE
#: the hash a digest gives a counter no frame was sent with
NOT_SENT: Final = bytes(FRAME_HASH_SIZE)
#: a sender signs what it sent this often (and when a KID's epoch ends)
DIGEST_INTERVAL_S: Final = 1.0
#: through an SFU (strict), twice as often: the wait for the next signing is the part of a
#: frame's 2 s deadline its sender controls; while that stays within
#: :data:`FAST_DIGEST_ENVELOPES_PER_S` envelopes a second (one per other member per signing:
#: up to 11 members), beyond it once a second
STRICT_DIGEST_INTERVAL_S: Final = 0.5
FAST_DIGEST_ENVELOPES_PER_S: Final = 20.0
#: a frame whose sender has not signed it this long after it was accepted: alarm
COVER_DEADLINE_S: Final = 2.0
#: how long a receiver keeps signed hashes for frames that arrive after their digest: a
#: receiver's media path can lag its signalling by seconds on a starved host, and a signed
#: hash dropped before its frame is recorded leaves that frame unsigned (an alarm through an
#: SFU). Keeping them longer checks the same frames against the same signatures; it costs
#: 16 B per frame kept. 30 s: six terminals, a browser and Janus on 2 cores (load ~11) lagged
#: up to the 10 s kept before (docs/protocol.md, "Why 30 s")
RETAIN_S: Final = 30.0
#: a counter missing among the frames a sender recorded is signed as not sent after this
GAP_WAIT_S: Final = 0.5
#: at most one alarm event per member and reason this often (counts accumulate between)
ALARM_INTERVAL_S: Final = 1.0
#: alarm reasons; both count as ``unauthenticated_frame``
FORGED: Final = "forged"
UNSIGNED: Final = "unsigned"
#: frames shown whose hashes were lost before they could be checked (strict path only)
UNCHECKED: Final = "unchecked"
#: the member an alarm names when the frames' hashes, and so their members, were lost
UNKNOWN_MEMBER: Final = "(unknown)"
#: the counter every alarm is counted under
UNAUTHENTICATED_FRAME: Final = "unauthenticated_frame"

_BASES: Final = {k: hashlib.sha256(FRAME_HASH_LABEL + k) for k in (b"a", b"v")}


def digest_interval(*, strict: bool, recipients: int) -> float:
    """How often a sender signs: :data:`STRICT_DIGEST_INTERVAL_S` through an SFU while its
    digests to ``recipients`` other members stay within :data:`FAST_DIGEST_ENVELOPES_PER_S`
    envelopes a second, else :data:`DIGEST_INTERVAL_S`."""
    if strict and recipients / STRICT_DIGEST_INTERVAL_S <= FAST_DIGEST_ENVELOPES_PER_S:
        return STRICT_DIGEST_INTERVAL_S
    return DIGEST_INTERVAL_S


def frame_hash(kind_byte: bytes, data: bytes | memoryview) -> bytes:
    """The hash that names one protected frame (as it travels: clear prefix, SFrame header,
    ciphertext, tag) of the kind ``kind_byte`` (b"v" or b"a")."""
    h = _BASES[kind_byte].copy()
    h.update(data)
    return h.digest()[:FRAME_HASH_SIZE]


class SentFrame(NamedTuple):
    kid: int
    ctr: int
    hash: bytes


class ReceivedFrame(NamedTuple):
    kid: int
    ctr: int
    hash: bytes
    #: the member the KID belongs to (by the epoch's roster)
    member: str


@dataclass(frozen=True)
class FrameHashes:
    """What the frame crypto recorded since it was last asked."""

    sent: tuple[SentFrame, ...] = ()
    received: tuple[ReceivedFrame, ...] = ()
    #: records dropped because nobody took them in time (bounded buffers)
    overflow: int = 0


@dataclass(frozen=True)
class DigestRange:
    """Hashes to sign: ``hashes[i]`` is the frame hash of counter ``first_ctr + i``."""

    kid: int
    first_ctr: int
    hashes: tuple[bytes, ...]

    @property
    def last_ctr(self) -> int:
        return self.first_ctr + len(self.hashes) - 1


@dataclass(frozen=True)
class FrameAlarm:
    """Frames shown under ``member``'s KID that ``member`` did not sign: ``frames`` of them
    (since the last alarm for it), the first with counter ``first_ctr``. ``reason``:
    :data:`FORGED` (it signed another frame for that counter) or :data:`UNSIGNED` (it
    signed none within the deadline)."""

    member: str
    kid: int
    reason: str
    frames: int
    first_ctr: int

    @property
    def message(self) -> str:
        if self.reason == UNCHECKED:
            return (
                f"{self.frames} frame hash(es) were lost before the signed digests could "
                "check them: frames may have been shown unchecked"
            )
        what = (
            "differ from what it signed"
            if self.reason == FORGED
            else f"were not signed by it within {COVER_DEADLINE_S:g} s"
        )
        return f"{self.frames} frame(s) under the key of {self.member} {what}"


# --- sender ---------------------------------------------------------------------------------


class DigestSigner:
    """Collects the hashes of the frames we sent, per KID, and says when to sign them.

    Every KID's counters start at 0, and a digest covers each counter once, in order. A
    frame crypto that records frames out of order (the browser's worker hashes audio and
    video concurrently) leaves a gap for a moment: a gap is signed as :data:`NOT_SENT` only
    once the frame after it has waited ``gap_wait_s`` (or when everything must go now); a
    frame recorded after its counter was signed is dropped and counted in ``late``."""

    def __init__(
        self, interval_s: float = DIGEST_INTERVAL_S, gap_wait_s: float = GAP_WAIT_S
    ) -> None:
        self.interval_s = interval_s
        self.gap_wait_s = gap_wait_s
        #: kid -> ctr -> (hash, when recorded)
        self._pending: dict[int, dict[int, tuple[bytes, float]]] = {}
        self._next_ctr: dict[int, int] = {}
        self._newest_kid: int | None = None
        self._last_at: float | None = None
        self.late = 0

    def add(self, frames: Iterable[SentFrame], now: float) -> None:
        for kid, ctr, h in frames:
            if ctr < self._next_ctr.get(kid, 0):
                self.late += 1
                continue
            table = self._pending.get(kid)
            if table is None:
                table = self._pending[kid] = {}
            table[ctr] = (h, now)
            if self._newest_kid is None or kid > self._newest_kid:
                self._newest_kid = kid

    @property
    def pending(self) -> int:
        """Frames recorded and not signed yet."""
        return sum(len(f) for f in self._pending.values())

    def due(self, now: float) -> bool:
        """Something to sign: a second passed, or a KID we no longer send under has frames
        not yet signed (its epoch ended)."""
        if not self._pending:
            return False
        if self._last_at is None or now - self._last_at >= self.interval_s:
            return True
        return any(kid != self._newest_kid for kid in self._pending)

    def take(self, now: float, *, force: bool = False) -> list[DigestRange]:
        """The ranges to sign now (each at most ``MAX_DIGEST_FRAMES`` counters), oldest KID
        first: from each KID's next counter on, up to a gap that may still fill (``force``:
        none may; every gap is :data:`NOT_SENT`)."""
        self._last_at = now
        out: list[DigestRange] = []
        for kid in sorted(self._pending):
            frames = self._pending[kid]
            first = ctr = self._next_ctr.get(kid, 0)
            hashes: list[bytes] = []
            while frames:
                entry = frames.pop(ctr, None)
                if entry is not None:
                    hashes.append(entry[0])
                    ctr += 1
                    continue
                after = min(frames)  # a gap at ctr: the next frame recorded
                if not force and now - frames[after][1] < self.gap_wait_s:
                    break
                hashes.extend([NOT_SENT] * (after - ctr))
                ctr = after
            self._next_ctr[kid] = ctr
            if not frames:
                del self._pending[kid]
            for i in range(0, len(hashes), m.MAX_DIGEST_FRAMES):
                chunk = tuple(hashes[i : i + m.MAX_DIGEST_FRAMES])
                out.append(DigestRange(kid, first + i, chunk))
        # remember the next counter of recent KIDs only (older epochs are over)
        for kid in sorted(self._next_ctr)[:-8]:
            if kid not in self._pending:
                del self._next_ctr[kid]
        return out


# --- receiver -------------------------------------------------------------------------------


@dataclass
class _AlarmState:
    last_at: float | None = None
    frames: int = 0
    kid: int = 0
    first_ctr: int = 0


@dataclass(frozen=True)
class VerifierStats:
    verified: Mapping[str, int]
    #: frames under each member's KID that it did not sign (``forged`` + strict ``unsigned``)
    unauthenticated: Mapping[str, int]
    #: (not strict) frames whose signed hash did not come in time: no alarm, the connection
    #: they came on already binds them to their sender
    unsigned: Mapping[str, int]
    pending: int
    #: per sender, the longest a frame waited for its signed hash (the deadline's margin)
    cover_wait_s: Mapping[str, float] = field(default_factory=dict)
    #: per sender, the longest a signed hash waited for its frame to be recorded (the
    #: retention's margin: a receiving frame crypto that reports its frames late)
    frame_wait_s: Mapping[str, float] = field(default_factory=dict)


class DigestVerifier:
    """Checks accepted frames against their senders' signed hashes.

    ``strict``: a frame accepted while it is set and not signed within the deadline raises
    an alarm (an SFU call, where nothing else binds a frame to its sender). Not strict (a
    mesh call, where each frame's connection already binds it to its sender): such frames
    are only counted as ``unsigned`` (signalling may be cut while peer-to-peer media still
    flows), and a mismatching hash still raises an alarm.
    """

    def __init__(
        self,
        *,
        strict: bool,
        deadline_s: float = COVER_DEADLINE_S,
        retain_s: float = RETAIN_S,
        alarm_interval_s: float = ALARM_INTERVAL_S,
    ) -> None:
        self.strict = strict
        self.deadline_s = deadline_s
        self.retain_s = retain_s
        self.alarm_interval_s = alarm_interval_s
        #: (kid, signer) -> ctr -> (signed hash, when it came)
        self._signed: dict[tuple[int, str], dict[int, tuple[bytes, float]]] = {}
        self._signed_order: deque[tuple[float, tuple[int, str], int, int]] = deque()
        #: (kid, member) -> ctr -> (hash, when accepted, strict then) of frames not yet
        #: matched, oldest first (insertion order is acceptance order)
        self._pending: dict[tuple[int, str], dict[int, tuple[bytes, float, bool]]] = {}
        self._verified: Counter[str] = Counter()
        self._unauthenticated: Counter[str] = Counter()
        self._unsigned: Counter[str] = Counter()
        self._alarms: dict[tuple[str, str], _AlarmState] = {}
        self._cover_wait: dict[str, float] = {}
        self._frame_wait: dict[str, float] = {}

    def frames(self, frames: Iterable[ReceivedFrame], now: float) -> None:
        """Frames the frame crypto accepted (each counter of a KID at most once)."""
        signed_tables, pending_tables = self._signed, self._pending
        verified: Counter[str] = Counter()
        for kid, ctr, got, member in frames:
            key = (kid, member)
            table = signed_tables.get(key)
            entry = table.get(ctr) if table is not None else None
            if entry is None:
                pending = pending_tables.get(key)
                if pending is None:
                    pending = pending_tables[key] = {}
                pending[ctr] = (got, now, self.strict)
            elif got == entry[0]:  # frame hashes are not secret: no constant time needed
                verified[member] += 1
                if now - entry[1] > self._frame_wait.get(member, 0.0):
                    self._frame_wait[member] = now - entry[1]
            else:
                self._alarm(member, kid, ctr, FORGED)
        self._verified.update(verified)

    def signed(
        self, signer: str, kid: int, first_ctr: int, hashes: tuple[bytes, ...], now: float
    ) -> None:
        """``signer``'s signed hashes for ``kid`` (the caller checked the signature and that
        ``kid`` is ``signer``'s). Raises :class:`Equivocation` (and keeps nothing of it) if
        it contradicts a hash ``signer`` signed before for the same counter."""
        key = (kid, signer)
        table = self._signed.setdefault(key, {})
        for ctr, h in enumerate(hashes, first_ctr):
            old = table.get(ctr)
            if old is not None and old[0] != h:
                raise Equivocation(
                    f"{signer[:64]} signed two hashes for counter {ctr} of KID {kid}",
                    reason="conflicting_digest",
                )
        pending = self._pending.get(key)
        verified = 0
        for ctr, h in enumerate(hashes, first_ctr):
            table[ctr] = (h, now)
            if pending is not None and (p := pending.pop(ctr, None)) is not None:
                if p[0] == h:
                    verified += 1
                    if now - p[1] > self._cover_wait.get(signer, 0.0):
                        self._cover_wait[signer] = now - p[1]
                else:
                    self._alarm(signer, kid, ctr, FORGED)
        if verified:
            self._verified[signer] += verified
        if pending is not None and not pending:
            del self._pending[key]
        if hashes:
            self._signed_order.append((now, key, first_ctr, first_ctr + len(hashes) - 1))

    def poll(self, now: float) -> list[FrameAlarm]:
        """Expire what is due (unsigned frames, old signed hashes) and return the alarms
        to raise now."""
        for key in list(self._pending):
            frames = self._pending[key]
            expired = []
            for ctr, (_, at, _strict) in frames.items():
                if now - at < self.deadline_s:
                    break  # the rest were accepted later
                expired.append(ctr)
            for ctr in expired:
                # judged by the path it came on: a frame accepted on a mesh stays bound to
                # its connection even if the call has moved to the SFU since
                if frames.pop(ctr)[2]:
                    self._alarm(key[1], key[0], ctr, UNSIGNED)
                else:
                    self._unsigned[key[1]] += 1
            if not frames:
                del self._pending[key]
        while self._signed_order and now - self._signed_order[0][0] >= self.retain_s:
            _, key, first, last = self._signed_order.popleft()
            table = self._signed.get(key)
            if table is None:
                continue
            for ctr in range(first, last + 1):
                entry = table.get(ctr)
                if entry is not None and now - entry[1] >= self.retain_s:
                    del table[ctr]
            if not table:
                del self._signed[key]
        out: list[FrameAlarm] = []
        for (member, reason), st in self._alarms.items():
            if st.frames and (st.last_at is None or now - st.last_at >= self.alarm_interval_s):
                out.append(FrameAlarm(member, st.kid, reason, st.frames, st.first_ctr))
                st.last_at, st.frames = now, 0
        return out

    def stats(self) -> VerifierStats:
        return VerifierStats(
            verified=dict(self._verified),
            unauthenticated=dict(self._unauthenticated),
            unsigned=dict(self._unsigned),
            pending=sum(len(p) for p in self._pending.values()),
            cover_wait_s=dict(self._cover_wait),
            frame_wait_s=dict(self._frame_wait),
        )

    def unchecked(self, frames: int) -> None:
        """``frames`` hashes were lost between the frame crypto and here while strict: an
        alarm (whose frames they were is lost with them)."""
        if frames > 0:
            self._alarm(UNKNOWN_MEMBER, 0, 0, UNCHECKED, frames)

    def _alarm(self, member: str, kid: int, ctr: int, reason: str, frames: int = 1) -> None:
        self._unauthenticated[member] += frames
        st = self._alarms.setdefault((member, reason), _AlarmState())
        if not st.frames:
            st.kid, st.first_ctr = kid, ctr
        st.frames += frames


# --- one call: messages in and out ------------------------------------------------------------


@dataclass
class AuthenticityStats:
    digests_sent: int = 0
    digests_received: int = 0
    digests_rejected: Counter[str] = field(default_factory=Counter)
    hash_overflow: int = 0


class FrameAuthenticity:
    """Signed frame digests for one call at one member (see the module docstring).

    The call layer, on its own thread::

        auth.frames(media.take_frame_hashes(), now)   # what the frame crypto recorded
        for body in auth.outgoing(now): send e2ee.frame_digest to every other member
        auth.receive(sender, body, now)                # an e2ee.frame_digest from sender
        for alarm in auth.poll(now): raise it (event, status, call log)

    ``member_of(kid)``: the member a KID belongs to by its epoch's roster, when known (a
    digest for a KID that is not its signer's is refused at once); frames are matched only
    with their own member's signature whatever it says.
    """

    def __init__(
        self,
        *,
        context: m.Context,
        self_id: str,
        identity_key: SigningKey,
        directory: Mapping[str, PublicKey],
        strict: bool = False,
        interval_s: float = DIGEST_INTERVAL_S,
        deadline_s: float = COVER_DEADLINE_S,
        member_of: Callable[[int], str | None] | None = None,
    ) -> None:
        self.self_id = self_id
        self._key = identity_key
        self._ctx = context
        self._directory = dict(directory)
        #: charter versions this call has held (a digest may be signed under any of them)
        self._versions = {context.charter_version}
        self._member_of = member_of
        self.signer = DigestSigner(interval_s)
        self.verifier = DigestVerifier(strict=strict, deadline_s=deadline_s)
        self.counters = AuthenticityStats()

    @property
    def strict(self) -> bool:
        return self.verifier.strict

    @strict.setter
    def strict(self, value: bool) -> None:
        """True on the SFU path (unsigned frames raise alarms), False on a mesh."""
        self.verifier.strict = value

    def update_directory(self, directory: Mapping[str, PublicKey], charter_version: int) -> None:
        self._directory = dict(directory)
        self._ctx = m.Context(self._ctx.line_id, self._ctx.call_id, charter_version)
        self._versions.add(charter_version)

    def frames(self, hashes: FrameHashes, now: float) -> None:
        self.signer.add(hashes.sent, now)
        self.verifier.frames(hashes.received, now)
        self.counters.hash_overflow += hashes.overflow
        if self.strict:  # through the SFU nothing else binds those frames: an alarm
            self.verifier.unchecked(hashes.overflow)

    def outgoing(self, now: float, *, force: bool = False) -> list[bytes]:
        """Signed ``e2ee.frame_digest`` bodies due now (``force``: everything pending, e.g.
        before hanging up)."""
        if not (self.signer.due(now) or (force and self.signer.pending)):
            return []
        out = [
            m.build_frame_digest(
                self._key,
                self._ctx,
                epoch=kid_epoch(r.kid),
                signer=self.self_id,
                kid=r.kid,
                first_ctr=r.first_ctr,
                hashes=r.hashes,
            )
            for r in self.signer.take(now, force=force)
        ]
        self.counters.digests_sent += len(out)
        return out

    def receive(self, sender: str, body: bytes, now: float) -> m.FrameDigest:
        """Check and take one ``e2ee.frame_digest`` from ``sender`` (as the exchange
        authenticated it). Raises an :class:`~hotline.errors.E2EEError` subclass, counted
        in ``counters.digests_rejected`` by reason."""
        try:
            msg = m.parse(m.MSG_FRAME_DIGEST, body)
            assert isinstance(msg, m.FrameDigest)
            if msg.signer != sender:
                raise SenderMismatch(
                    f"frame digest signed by {msg.signer[:64]} came from {sender[:64]}"
                )
            ctx = msg.context
            # any charter version this call held, or a newer one (its signer adopted a new
            # charter first): a digest replayed across versions changes nothing anyway
            if (ctx.line_id, ctx.call_id) != (self._ctx.line_id, self._ctx.call_id) or (
                ctx.charter_version not in self._versions
                and ctx.charter_version < self._ctx.charter_version
            ):
                raise WrongContext("frame digest for another line, call or charter version")
            key = self._directory.get(sender)
            if key is None:
                raise UnexpectedMessage(f"frame digest from {sender[:64]}, not in the charter")
            msg.verify(key)
            owner = self._member_of(msg.kid) if self._member_of is not None else None
            if owner is not None and owner != sender:
                raise SenderMismatch(
                    f"{sender[:64]} signed a digest for the KID of {owner[:64]}",
                    reason="wrong_digest_signer",
                )
            self.verifier.signed(sender, msg.kid, msg.first_ctr, msg.hashes, now)
        except E2EEError as exc:
            self.counters.digests_rejected[exc.reason] += 1
            raise
        self.counters.digests_received += 1
        return msg

    def poll(self, now: float) -> list[FrameAlarm]:
        return self.verifier.poll(now)

    def stats(self) -> dict[str, object]:
        v = self.verifier.stats()
        c = self.counters
        return {
            "strict": self.strict,
            "verified": sum(v.verified.values()),
            "pending": v.pending,
            UNAUTHENTICATED_FRAME: dict(v.unauthenticated),
            "unsigned": dict(v.unsigned),
            "digests_sent": c.digests_sent,
            "digests_received": c.digests_received,
            "digests_rejected": dict(c.digests_rejected),
            "hash_overflow": c.hash_overflow,
            "late_hashes": self.signer.late,
            # the margins, in ms: a frame's wait for its signature (deadline
            # COVER_DEADLINE_S), a signature's wait for its frame (kept RETAIN_S)
            "cover_wait_ms": {k: round(s * 1000) for k, s in v.cover_wait_s.items()},
            "frame_wait_ms": {k: round(s * 1000) for k, s in v.frame_wait_s.items()},
        }
