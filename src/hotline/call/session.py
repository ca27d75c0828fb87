"""One call as a terminal runs it: the call machine, the E2EE key session and one transport
per other member (a link of the call's media engine), driven over signed envelopes.

This is the asyncio adapter around the pure parts (``call.machine``, ``call.signalling``,
``call.liveness``, ``e2ee``). It never sends anything itself except through the ``send``
callable it is given (the exchange client), and it never lets media out before the E2EE
session has keys: the key session hands its keys to the engine's key sink, and the engine's
frame crypto refuses to protect a frame without a current epoch (fail closed).

The media engine (``call.media_engine``) is aiortc in this process by default
(``call.aiortc_engine``) or the terminal's browser page; this module does not know which.
Signalling per pair of members (``call.signalling``): the member with the lower terminal id
offers; offer and answer travel in signed ``call.sdp`` envelopes that bind the SDP's DTLS
fingerprints to the sender's charter identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from hotline.call import signalling
from hotline.call.aiortc_engine import AiortcEngine, CheckAudio, PeerLink, aiortc_engine_factory
from hotline.call.liveness import Action, LinkView, PeerLiveness
from hotline.call.machine import (
    Answered,
    CallEnded,
    CallMachine,
    CallProtocolError,
    CallState,
    Declined,
    InviteWithdrawn,
    MembersChanged,
    Ringing,
    charter_departures,
)
from hotline.call.media_engine import (
    ConferenceEngine,
    EngineFactory,
    MediaEngine,
    MediaLink,
    MediaSettings,
)
from hotline.calllog import CallLog
from hotline.charter.model import DEFAULT_CHECK_THRESHOLDS, CheckThresholds, SfuEndpoint
from hotline.check.metrics import live_warnings
from hotline.e2ee.events import (
    EpochActivated,
    EpochFailed,
    KeyRejected,
    MemberLagging,
    PeerCharterVersion,
)
from hotline.e2ee.frame_digest import (
    UNAUTHENTICATED_FRAME,
    FrameAlarm,
    FrameAuthenticity,
    digest_interval,
)
from hotline.e2ee.messages import MAX_MEMBERS, MSG_FRAME_DIGEST, Context
from hotline.e2ee.session import CallKeySession
from hotline.e2ee.sframe import DEFAULT_SUITE, kid_epoch, kid_sender_index
from hotline.encoding import Value, decode, encode, expect_dict
from hotline.errors import HotlineError, SdpError, StateError
from hotline.keys import PublicKey, SigningKey
from hotline.media.sources import MediaSource
from hotline.media.stats import FrameEvent
from hotline.sfu import janus, topology

log = logging.getLogger("hotline.call")

MSG_SDP = signalling.MSG_SDP
#: how often the path to each peer is looked at for live quality warnings
QUALITY_INTERVAL_S = 2.0
#: a call whose members agree no epoch within this time is ended (it never carried media)
KEY_AGREEMENT_TIMEOUT_S = 60.0
#: when a page that took over mid-call sends again, by the key session's answer
SEND_RESUMES = {
    "now": "this terminal leads: a new epoch now",
    "pending": "with the epoch under way",
    "asked": "the leader was asked for a new epoch",
    "waiting": "with the first epoch",
    "closed": "never: the call's keys are closed",
}
MSG_SUMMARY = "call.summary"
#: a readiness check's report: each end's view of the check call, exchanged at its end
MSG_CHECK_REPORT = "check.report"
#: the caller's verdict of a check, sent to the callee before the hang-up: kept at both ends
MSG_CHECK_RESULT = "check.result"
CHECK_VERDICTS = frozenset({"green", "amber", "red"})
#: how many frame alarms the call's status keeps (the newest)
MAX_FRAME_ALARMS = 20
#: signed frame digests sent in one envelope at most, and their bytes at most (a digest
#: of 1024 frames is ~17 KB; envelopes are at most 64 KB)
MAX_DIGESTS_PER_ENVELOPE = 16
#: a conference whose SFU could not be joined goes on as a mesh and tries again after this
#: long, twice as long after each further failed join, at most SFU_RETRY_MAX_S
SFU_RETRY_S = 30.0
SFU_RETRY_MAX_S = 600.0
#: each request of the retry's reachability probe (a session made and destroyed)
SFU_PROBE_TIMEOUT_S = 3.0
#: our own upstream to the SFU failed this long ago: the call joins the room again
SFU_REJOIN_AFTER_S = 1.0
#: a conference that broke this many times within SFU_REJOIN_WINDOW_S is not joined again
#: at once: the call is a mesh until the SFU retry (SFU_RETRY_S, doubling each time this
#: happens again within the window), so a failing or hostile SFU that takes every join
#: and then drops it cannot make the call rebuild its conference every second
SFU_REJOINS_MAX = 3
SFU_REJOIN_WINDOW_S = 300.0
#: a move between mesh and SFU makes the new path before it breaks the old: the old one is
#: closed once the new one shows a picture of every member it showed (and MOVE_GRACE_S
#: more, for the members' own views of us), or after MOVE_OVERLAP_MAX_S whatever it shows
MOVE_OVERLAP_MAX_S = 4.0
MOVE_GRACE_S = 0.5
DIGEST_ENVELOPE_BYTES = 32 * 1024
Sender = Callable[[str, str, bytes], Awaitable[None]]


__all__ = ["CallSession", "MediaSettings", "PeerLink", "new_call_id"]


def _view(link: MediaLink | None) -> LinkView | None:
    if link is None:
        return None
    return LinkView(created=link.created, state=link.state, media_total=link.media_total)


class CallSession:
    """Drives one call. Created on dial or on an incoming ring."""

    def __init__(
        self,
        *,
        call_id: str,
        line_id: str,
        charter_version: int,
        self_id: str,
        self_name: str,
        identity_key: SigningKey,
        directory: Mapping[str, PublicKey],
        kem: str,
        rekey_interval_s: float,
        suite: str = DEFAULT_SUITE.name,
        max_participants: int = MAX_MEMBERS,
        send: Sender,
        call_log: CallLog,
        media: MediaSettings,
        source: MediaSource,
        on_event: Callable[[str, dict[str, Any]], None],
        engine: EngineFactory | None = None,
        sfus: Sequence[SfuEndpoint] = (),
        mesh_limit: int = 3,
        thresholds: CheckThresholds = DEFAULT_CHECK_THRESHOLDS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.call_id = call_id
        #: the time the call log records (the terminal's readiness clock)
        self._wall = wall_clock
        #: the charter's SFUs (the first is used) and the policy's mesh limit
        self.sfus = tuple(sfus)
        self.mesh_limit = mesh_limit
        #: "mesh" (a peer connection per pair) or "sfu" (through the charter's SFU)
        self.topology: topology.Topology = topology.MESH
        self.max_participants = max_participants
        #: the policy's limits for live quality warnings (``live_*``)
        self.thresholds = thresholds
        #: the latest RTP figures of the path to each peer, by media kind (for metrics)
        self.path_figures: dict[str, dict[str, dict[str, float]]] = {}
        self.line_id = line_id
        self.charter_version = charter_version
        self.directory = dict(directory)
        self.self_id = self_id
        self.self_name = self_name
        self.machine = CallMachine(
            self_id, call_id, max_members=max_participants, known=frozenset(directory)
        )
        make_engine = (
            engine if engine is not None else aiortc_engine_factory(media, source, call_id)
        )
        #: the call's media: links to the other members, frame crypto, statistics
        self.engine: MediaEngine = make_engine(suite, self._on_frame_event)
        self.keys = CallKeySession(
            line_id=line_id,
            call_id=call_id,
            self_id=self_id,
            identity_key=identity_key,
            directory=directory,
            charter_version=charter_version,
            kem=kem,
            suite=suite,
            max_members=max_participants,
            rekey_interval_s=rekey_interval_s,
            key_sink=self.engine.key_sink,
        )
        #: signed frame digests: every frame shown was signed by the member whose KID it has
        #: (docs/protocol.md §11); strict on a path where one connection carries everyone
        self.frame_auth = FrameAuthenticity(
            context=Context(line_id, call_id, charter_version),
            self_id=self_id,
            identity_key=identity_key,
            directory=directory,
            strict=False,
            member_of=self._member_of,
        )
        #: check frame digests strictly on a mesh too (they always are through the SFU)
        self.strict_digests = False
        #: a join of the SFU is under way (frames may already come through it)
        self._joining_sfu = False
        #: monotonic time the SFU last could not be joined (the call is a mesh meanwhile)
        self._sfu_failed_at: float | None = None
        #: joins that failed in a row (each retry waits twice as long as the one before)
        self._sfu_failures = 0
        self._sfu_retrying = False
        #: since when our own upstream to the SFU is failed, and whether a rejoin runs
        self._sfu_broken_since: float | None = None
        self._sfu_rejoining = False
        #: rejoins of a broken conference: all of them (status), the recent ones' times,
        #: and how often they were too many (the retry's doubling)
        self.sfu_rejoins = 0
        self._rejoined_at: deque[float] = deque()
        self._last_rejoin_at = 0.0
        self._sfu_unstable = 0
        #: counts the moves between mesh and SFU: the old path of a move is closed only if
        #: no other move came after it
        self._moves = 0
        #: where a move under way is going (its old path still open), else None
        self._breaking: topology.Topology | None = None
        #: the last moves' old paths closed: topology, overlap_ms, not_shown (members the
        #: new path did not show yet when the overlap ran out)
        self.moves: deque[dict[str, Value]] = deque(maxlen=8)
        #: the newest frame alarms (what ``call status`` shows)
        self.frame_alarms: list[dict[str, Value]] = []
        self._send = send
        self._log = call_log
        self._media = media
        self._on_event = on_event
        self.peers: dict[str, MediaLink] = {}
        #: replacements being built beside a lost transport, by peer
        self.pending: dict[str, MediaLink] = {}
        self.liveness: dict[str, PeerLiveness] = {}
        #: through the SFU: each member's liveness, fed by the frames accepted under its KIDs
        self.sfu_liveness: dict[str, PeerLiveness] = {}
        self._sfu_since = 0.0
        #: peers the engine made links to (what shows and plays them lives for the call)
        self._media_peers: set[str] = set()
        #: readiness check: the other ends' reports, and when media from each began
        self.check_reports: dict[str, dict[str, Value]] = {}
        self._result_taken = False
        self._report_sent: set[str] = set()
        self._first_media: dict[str, float] = {}
        #: live quality warnings per peer (jitter, round trip, loss), looked at every 2 s
        self.quality: dict[str, list[str]] = {}
        self._quality_at = 0.0
        self.ever_members: set[str] = set()
        self.cosigned: set[str] = set()
        self.started = time.monotonic()
        self.answered_at: float | None = None
        self.security_code: str | None = None
        self.epoch: int | None = None
        self.epochs: list[dict[str, Value]] = []
        self.rejected: dict[str, int] = {}
        self._last_frame_event: dict[str, float] = {}
        self._lock = asyncio.Lock()
        #: a digest_tick is signing or sending (never two at once)
        self._digesting = False
        self._background: set[asyncio.Future[None]] = set()
        self._closed = False
        self.active_since: float | None = None
        self._epoch_at: float | None = None

    # --- inputs ----------------------------------------------------------------------------

    async def dial(self, target: str, purpose: str = "call") -> None:
        if purpose == "check" and isinstance(self.engine, AiortcEngine):
            # the reference speech instead of our audio: scored when it comes back
            self.engine.check_audio = CheckAudio()
        self.machine.dial(target, time.monotonic(), purpose)
        self._log_event(
            "ring",
            {**self._line_facts(), "target": target, "direction": "out", "purpose": purpose},
        )
        await self.flush()

    async def answer(self) -> None:
        if self.machine.purpose == "check" and isinstance(self.engine, AiortcEngine):
            # the caller measures the round trips on its own clock (its own frame ids and
            # chirps) and scores its own speech: it gets its own media back, never ours
            self.engine.loopback_video = self.engine.loopback_audio = True
        self.machine.answer(time.monotonic())
        self.answered_at = time.monotonic()
        self._log_event("answer", {**self._line_facts(), "by": self.self_id})
        await self.flush()

    async def decline(self, reason: str = "declined") -> None:
        self.machine.decline(time.monotonic(), reason)
        self._log_event("decline", {"reason": reason})
        await self.flush()

    async def invite(self, target: str) -> None:
        self.machine.invite(target, time.monotonic())
        self._log_event("invite", {"target": target})
        await self.flush()

    async def hangup(self, reason: str = "hung up") -> None:
        if self.machine.state == CallState.ACTIVE:
            # send nothing more, then sign every frame we sent before we go: none is left
            # for the others to show unsigned
            self.engine.key_sink.pause_sending("this terminal is hanging up")
            await self._frame_digests(time.monotonic(), force=True)
        self.machine.hangup(time.monotonic(), reason)
        await self.flush()

    async def on_charter(
        self,
        directory: Mapping[str, PublicKey],
        charter_version: int,
        *,
        kem: str | None = None,
        suite: str | None = None,
        max_participants: int | None = None,
        sfus: Sequence[SfuEndpoint] | None = None,
        mesh_limit: int | None = None,
    ) -> None:
        """A newer charter: terminals it no longer lists, or whose identity key it changed,
        leave the call at once, the keys move to a new epoch bound to the new version and
        its policy (``kem``, ``suite``, ``max_participants``; default unchanged); if we were
        removed, or the call holds more terminals than the new limit, the call ends."""
        now = time.monotonic()
        removed = charter_departures(self.directory, directory)
        self.directory = dict(directory)
        self.charter_version = charter_version
        self.machine.known = frozenset(directory)
        self.frame_auth.update_directory(directory, charter_version)
        if self.machine.state in (CallState.IDLE, CallState.ENDED):
            return
        if max_participants is not None:
            self.machine.max_members = max_participants
            self.max_participants = max_participants
        if sfus is not None:  # the topology follows at the next change of members
            self.sfus = tuple(sfus)
        if mesh_limit is not None:
            self.mesh_limit = mesh_limit
        try:
            self.keys.update_directory(
                directory,
                charter_version,
                now,
                kem=kem,
                suite=suite,
                max_members=max_participants,
            )
        except StateError:
            self.machine.hangup(now, "this terminal is no longer in the charter")
        else:
            self.machine.remove(removed, now)
            count = len(self.machine.members)
            if max_participants is not None and count > max_participants:
                self.machine.hangup(
                    now,
                    f"the new charter allows at most {max_participants} terminals; {count}"
                    " are in this call",
                )
        await self.flush()

    async def receive(self, sender: str, msg_type: str, body: bytes) -> None:
        """A verified envelope for this call. Refusals are counted, logged and surfaced."""
        now = time.monotonic()
        try:
            if msg_type == MSG_FRAME_DIGEST:
                self._on_frame_digest(sender, body, now)
            elif msg_type.startswith("e2ee."):
                if self.machine.state != CallState.ACTIVE or sender not in self.machine.members:
                    raise CallProtocolError(f"{msg_type} from {sender}, not a member of this call")
                fields = expect_dict(decode(body), msg_type)
                inner = fields.get("data")
                if not isinstance(inner, bytes):
                    raise CallProtocolError(f"{msg_type}: body without key agreement data")
                self.keys.receive(sender, msg_type, inner, now)
            elif msg_type == MSG_SDP:
                await self._on_sdp(sender, body)
            elif msg_type == MSG_CHECK_REPORT:
                await self._on_check_report(sender, body)
            elif msg_type == MSG_CHECK_RESULT:
                self._on_check_result(sender, body)
            elif msg_type == MSG_SUMMARY:
                self._on_summary(sender, body)
            else:
                fields = expect_dict(decode(body), msg_type)
                self.machine.receive(sender, msg_type, fields, now)
        except HotlineError as exc:
            self._reject(exc.reason, f"{msg_type} from {sender}: {exc}")
        await self.flush()

    async def tick(self) -> None:
        now = time.monotonic()
        if self.machine.state == CallState.ENDED:
            return
        if (
            self.machine.state == CallState.ACTIVE
            and self.epoch is None
            and self.active_since is not None
            and now - self.active_since > KEY_AGREEMENT_TIMEOUT_S
        ):
            # fail closed: a call whose keys never agree carries no media; end it, say why
            self._on_event("e2ee_failed", {"reason": "no epoch agreed in time"})
            self.machine.hangup(now, "end-to-end encryption did not complete")
            await self.flush()
            return
        timer = self.machine.next_timer()
        if timer is not None and now >= timer:
            self.machine.handle_timer(now)
        self._send_key_withheld(now)
        timer = self.keys.next_timer()
        if timer is not None and now >= timer:
            self.keys.handle_timer(now)
        if self.machine.state == CallState.ACTIVE:
            # the signed frame digests run on their own clock (digest_tick)
            await self._watch_transports(now)
            if now - self._quality_at >= QUALITY_INTERVAL_S:
                self._quality_at = now
                await self._watch_quality(now)
        await self.flush()

    async def _watch_quality(self, now: float) -> None:
        """Warn (event, status) while the path to a peer is poor: jitter, round trip, loss."""
        for peer_id, link in list(self.peers.items()):
            try:
                rtp = await self.engine.path_quality(link, now)
            except Exception as exc:  # a closing connection has no statistics: look next time
                log.debug("call %s: no statistics from %s: %r", self.call_id, peer_id, exc)
                continue
            if rtp is None:  # this engine reports no RTP figures
                continue
            self.path_figures[peer_id] = rtp
            warnings = live_warnings(rtp, self.thresholds)
            if warnings != self.quality.get(peer_id, []):
                if warnings:
                    log.warning(
                        "call %s: path to %s: %s", self.call_id, peer_id, "; ".join(warnings)
                    )
                    self._on_event("quality_warning", {"peer": peer_id, "warnings": warnings})
                elif peer_id in self.quality:
                    self._on_event("quality_ok", {"peer": peer_id})
                self.quality[peer_id] = warnings

    # --- signed frame digests (docs/protocol.md §11) ------------------------------------------

    async def digest_tick(self) -> None:
        """The signed frame digests, on a clock of their own (the terminal calls this every
        tick apart from :meth:`tick`): :meth:`tick` can wait seconds on a conference being
        rebuilt (Janus, an engine page answering), and the frames not signed meanwhile would
        pass their receivers' 2 s deadline."""
        if self.machine.state != CallState.ACTIVE or self._digesting:
            return
        self._digesting = True
        try:
            await self._frame_digests(time.monotonic())
        finally:
            self._digesting = False

    async def _frame_digests(self, now: float, *, force: bool = False) -> None:
        """Take what the frame crypto recorded, sign and send what is due, raise alarms."""
        # through an SFU nothing else binds a frame to its sender: an unsigned frame is an
        # alarm there; on a mesh the connection binds it, and it is only counted
        self.frame_auth.strict = (
            self.strict_digests
            or self.topology == topology.SFU
            or self._joining_sfu
            or (isinstance(self.engine, ConferenceEngine) and self.engine.in_conference)
        )
        if isinstance(self.engine, AiortcEngine):  # a frame that cannot be digested: refused
            self.engine.crypto.hashes_required = self.frame_auth.strict
        hashes = self.engine.take_frame_hashes()
        if hashes is not None:
            self.frame_auth.frames(hashes, now)
        others = sorted(self._others())
        self.frame_auth.signer.interval_s = digest_interval(
            strict=self.frame_auth.strict, recipients=len(others)
        )
        # the digests due now in as few envelopes per member as fit (the exchange limits
        # envelopes per second per terminal; a conference of n members sends n-1 a second)
        batches: list[list[Value]] = []
        size = 0
        for body in self.frame_auth.outgoing(now, force=force):
            if (
                not batches
                or len(batches[-1]) >= MAX_DIGESTS_PER_ENVELOPE
                or (size + len(body) > DIGEST_ENVELOPE_BYTES)
            ):
                batches.append([])
                size = 0
            batches[-1].append(body)
            size += len(body)
        for batch in batches:
            wrapped = encode({"call": self.call_id, "digests": batch})
            for recipient in others:
                await self._send_one(recipient, MSG_FRAME_DIGEST, wrapped)
        if self._lock.locked():
            # transports or the conference are being rebuilt, which holds back the envelopes
            # behind it (the digests among them): judge the deadlines once that is done
            return
        for alarm in self.frame_auth.poll(now):
            self._on_frame_alarm(alarm)

    def _on_frame_digest(self, sender: str, body: bytes, now: float) -> None:
        if self.machine.state != CallState.ACTIVE or (
            sender not in self.machine.members and sender not in self.ever_members
        ):
            raise CallProtocolError(f"{MSG_FRAME_DIGEST} from {sender}, not in this call")
        digests = expect_dict(decode(body), MSG_FRAME_DIGEST).get("digests")
        if (
            not isinstance(digests, list)
            or not 0 < len(digests) <= MAX_DIGESTS_PER_ENVELOPE
            or not all(isinstance(d, bytes) for d in digests)
        ):
            raise CallProtocolError(f"{MSG_FRAME_DIGEST}: body without digests")
        refused: HotlineError | None = None
        for inner in digests:
            assert isinstance(inner, bytes)
            try:
                self.frame_auth.receive(sender, inner, now)
            except HotlineError as exc:  # counted there; the others still count
                refused = exc
        if refused is not None:
            raise refused

    def _on_frame_alarm(self, alarm: FrameAlarm) -> None:
        """Frames shown under a member's key that the member did not sign: an alarm on
        every screen (event), in the status and in the call log."""
        detail: dict[str, Value] = {
            "member": alarm.member,
            "reason": alarm.reason,
            "frames": alarm.frames,
            "kid": alarm.kid,
            "first_ctr": alarm.first_ctr,
            "message": alarm.message,
        }
        self.rejected[UNAUTHENTICATED_FRAME] = (
            self.rejected.get(UNAUTHENTICATED_FRAME, 0) + alarm.frames
        )
        log.error("call %s: %s (%s)", self.call_id, alarm.message, alarm.reason)
        self._log_event(UNAUTHENTICATED_FRAME, detail)
        self._on_event(UNAUTHENTICATED_FRAME, dict(detail))
        shown: dict[str, Value] = {**detail, "time": int(time.time())}
        self.frame_alarms = [*self.frame_alarms, shown][-MAX_FRAME_ALARMS:]

    def _member_of(self, kid: int) -> str | None:
        """The member a KID belongs to by the roster of its epoch (None: not active yet)."""
        epoch, index = kid_epoch(kid), kid_sender_index(kid)
        for record in reversed(self.epochs):
            roster = record.get("roster")
            if record.get("epoch") == epoch and isinstance(roster, list):
                member = roster[index] if index < len(roster) else None
                return member if isinstance(member, str) else None
        return None

    # --- outputs ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send what the pure parts want sent and act on what they report."""
        for _ in range(8):  # events can produce messages, which can produce events
            progressed = False
            for out in self.machine.outgoing():
                progressed = True
                await self._send_one(out.recipient, out.msg_type, encode(out.body))
            for event in self.machine.events():
                progressed = True
                await self._on_call_event(event)
            for kout in self.keys.outgoing():
                progressed = True
                recipients = [kout.recipient] if kout.recipient else sorted(self._others())
                wrapped = encode({"call": self.call_id, "data": kout.body})
                for recipient in recipients:
                    await self._send_one(recipient, kout.msg_type, wrapped)
            for kevent in self.keys.events():
                progressed = True
                self._on_key_event(kevent)
            if not progressed:
                return

    async def _send_one(self, recipient: str, msg_type: str, body: bytes) -> None:
        """Send one message; a refusal (queue full, too large, not a member any more) is
        counted and surfaced, and the other messages still go."""
        try:
            await self._send(recipient, msg_type, body)
        except HotlineError as exc:
            self._reject(f"send_{exc.reason}", f"{msg_type} to {recipient} not sent: {exc}")

    async def _on_call_event(self, event: object) -> None:
        if isinstance(event, Ringing):
            self._log_event("ring", {**self._line_facts(), "from": event.caller, "direction": "in"})
            self._on_event("ringing", {"from": event.caller, "members": sorted(event.members)})
        elif isinstance(event, Answered):
            self.answered_at = self.answered_at or time.monotonic()
            self._log_event("answer", {**self._line_facts(), "by": event.by})
            self._on_event("answered", {"by": event.by})
        elif isinstance(event, Declined):
            self._log_event("decline", {"by": event.by, "reason": event.reason})
            self._on_event("declined", {"by": event.by, "reason": event.reason})
        elif isinstance(event, InviteWithdrawn):
            detail: dict[str, Value] = {
                "target": event.target,
                "by": event.by,
                "because": event.because,
            }
            log.warning(
                "call %s: the invitation of %s by %s is withdrawn (%s)",
                self.call_id,
                event.target,
                event.by,
                event.because,
            )
            self._log_event("invite_withdrawn", detail)
            self._on_event("invite_withdrawn", dict(detail))
        elif isinstance(event, MembersChanged):
            self._log_event(
                "roster",
                {
                    "members": list[Value](sorted(event.members)),
                    "joined": list[Value](sorted(event.joined)),
                    "left": list[Value](sorted(event.left)),
                },
            )
            self._on_event("members", {"members": sorted(event.members)})
            if self.machine.state == CallState.ACTIVE and self.active_since is None:
                self.active_since = time.monotonic()
            if self.machine.state == CallState.ACTIVE and len(event.members) > 1:
                # a call ending leaves no one to share keys with: no new epoch then
                self.keys.set_participants(event.members, time.monotonic())
                await self._sync_peers(event.members)
        elif isinstance(event, CallEnded):
            self._log_event("hangup", {"reason": event.reason})
            self._on_event("ended", {"reason": event.reason, "purpose": self.machine.purpose})
            self.keys.close(event.reason)  # erase every key now; no more epochs
            await self.close()
            await self._send_summaries()

    def _on_key_event(self, event: object) -> None:
        if isinstance(event, EpochActivated):
            self._epoch_at = time.monotonic()
            self.epoch = event.epoch
            self.security_code = event.security_code
            record: dict[str, Value] = {
                "epoch": event.epoch,
                "roster": list[Value](sorted(event.members)),
                "security_code": event.security_code,
            }
            self.epochs.append(record)
            self.ever_members |= set(event.members)
            self._log_event("epoch", record)
            self._on_event("epoch", dict(record))
        elif isinstance(event, MemberLagging):
            missing: list[Value] = list(sorted(event.missing))
            self._log_event("key_lagging", {"epoch": event.epoch, "missing": missing})
            self._on_event("lagging", {"epoch": event.epoch, "missing": sorted(event.missing)})
        elif isinstance(event, EpochFailed):
            self._log_event("key_failure", {"reason": event.reason})
            self._on_event("e2ee_failed", {"reason": event.reason})
        elif isinstance(event, KeyRejected):
            self._reject("key_rejected", f"key material from {event.sender}: {event.reason}")
        elif isinstance(event, PeerCharterVersion):
            # the two terminals cannot agree keys until one gets the other's charter
            facts: dict[str, Value] = {
                "peer": event.sender,
                "peer_version": event.peer_version,
                "version": event.version,
                "message": event.message,
            }
            log.warning("call %s: %s", self.call_id, event.message)
            self._log_event("charter_mismatch", facts)
            self._on_event("charter_mismatch", dict(facts))

    # --- transport ---------------------------------------------------------------------------
    #
    # Each other member has an active transport and, while it is lost, a pending replacement
    # built beside it (``call.liveness`` decides; this section acts). Offers carry an attempt
    # number: an answer is applied only to the transport of its own attempt, and an offer
    # older than one already answered is refused, so messages delayed by an outage cannot
    # replace a newer transport.

    def _others(self) -> set[str]:
        return set(self.machine.members) - {self.self_id}

    def _liveness(self, peer_id: str) -> PeerLiveness:
        live = self.liveness.get(peer_id)
        if live is None:
            live = self.liveness[peer_id] = PeerLiveness(
                offerer=signalling.is_offerer(self.self_id, peer_id),
                settings=self._media.liveness,
            )
        return live

    def _wanted_topology(self, members: frozenset[str]) -> topology.Topology:
        if not isinstance(self.engine, ConferenceEngine):
            return topology.MESH  # an engine without an SFU path: the call stays a mesh
        chosen = topology.choose(len(members), self.mesh_limit, self.sfus)
        if chosen == topology.SFU and self._sfu_failed_at is not None:
            return topology.MESH  # the SFU could not be joined: a mesh until a retry joins it
        return chosen

    async def _close_mesh(self, keep: frozenset[str] = frozenset()) -> None:
        """Close the mesh transports, but those to ``keep`` (lock held)."""
        for table in (self.peers, self.pending):
            for peer_id in list(table):
                if peer_id not in keep:
                    await self._close_peer(table.pop(peer_id))
        for peer_id in list(self.liveness):
            if peer_id not in keep:
                del self.liveness[peer_id]

    async def _sync_conference(self, members: frozenset[str]) -> bool:
        """The call goes (or already goes) through the SFU: the conference carries every
        member (lock held). Keys are not touched. A move from a mesh makes before it
        breaks: the mesh transports stay until the room shows every member they showed
        (:meth:`_break_old_path`); a join that fails leaves them as they are."""
        engine = self.engine
        assert isinstance(engine, ConferenceEngine)
        moving = not engine.in_conference
        # still in the room while a move to a mesh was under way: back to the SFU, which
        # closes the new mesh links once the room shows their members again
        returning = engine.in_conference and self.topology != topology.SFU
        keep = members if moving or returning or self._breaking == topology.SFU else frozenset()
        await self._close_mesh(keep=keep)
        for peer_id in sorted(self._media_peers - members):
            self._media_peers.discard(peer_id)
            await self.engine.peer_left(peer_id)
        self._media_peers |= members - {self.self_id}
        if not moving:
            await engine.conference_members(members)
            if returning:
                self.topology = topology.SFU
                self.sfu_liveness.clear()
                self._sfu_since = time.monotonic()
                self._log_event("topology", {"topology": "sfu", "members": len(members)})
                self._on_event("topology", {"topology": "sfu", "members": len(members)})
                self._moved(topology.SFU)
            return True
        spec = topology.conference_spec(
            self_id=self.self_id,
            line_id=self.line_id,
            call_id=self.call_id,
            sfu=self.sfus[0],
            publishers=max(self.max_participants, len(members)),
        )
        started = time.monotonic()
        # frames may come through the SFU before the join returns: digests are strict
        # from the first of them (a frame judged by a mesh rule would pass unchecked)
        self._joining_sfu = True
        try:
            await engine.join_conference(spec, members)
        except Exception as exc:  # engines raise their own errors too: every one falls back
            reason = exc.reason if isinstance(exc, HotlineError) else "internal"
            if not isinstance(exc, HotlineError):
                log.exception("call %s: joining the conference failed", self.call_id)
            self._reject(f"sfu_{reason}", f"joining the conference at {spec.url}: {exc}")
            self._log_event("sfu_failure", {"url": spec.url, "reason": reason})
            with contextlib.suppress(Exception):  # what the failed join left half made
                await engine.leave_conference()
            # the call goes on as a mesh (the same keys; more copies of each stream) and
            # tries the SFU again later: a conference never stops for its SFU
            self._sfu_failed_at = time.monotonic()
            self._sfu_failures += 1
            retry = round(self._sfu_retry_s())
            detail: dict[str, Value] = {
                "url": spec.url,
                "reason": reason,
                "members": len(members),
                "retry_s": retry,
            }
            log.warning(
                "call %s: the SFU %s cannot be joined (%s): a mesh of %d until a retry in %d s",
                self.call_id,
                spec.url,
                reason,
                len(members),
                retry,
            )
            self._on_event("sfu_unreachable", dict(detail))
            return False
        finally:
            self._joining_sfu = False
        self._sfu_failed_at = None
        self._sfu_failures = 0
        self.topology = topology.SFU
        self.sfu_liveness.clear()
        self._sfu_since = time.monotonic()
        self._moved(topology.SFU)
        detail = {
            "topology": "sfu",
            "url": spec.url,
            "members": len(members),
            "setup_ms": round((time.monotonic() - started) * 1000),
        }
        log.warning(
            "call %s: through the SFU %s (%d members)", self.call_id, spec.url, len(members)
        )
        self._log_event("topology", detail)
        self._on_event("topology", dict(detail))
        return True

    async def _retry_sfu(self) -> None:
        """The SFU could not be joined a while ago and the call is a mesh: once it answers
        again the call moves to it (a try that fails leaves the mesh as it is)."""
        try:
            self._sfu_failed_at = time.monotonic()  # the next try counts from this one
            spec = self.sfus[0]
            pin = bytes.fromhex(spec.tls_fingerprint[7:]) if spec.tls_fingerprint else None
            try:
                await janus.reachable(spec.url, pin, timeout_s=SFU_PROBE_TIMEOUT_S)
            except HotlineError as exc:
                log.info(
                    "call %s: the SFU %s still cannot be joined: %s", self.call_id, spec.url, exc
                )
                return
            if self._closed or self.machine.state != CallState.ACTIVE:
                return
            # it answers: the move (if that join fails, the call is a mesh again and the
            # next try waits twice as long, up to SFU_RETRY_MAX_S)
            self._sfu_failed_at = None
            await self._sync_peers(self.machine.members)
        finally:
            self._sfu_retrying = False

    def _sfu_retry_s(self) -> float:
        return min(SFU_RETRY_S * (1 << max(self._sfu_failures - 1, 0)), SFU_RETRY_MAX_S)

    async def _sync_peers(self, members: frozenset[str]) -> None:
        async with self._lock:
            if self._wanted_topology(members) == topology.SFU and await self._sync_conference(
                members
            ):
                return
            engine = self.engine
            if isinstance(engine, ConferenceEngine) and engine.in_conference:
                # back to a mesh, make before break: the links are made below, the room is
                # left once they show every member (or MOVE_OVERLAP_MAX_S on)
                await engine.conference_members(members)
                if self.topology == topology.SFU:
                    self.topology = topology.MESH
                    self._log_event("topology", {"topology": "mesh", "members": len(members)})
                    self._on_event("topology", {"topology": "mesh", "members": len(members)})
                    self._moved(topology.MESH)
            for peer_id in list(self.peers):
                if peer_id not in members:
                    await self._close_peer(self.peers.pop(peer_id))
            for peer_id in list(self.pending):
                if peer_id not in members:
                    await self._close_peer(self.pending.pop(peer_id))
            for peer_id in list(self.liveness):
                if peer_id not in members:
                    del self.liveness[peer_id]
            for peer_id in sorted(self._media_peers - members):
                self._media_peers.discard(peer_id)
                await self.engine.peer_left(peer_id)  # its sinks stop
            for peer_id in sorted(members - {self.self_id}):
                if peer_id not in self.peers and signalling.is_offerer(self.self_id, peer_id):
                    link = await self._offer(peer_id)
                    self.peers[peer_id] = link
                    self.engine.show(link)

    def _moved(self, to: topology.Topology) -> None:
        """The call now goes ``to`` the SFU or a mesh: the old path is closed in the
        background once the new one shows a picture of each member the old one did (a
        move made meanwhile supersedes this one)."""
        self._moves += 1
        self._breaking = to
        if to == topology.SFU:
            waiting = frozenset(self.peers) & self.machine.members
        else:
            waiting = frozenset(self._others())
        # a path kept from an earlier move has counted frames already: it must show more
        base = {m: self._path_video(to, m) for m in waiting}
        task = asyncio.ensure_future(self._break_old_path(to, self._moves, base))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _move_abandoned(self) -> None:
        """The topology changed without a move (a rejoin of the room): no old path to close."""
        self._moves += 1
        self._breaking = None

    def _path_video(self, to: topology.Topology, member: str) -> tuple[object | None, int]:
        """(the new path's link to ``member``, video frames it decoded so far)."""
        engine = self.engine
        if to == topology.SFU:
            if not isinstance(engine, ConferenceEngine):
                return None, 0
            return None, engine.conference_video(member)
        link = self.peers.get(member)
        return link, (link.video_frames if link is not None else 0)

    def _new_path_shows(
        self, to: topology.Topology, member: str, base: dict[str, tuple[object | None, int]]
    ) -> bool:
        link, frames = self._path_video(to, member)
        was_link, was_frames = base.get(member, (None, 0))
        return frames > 0 and (link is not was_link or frames > was_frames)

    async def _break_old_path(
        self, to: topology.Topology, move: int, base: dict[str, tuple[object | None, int]]
    ) -> None:
        """Make before break, the second half: wait until the new path shows every member
        of ``base`` (then :data:`MOVE_GRACE_S` more: each member's own view of us is
        moving too), at most :data:`MOVE_OVERLAP_MAX_S`, then close the old path."""
        started = time.monotonic()
        missing = set(base)
        while time.monotonic() - started < MOVE_OVERLAP_MAX_S:
            if self._closed or self._moves != move:
                return
            others = self._others()
            missing = {m for m in base if m in others and not self._new_path_shows(to, m, base)}
            if not missing:
                await asyncio.sleep(MOVE_GRACE_S)
                break
            await asyncio.sleep(0.05)
        async with self._lock:
            engine = self.engine
            in_room = isinstance(engine, ConferenceEngine) and engine.in_conference
            if (
                self._closed
                or self._moves != move
                or self.topology != to
                or (to == topology.SFU and not in_room)
            ):
                return  # superseded: the call moved again, or left the room meanwhile
            self._breaking = None
            # not cut short by the call ending meanwhile: a connection is closed whole
            await asyncio.shield(self._close_old_path(to))
            detail: dict[str, Value] = {
                "topology": str(to),
                "overlap_ms": round((time.monotonic() - started) * 1000),
                "not_shown": list[Value](sorted(missing)),
            }
            if missing:
                log.warning(
                    "call %s: moved to %s before it showed %s",
                    self.call_id,
                    to,
                    ", ".join(sorted(missing)),
                )
            self.moves.append(dict(detail))
            self._log_event("old_path_closed", detail)
            self._on_event("old_path_closed", dict(detail))

    async def _close_old_path(self, to: topology.Topology) -> None:
        engine = self.engine
        if to == topology.SFU:
            await self._close_mesh()
        elif isinstance(engine, ConferenceEngine) and engine.in_conference:
            await engine.leave_conference()

    async def _offer(self, peer_id: str) -> MediaLink:
        """A new transport to ``peer_id`` and our offer for it (lock held)."""
        attempt = self._liveness(peer_id).attempted(time.monotonic())
        link = await self.engine.open_link(peer_id, offerer=True, attempt=attempt)
        self._media_peers.add(peer_id)
        try:
            sdp = await link.create_offer()
        except Exception as exc:  # engines raise their own and builtin errors
            await self._close_peer(link)
            raise SdpError(f"cannot create an offer for {peer_id}: {exc}") from exc
        await self._send_sdp(peer_id, "offer", sdp, attempt)
        return link

    # --- readiness checks --------------------------------------------------------------------

    def check_view(self, peer: str) -> dict[str, Value]:
        """This end's view of a check call with ``peer`` (integers only: it is signed)."""
        got = self.engine.received(peer)
        began = self._first_media.get(peer)
        elapsed = time.monotonic() - began if began is not None else 0.0
        # audio packets that arrived (played audio includes concealment of what did not)
        audio_in = got.audio_packets
        crypto = self.engine.crypto_stats()
        return {
            "security_code": self.security_code,
            "epoch": self.epoch,
            "charter_version": self.charter_version,
            "video_frames": got.video_frames,
            "audio_frames": audio_in,
            "video_fps": round(got.video_frames / elapsed) if elapsed > 0.5 else 0,
            "audio_fps": round(audio_in / elapsed) if elapsed > 0.5 else 0,
            "corrupt_shown": got.corrupt_shown,
            "longest_freeze_ms": got.longest_freeze_ms,
            "frames_rejected": crypto.rejected_total,
            "loopback": isinstance(self.engine, AiortcEngine) and self.engine.loopback_video,
            "loopback_audio": isinstance(self.engine, AiortcEngine) and self.engine.loopback_audio,
        }

    async def send_check_report(self, peer: str) -> None:
        self._report_sent.add(peer)
        body = encode({"call": self.call_id, "view": self.check_view(peer)})
        await self._send_one(peer, MSG_CHECK_REPORT, body)

    async def _on_check_report(self, sender: str, body: bytes) -> None:
        if self.machine.purpose != "check" or sender not in self.machine.members:
            raise CallProtocolError(f"check.report from {sender} outside a check call")
        view = expect_dict(decode(body), MSG_CHECK_REPORT).get("view")
        if not isinstance(view, dict) or len(encode(view)) > 4096:
            raise CallProtocolError("check.report: malformed view")
        self.check_reports[sender] = view
        self._log_event("check_report", {"from": sender, "view": view})
        if sender not in self._report_sent:  # the callee answers with its own view
            await self.send_check_report(sender)

    async def send_check_result(self, peer: str, record: dict[str, Value]) -> None:
        """The caller's result of this check (its call-log record), for the callee to keep."""
        await self._send_one(
            peer, MSG_CHECK_RESULT, encode({"call": self.call_id, "result": record})
        )

    def _on_check_result(self, sender: str, body: bytes) -> None:
        """The caller's verdict about the line to us: logged in our chain too (signed by
        us, as the caller's copy is by it) and handed to the terminal (``peer_check``)."""
        if (
            self.machine.purpose != "check"
            or sender not in self.machine.members
            or sender != self.machine.caller
        ):
            raise CallProtocolError(f"check.result from {sender}: not the caller of a check")
        if self._result_taken:
            raise CallProtocolError(f"check.result from {sender}: a second result")
        record = expect_dict(decode(body), MSG_CHECK_RESULT).get("result")
        if (
            not isinstance(record, dict)
            or len(encode(record)) > 8192
            or record.get("by") != sender
            or record.get("peer") != self.self_id
            or record.get("verdict") not in CHECK_VERDICTS
            or not isinstance(record.get("time"), int)
        ):
            raise CallProtocolError("check.result: malformed result")
        self._result_taken = True
        self._log_event("check_result", record)
        self._on_event("peer_check", {"record": record})

    async def _watch_transports(self, now: float) -> None:
        """Act on what liveness decides for each peer: show a loss, build a replacement,
        promote it, record a recovery, drop a peer that stayed unreachable."""
        dropped: set[str] = set()
        if self.topology == topology.SFU:  # no per-peer transports: watch each member's frames
            await self._watch_members_through_sfu(now)
            self._watch_own_upstream(now)
            return
        if (
            self._sfu_failed_at is not None
            and time.monotonic() - self._sfu_failed_at >= self._sfu_retry_s()
            and self.machine.state == CallState.ACTIVE
            and self.sfus
            and not self._sfu_retrying
        ):
            # in the background: a slow SFU must not hold up the call's clock (digests, keys)
            self._sfu_retrying = True
            task = asyncio.ensure_future(self._retry_sfu())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        async with self._lock:
            for peer_id in sorted(self._others()):
                live = self._liveness(peer_id)
                link, pending = self.peers.get(peer_id), self.pending.get(peer_id)
                if peer_id not in self._first_media and self.engine.received(peer_id).total:
                    self._first_media[peer_id] = now
                decisions = live.observe(
                    now, _view(link), _view(pending), keys_ready=self.epoch is not None
                )
                for d in decisions:
                    if d.action is Action.PROMOTE and pending is not None:
                        del self.pending[peer_id]
                        self.peers[peer_id] = pending
                        if link is not None:
                            await self._close_peer(link)
                        self.engine.show(pending)
                        link, pending = pending, None
                        self._on_event("transport_rebuilt", {"peer": peer_id})
                    elif d.action is Action.CANCEL and pending is not None:
                        await self._close_peer(self.pending.pop(peer_id))
                        pending = None
                    elif d.action is Action.LOST:
                        detail: dict[str, Value] = {"peer": peer_id, "reason": d.reason}
                        log.warning(
                            "call %s: transport to %s lost (%s)", self.call_id, peer_id, d.reason
                        )
                        self._log_event("transport_failure", detail)
                        self._on_event("transport_lost", dict(detail))
                    elif d.action is Action.RECOVERED:
                        outage_ms = round(d.outage * 1000)
                        detail = {
                            "peer": peer_id,
                            "outage_ms": outage_ms,
                            "attempts": live.attempts,
                        }
                        log.warning(
                            "call %s: transport to %s back after %d ms",
                            self.call_id,
                            peer_id,
                            outage_ms,
                        )
                        self._log_event("transport_recovered", detail)
                        self._on_event("transport_recovered", dict(detail))
                    elif d.action is Action.ATTEMPT:
                        if pending is not None:
                            await self._close_peer(self.pending.pop(peer_id))
                        try:
                            pending = self.pending[peer_id] = await self._offer(peer_id)
                        except HotlineError as exc:
                            self._reject(
                                exc.reason, f"rebuilding the transport to {peer_id}: {exc}"
                            )
                    elif d.action is Action.DROP:
                        dropped.add(peer_id)
                        detail = {"peer": peer_id, "reason": d.reason}
                        self._log_event("peer_unreachable", detail)
                        self._on_event("peer_unreachable", dict(detail))
        if dropped:
            self.machine.drop_unreachable(dropped, now)
            await self.flush()

    def _watch_own_upstream(self, now: float) -> None:
        """Our own connection to the SFU failed or closed (the SFU lost us, or the browser
        page that held it reloaded): after :data:`SFU_REJOIN_AFTER_S` the call leaves the
        room and joins it again, in the background (the keys stay; a join that fails
        makes the call a mesh, which tries the SFU again later)."""
        engine = self.engine
        if not isinstance(engine, ConferenceEngine) or self._sfu_rejoining:
            return
        if not engine.conference_broken():
            self._sfu_broken_since = None
            if self._sfu_unstable and now - self._last_rejoin_at > SFU_REJOIN_WINDOW_S:
                self._sfu_unstable = 0  # a whole window without a break: trusted again
            return
        if self._sfu_broken_since is None:
            self._sfu_broken_since = now
            return
        if now - self._sfu_broken_since < SFU_REJOIN_AFTER_S:
            return
        self._sfu_rejoining = True
        task = asyncio.ensure_future(self._rejoin_sfu(engine))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rejoin_sfu(self, engine: ConferenceEngine) -> None:
        try:
            async with self._lock:
                if self._closed or self.topology != topology.SFU or not engine.conference_broken():
                    return
                status = engine.conference_status() or {}
                detail: dict[str, Value] = {
                    "upstream": str(status.get("upstream")),
                    "why": str(status.get("broken") or f"the upstream {status.get('upstream')}"),
                }
                log.warning(
                    "call %s: the conference is broken (%s): joining the room again",
                    self.call_id,
                    detail["why"],
                )
                now = time.monotonic()
                self.sfu_rejoins += 1
                self._rejoined_at.append(now)
                self._last_rejoin_at = now
                while now - self._rejoined_at[0] > SFU_REJOIN_WINDOW_S:
                    self._rejoined_at.popleft()
                detail["rejoins"] = self.sfu_rejoins
                self._log_event("sfu_rejoin", detail)
                self._on_event("sfu_rejoin", dict(detail))
                await engine.leave_conference()
                self.topology = topology.MESH  # until the join below is done
                self._move_abandoned()
                if len(self._rejoined_at) >= SFU_REJOINS_MAX:
                    self._too_many_rejoins(now)
            if not self._closed and self.machine.state == CallState.ACTIVE:
                await self._sync_peers(self.machine.members)
        finally:
            self._sfu_broken_since = None
            self._sfu_rejoining = False

    def _too_many_rejoins(self, now: float) -> None:
        """The conference broke SFU_REJOINS_MAX times within SFU_REJOIN_WINDOW_S: a mesh
        until the SFU retry, which waits twice as long each time this happens again."""
        self._rejoined_at.clear()
        self._sfu_unstable += 1
        self._sfu_failed_at = now
        self._sfu_failures = self._sfu_unstable
        retry = round(self._sfu_retry_s())
        url = self.sfus[0].url if self.sfus else ""
        detail: dict[str, Value] = {
            "url": url,
            "reason": "unstable",
            "members": len(self.machine.members),
            "retry_s": retry,
        }
        log.warning(
            "call %s: the conference through %s broke %d times in %d s: a mesh until a retry "
            "in %d s",
            self.call_id,
            url,
            SFU_REJOINS_MAX,
            round(SFU_REJOIN_WINDOW_S),
            retry,
        )
        self._log_event("sfu_failure", {"url": url, "reason": "unstable"})
        self._on_event("sfu_unreachable", dict(detail))

    async def _watch_members_through_sfu(self, now: float) -> None:
        """Through the SFU a member is reachable while frames under its KIDs arrive (an SFU
        may stop forwarding one member's feed and no other): the same liveness rules as a
        mesh transport, fed by the frames the frame crypto accepted from each member."""
        by_sender = self.engine.crypto_stats().unprotected_by_sender
        dropped: set[str] = set()
        for peer_id in sorted(self._others()):
            if peer_id not in self._first_media and self.engine.received(peer_id).total:
                self._first_media[peer_id] = now
            live = self.sfu_liveness.get(peer_id)
            if live is None:
                live = self.sfu_liveness[peer_id] = PeerLiveness(
                    offerer=False, settings=self._media.liveness
                )
            view = LinkView(
                created=self._sfu_since, state="connected", media_total=by_sender.get(peer_id, 0)
            )
            for d in live.observe(now, view, None, keys_ready=self.epoch is not None):
                detail: dict[str, Value] = {"peer": peer_id, "via": "sfu"}
                if d.action is Action.LOST:
                    detail["reason"] = d.reason
                    log.warning(
                        "call %s: no frames from %s through the SFU (%s)",
                        self.call_id,
                        peer_id,
                        d.reason,
                    )
                    self._log_event("transport_failure", detail)
                    self._on_event("transport_lost", dict(detail))
                elif d.action is Action.RECOVERED:
                    detail["outage_ms"] = round(d.outage * 1000)
                    self._log_event("transport_recovered", detail)
                    self._on_event("transport_recovered", dict(detail))
                elif d.action is Action.DROP:
                    dropped.add(peer_id)
                    detail["reason"] = d.reason
                    self._log_event("peer_unreachable", detail)
                    self._on_event("peer_unreachable", dict(detail))
        if dropped:
            self.machine.drop_unreachable(dropped, now)
            await self.flush()

    async def _send_sdp(self, peer_id: str, kind: str, sdp: str, attempt: int) -> None:
        message = signalling.make_sdp_message(self.call_id, kind, sdp, attempt)
        await self._send_one(peer_id, MSG_SDP, message.encode())

    async def _on_sdp(self, sender: str, body: bytes) -> None:
        message = signalling.parse_sdp_message(body)
        if sender not in self.machine.members or self.machine.state != CallState.ACTIVE:
            raise CallProtocolError(f"call.sdp from {sender}, not a member of the active call")
        signalling.check_binding(message)
        attempt = message.attempt
        async with self._lock:
            # judged once the lock is ours: a move back to a mesh queued before this offer
            # has made the call a mesh by now (its links are made while it leaves the room)
            if self.topology == topology.SFU:
                raise CallProtocolError(f"call.sdp from {sender} in a call through the SFU")
            if message.kind == "offer":
                await self._answer_offer(sender, message.sdp, attempt)
                return
            link = next(
                (
                    candidate
                    for candidate in (self.pending.get(sender), self.peers.get(sender))
                    if candidate is not None and candidate.attempt == attempt
                ),
                None,
            )
            if link is None or not link.offerer or not link.awaiting_answer():
                raise CallProtocolError(
                    f"answer from {sender} (attempt {attempt}) without an open offer of ours"
                )
            try:
                await link.apply_answer(message.sdp)
            except Exception as exc:  # aiortc raises ValueError, KeyError, InvalidStateError
                link.state = "failed"  # liveness replaces it
                raise SdpError(f"answer from {sender} refused by the media engine: {exc}") from exc

    async def _answer_offer(self, sender: str, sdp: str, attempt: int) -> None:
        """An offer from ``sender``: the first builds the transport; a later one (a rebuild)
        builds a replacement beside the current transport, promoted once it connects."""
        if signalling.is_offerer(self.self_id, sender):
            raise CallProtocolError(f"offer from {sender}, but we are the offerer")
        live = self._liveness(sender)
        if attempt <= live.attempts:
            raise CallProtocolError(
                f"offer from {sender} for attempt {attempt}, older than attempt {live.attempts}"
            )
        live.attempts = attempt
        link = await self.engine.open_link(sender, offerer=False, attempt=attempt)
        self._media_peers.add(sender)
        try:
            answer = await link.accept_offer(sdp)
        except Exception as exc:  # aiortc raises ValueError, KeyError, InvalidStateError
            await self._close_peer(link)
            raise SdpError(f"offer from {sender} refused by the media engine: {exc}") from exc
        if sender in self.peers:
            old_pending = self.pending.pop(sender, None)
            if old_pending is not None:
                await self._close_peer(old_pending)
            self.pending[sender] = link
        else:
            self.peers[sender] = link
            self.engine.show(link)
        await self._send_sdp(sender, "answer", answer, attempt)

    async def _send_summaries(self) -> None:
        """Sign the call summary for every member we shared an epoch with, and send it."""
        for peer_id in sorted(self.ever_members - {self.self_id}):
            summary, signature = self._log.sign_summary(self.call_id, peer_id, self._wall())
            body = encode({"call": self.call_id, "summary": summary, "signature": signature})
            await self._send(peer_id, MSG_SUMMARY, body)

    def _on_summary(self, sender: str, body: bytes) -> None:
        fields = expect_dict(decode(body), MSG_SUMMARY)
        summary, signature = fields.get("summary"), fields.get("signature")
        if not isinstance(summary, bytes) or not isinstance(signature, bytes):
            raise CallProtocolError("call.summary: malformed body")
        if sender not in self.ever_members:
            raise CallProtocolError(f"call.summary from {sender}, never a member of this call")
        key = self.directory.get(sender)
        if key is None:
            raise CallProtocolError(f"call.summary from {sender}, not in the charter")
        self._log.add_cosignature(self.call_id, sender, key, summary, signature, self._wall())
        self.cosigned.add(sender)
        self._on_event("cosigned", {"by": sender})

    async def _close_peer(self, link: MediaLink) -> None:
        await self.engine.close_link(link)

    async def close(self) -> None:
        """Close every peer connection and log the statistics summary (once)."""
        if self._closed:
            return
        self._closed = True
        for task in self._background:
            task.cancel()
        for link in [*self.peers.values(), *self.pending.values()]:
            await self._close_peer(link)
        self.peers.clear()
        self.pending.clear()
        await self.engine.close()
        self._log_event("stats_summary", self.stats_summary())

    # --- bookkeeping ---------------------------------------------------------------------------

    def _send_key_withheld(self, now: float) -> None:
        """The engine's page took over mid-call and got no send key (it would reuse frame
        counters): count it, say why, and have the key session start a new epoch."""
        sink = self.engine.key_sink
        if not getattr(sink, "new_epoch_wanted", False):
            return
        sink.new_epoch_wanted = False  # type: ignore[attr-defined]
        when = self.keys.rekey_soon(now, "the page took over mid-call")
        self._reject(
            "page_send_key_withheld",
            "the send key to the page that took over mid-call: it sends nothing until a new"
            f" epoch ({SEND_RESUMES[when]})",
        )
        self._on_event(
            "e2ee_sending_paused",
            {"reason": "the page took over mid-call", "resumes": SEND_RESUMES[when]},
        )

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("call %s: refused %s", self.call_id, detail)
        self._on_event("rejected", {"reason": reason, "detail": detail})

    def _line_facts(self) -> dict[str, Value]:
        return {"line_id": self.line_id, "charter_version": self.charter_version}

    def _log_event(self, event: str, payload: dict[str, Value]) -> None:
        self._log.append(self.call_id, event, payload, self._wall())

    def _on_frame_event(self, event: FrameEvent) -> None:
        """A frame refused by the media seam (on the event loop): counted by the seam's
        stats; surfaced here, without contents."""
        if event.direction != "recv":
            return  # frames we may not send yet (no key) are counted in the stats only
        now = time.monotonic()
        if now - self._last_frame_event.get(event.reason, -10.0) >= 1.0:  # at most 1/s/reason
            self._last_frame_event[event.reason] = now
            self._on_event("frame_rejected", {"media": event.kind, "reason": event.reason})

    async def stats(self, *, media: bool = True) -> dict[str, Any]:
        """The call's state, keys and (``media=True``) sampled media statistics."""
        snapshot = await self.engine.snapshot() if media else {"frames": {}, "peers": {}}
        now = time.monotonic()
        crypto = self.engine.crypto_stats()
        return {
            "call": self.call_id,
            "state": str(self.machine.state),
            "purpose": self.machine.purpose,
            "end_reason": self.machine.end_reason,
            "members": sorted(self.machine.members),
            "epoch": self.epoch,
            "epochs": [e["epoch"] for e in self.epochs],
            "security_code": self.security_code,
            "active_s": None if self.active_since is None else now - self.active_since,
            "epoch_age_s": None if self._epoch_at is None else now - self._epoch_at,
            "e2ee": {
                "kem": self.keys.kem,
                "suite": crypto.sending_suite,
                "sending_epoch": crypto.sending_epoch,
                "receive_epochs": list(crypto.receive_epochs),
                "protected": crypto.protected,
                "unprotected": crypto.unprotected,
                "rejected": dict(crypto.rejected),
                "refused": dict(crypto.refused),
                "key_messages_rejected": dict(self.keys.rejections),
                "unprotected_by_sender": dict(crypto.unprotected_by_sender),
                "frame_digests": self.frame_auth.stats(),
                "frame_alarms": list(self.frame_alarms),
            },
            "frames": snapshot["frames"],
            "peers": {
                peer: {**self._transport_status(peer), **snapshot["peers"].get(peer, {})}
                for peer in sorted(self._others() | set(snapshot["peers"]))
            },
            "rejected": dict(self.rejected),
            "cosigned": sorted(self.cosigned),
            "topology": self.topology,
            "moves": list(self.moves),
            "sfu_rejoins": self.sfu_rejoins,
            "sfu": (
                self.engine.conference_status()
                if isinstance(self.engine, ConferenceEngine)
                else None
            ),
        }

    def _transport_status(self, peer: str) -> dict[str, Any]:
        """What a person reads about the path to ``peer``: connected, or reconnecting since."""
        link, live = self.peers.get(peer), self.liveness.get(peer)
        if self.topology == topology.SFU:
            member = self.sfu_liveness.get(peer)
            lost = None if member is None or member.lost_since is None else member.lost_since
            return {
                "transport": "sfu" if lost is None else "reconnecting",
                "quality": [],
                "reachable": lost is None,
                "lost_reason": None if member is None else member.lost_reason or None,
            }
        out: dict[str, Any] = {
            "transport": (
                link.state
                if link is not None
                else "reconnecting"
                if live is not None and live.lost_since is not None
                else "closed"
            ),
            "quality": self.quality.get(peer, []),
        }
        if live is not None:
            lost_for = None if live.lost_since is None else time.monotonic() - live.lost_since
            out.update(
                {
                    "reachable": lost_for is None,
                    "reconnecting_since": None if lost_for is None else time.time() - lost_for,
                    "lost_reason": live.lost_reason or None,
                    "outages": live.outages,
                    "attempts": live.attempts,
                    "rebuilding": peer in self.pending,
                }
            )
            if lost_for is not None:
                out["transport"] = "reconnecting"
        return out

    def stats_summary(self) -> dict[str, Value]:
        crypto = self.engine.crypto_stats()
        return {
            "frames_protected": crypto.protected,
            "frames_decrypted": crypto.unprotected,
            "frames_rejected": crypto.rejected_total,
            "epochs": list[Value](e["epoch"] for e in self.epochs),
        }


def new_call_id(rng: Callable[[int], bytes]) -> str:
    return "call-" + rng(8).hex()
