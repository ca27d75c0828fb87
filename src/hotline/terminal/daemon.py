"""The terminal daemon: holds the identity key, keeps the exchange connection, runs calls.

One process per terminal. It connects to the exchange (reconnecting with backoff), admits
only charters that verify and are not older than one it has seen (``CharterStore``), runs at
most one call at a time, appends every call event to its call log, and exposes a small
control API on 127.0.0.1 (see ``terminal.control``) that the CLI and the demo use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shlex
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline import ids
from hotline.call.machine import PURPOSE_CALL, PURPOSE_CHECK, CallState
from hotline.call.media_engine import EngineFactory
from hotline.call.session import CallSession, MediaSettings, new_call_id
from hotline.calllog import CallLog, log_path
from hotline.calllog.rollup import Retention, history_rows, roll_up
from hotline.charter import CharterStore, SignedCharter
from hotline.check.clock import SYSTEM_CLOCK, Clock
from hotline.check.expiry import (
    ExpiryItem,
    ExpirySettings,
    ExpiryWatch,
    charter_item,
    key_age_item,
    next_expiry,
    tls_item,
    turn_item,
)
from hotline.check.metrics import Measurement
from hotline.check.probe import DEFAULT_SECONDS, run_check
from hotline.check.schedule import Alarm, ReadinessSchedule
from hotline.encoding import decode, encode, expect_dict
from hotline.envelope import Envelope
from hotline.errors import ExchangeUnavailable, HotlineError, StateError, UsageError
from hotline.exchange.client import (
    CharterUpdated,
    ClientState,
    ConnectionChanged,
    EnvelopeReceived,
    EnvelopeRejected,
    ExchangeClient,
    PresenceChanged,
    Refusal,
)
from hotline.keys import SigningKey
from hotline.logs import event
from hotline.media.sources import open_source
from hotline.media.turn import SharedSecretCredentials
from hotline.ratelog import LogGate, clip
from hotline.terminal.config import TerminalConfig
from hotline.terminal.dispatch import MSG_RING, CurrentCall, Route, dispatch
from hotline.terminal.metrics import readiness
from hotline.ui.browser_engine import BrowserHub, browser_engine_factory

log = logging.getLogger("hotline.terminal")

#: sources of a measuring terminal, whose calls ``--capture-audio`` may always record
CAPTURE_SOURCES = ("synthetic", "file")


def capture_allowed(source: str, recording_allowed: bool) -> bool:
    """``--capture-audio`` is for measuring: a terminal sending synthetic or file media, or
    any terminal when the charter's policy allows recording. (What the *other* side sends
    cannot be checked from here: the charter's policy is what binds both.)"""
    return recording_allowed or source.split(":", 1)[0] in CAPTURE_SOURCES


TICK_S = 0.1
CLIENT_STATE_FILE = "exchange-client.json"
#: at shutdown, how long the last messages (a hang-up) may take to leave, and tasks to end
STOP_FLUSH_S = 3.0
EVENT_HISTORY = 500
#: readiness results kept in memory (all of them stay in the call log)
CHECK_HISTORY = 200
#: a check due during a real call is tried again this much later
CHECK_POSTPONE_S = 60.0
HOOK_TIMEOUT_S = 30.0
#: how often (readiness clock) expiries are reviewed and due rollups written
HOUSEKEEPING_S = 60.0
LIVE_STATES = frozenset({CallState.OUTGOING, CallState.INCOMING, CallState.ACTIVE})
#: messages for an ended call that need no answer (the summary is exchanged after the end)
#: event kinds the exchange or the network can trigger without any member's signature
EXCHANGE_EVENT_KINDS = frozenset({"rejected", "frame_rejected", "presence", "exchange"})
#: distinct refusal reasons counted by name; beyond, they are counted as "other"
MAX_REJECTION_REASONS = 128
ENDED_CALL_TRAFFIC_OK = frozenset({"call.leave", "call.decline", "call.summary"})
LEFT_REPLIED_MAX = 256


@dataclass
class DaemonConfig:
    terminal_dir: Path
    charter: SignedCharter
    exchange_url: str
    identity_key: SigningKey
    terminal_id: str
    tls_fingerprint: str | None = None
    #: further exchanges to fail over to, in order: (url, pinned TLS fingerprint)
    exchange_fallbacks: tuple[tuple[str, str | None], ...] = ()
    auto_answer: bool = False
    media: MediaSettings = field(default_factory=MediaSettings)
    state_dir: Path | None = None
    #: where ICE gathers host candidates: "loopback" (127.0.0.1 only) or "all"
    interfaces: str = "loopback"
    #: run readiness checks on the charter's schedule (the lower id of each pair calls)
    scheduled_checks: bool = True
    #: a command run when a check alarms (the alarm as JSON in $HOTLINE_ALARM)
    alarm_hook: str | None = None
    #: the site-local configuration (TURN credentials), applied to each charter adopted
    site: TerminalConfig = field(default_factory=TerminalConfig)
    #: the media engine: "aiortc" (in this process) or "browser" (the open UI page)
    engine: str = "aiortc"
    #: the readiness regime's clock: schedule, check history, alarms, expiry (tests compress it)
    clock: Clock = SYSTEM_CLOCK
    #: how far ahead expiries are warned, and the identity key's maximum age
    expiry: ExpirySettings = field(default_factory=ExpirySettings)
    #: how long individual check results and daily summaries are kept in the call log
    retention: Retention = field(default_factory=Retention)
    #: when the identity key was made (its file's modification time), for its age
    identity_key_created: float | None = None

    @property
    def state(self) -> Path:
        return self.state_dir or self.terminal_dir / "state"


class TerminalDaemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.clock = config.clock
        state = config.state
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.charters = CharterStore(state / "charters.sqlite")
        self.charter = self.charters.accept(config.charter)
        self.terminal_id = config.terminal_id
        self.terminal = self.charter.charter.terminal(self.terminal_id)
        self.call_log = CallLog.open(
            log_path(config.terminal_dir), self.terminal_id, config.identity_key
        )
        self._client_state_path = state / CLIENT_STATE_FILE
        self.client = ExchangeClient(
            config.exchange_url,
            state=load_client_state(self._client_state_path),
            charter=self.charter,
            terminal_id=self.terminal_id,
            key=config.identity_key,
            tls_fingerprint=config.tls_fingerprint,
            fallbacks=config.exchange_fallbacks,
            accept_charter=self.charters.accept,
        )
        media = config.media
        # opened once: every call of this terminal sends from the same source
        self.source = open_source(
            media.source,
            name=self.terminal.name,
            width=media.width,
            height=media.height,
            fps=media.fps,
        )
        self.call: CallSession | None = None
        #: every call id this terminal has taken part in: an old ring is never a new call
        self._known_calls: set[str] = set(self.call_log.calls())
        self.past_calls: list[dict[str, Any]] = []
        #: the terminal's own events (calls, keys, charters): nothing the exchange can
        #: trigger on its own lands here, so it cannot flush them
        self._history: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        #: events the exchange (or the network) can trigger at will: refusals, presence,
        #: connection changes; bounded and rate-limited per reason on their own
        self._exchange_history: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        self._event_seq = 0
        #: live followers of the event stream (control API, web UI); each gets every event
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.rejected: dict[str, int] = {}
        self._refusal_gate = LogGate()
        #: the last ring this terminal took, with its age when it arrived
        self.last_ring: dict[str, Any] | None = None
        #: (call, sender) already answered with a leave for a call that has ended
        self._left_replied: dict[tuple[str, str], None] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        #: the UI page that is the media engine (``--engine browser``), set by the server
        self.browser_hub: BrowserHub | None = None
        self._exchange_reason = "connecting"
        self._exchange_since = time.time()
        self.readiness = ReadinessSchedule(
            self.terminal_id, float(self.charter.charter.policy.readiness_interval_s)
        )
        #: readiness results, newest last: from the call log at start, then as they come
        self.checks: deque[dict[str, Any]] = deque(maxlen=CHECK_HISTORY)
        #: daily and monthly summaries of older results (``calllog.rollup``), by entry
        self.rollups: dict[int, list[dict[str, Any]]] = {}
        self._load_checks()
        self._check_task: asyncio.Task[Any] | None = None
        self._hooks: set[asyncio.Task[None]] = set()
        #: since start, for the metrics: calls by (purpose, direction), checks by verdict
        self.call_counts: dict[tuple[str, str], int] = {}
        self.check_counts: dict[str, int] = {}
        self.expiry = ExpiryWatch(config.expiry)
        self._housekeeping_at: float | None = None
        self._rolled_up_day: int | None = None
        #: when the running call's relay credentials were made (for their expiry)
        self._call_started: float | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # without the exchange the terminal still starts, keeps trying in the background and
        # says "exchange unreachable"; calls already running go on peer to peer
        await self.client.start(require_connection=False)
        self._tasks.append(asyncio.create_task(self._pump_exchange()))
        self._tasks.append(asyncio.create_task(self._tick()))
        self._tasks.append(asyncio.create_task(self._digest_tick()))
        self.emit("started", {"terminal": self.terminal_id})

    async def stop(self) -> None:
        """Hang up, let the last messages leave, close the exchange connection, end tasks.

        The exchange client is closed first so that the pump ends on its own (next_event
        raises once the client is closed); cancellation is only the fallback, and nothing
        waits on a task for more than a few seconds.
        """
        self._stopping = True
        for queue in list(self._subscribers):  # followers' streams end
            self._subscribers.discard(queue)
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self.call is not None and self.call.machine.state.value not in ("ended", "idle"):
            with contextlib.suppress(HotlineError):
                await self.call.hangup("terminal shutting down")
        deadline = time.monotonic() + STOP_FLUSH_S
        while self.client.outbox_size and self.client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.client.close()
        save_client_state(self._client_state_path, self.client.state)
        for task in self._tasks:
            task.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=STOP_FLUSH_S)
        for task in pending:
            log.warning("task %s did not end at shutdown", task.get_name())
        if self.call is not None:
            await self.call.close()
        self.source.stop()
        self.call_log.close()

    # --- events for the control API --------------------------------------------------------

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self._event_seq += 1
        record = {**data, "seq": self._event_seq, "time": self.clock.time(), "kind": kind}
        history = self._exchange_history if kind in EXCHANGE_EVENT_KINDS else self._history
        history.append(record)
        log.info("%s %s", kind, data, extra=event(kind, **data))
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:  # a follower that stopped reading: its stream ends
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Both histories, in order."""
        return sorted((*self._history, *self._exchange_history), key=lambda e: int(e["seq"]))

    def events_since(self, seq: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["seq"] > seq]

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue that receives every event from now on; ``None`` ends the stream (the
        follower fell too far behind, or the terminal stops). Pair with :meth:`unsubscribe`."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=EVENT_HISTORY)
        if self._stopping:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    # --- commands ----------------------------------------------------------------------------

    def _engine_for(self, call_id: str) -> EngineFactory | None:
        """The media engine of a new call: the page's with ``--engine browser``."""
        if self.config.engine != "browser":
            return None
        if self.browser_hub is None:
            raise StateError("--engine browser needs the UI (--ui)")
        return browser_engine_factory(self.browser_hub, call_id, self.config.media.ice)

    def _new_session(self, call_id: str) -> CallSession:
        charter = self.charter.charter
        directory = {t.terminal_id: t.identity_key for t in charter.terminals}
        media = self.config.media
        if media.capture_audio is not None and not capture_allowed(
            media.source, charter.policy.recording_allowed
        ):
            log.warning("the charter does not allow recording: this call's audio is not captured")
            media = dataclasses.replace(media, capture_audio=None)
        return CallSession(
            call_id=call_id,
            line_id=charter.line_id,
            charter_version=charter.version,
            self_id=self.terminal_id,
            self_name=self.terminal.name,
            identity_key=self.config.identity_key,
            directory=directory,
            kem=charter.policy.kem,
            suite=charter.policy.cipher_suite,
            max_participants=charter.policy.max_participants,
            rekey_interval_s=float(charter.policy.rekey_interval_s),
            send=self._send,
            call_log=self.call_log,
            media=dataclasses.replace(
                media,
                liveness=dataclasses.replace(
                    media.liveness, peer_timeout=float(charter.policy.peer_timeout_s)
                ),
            ),
            source=self.source,
            on_event=self._on_call_event,
            engine=self._engine_for(call_id),
            sfus=charter.sfus,
            mesh_limit=charter.policy.mesh_limit,
            thresholds=charter.policy.check_thresholds,
            wall_clock=self.clock.time,
        )

    @property
    def busy(self) -> bool:
        return self._busy()

    def _busy(self) -> bool:
        """Ringing, being rung or in a call (a refused ring leaves nothing behind)."""
        return self.call is not None and self.call.machine.state in LIVE_STATES

    async def dial(self, target: str, purpose: str = PURPOSE_CALL) -> str:
        if self._busy():
            raise StateError("already in a call; hang up first")
        self.charter.charter.terminal(target)  # raises UnknownMember
        if target == self.terminal_id:
            raise UsageError("a terminal cannot call itself")
        if not self.client.connected:
            raise ExchangeUnavailable("not connected to the exchange: the call cannot be placed")
        if self.config.engine == "browser" and not (
            self.browser_hub and self.browser_hub.connected
        ):
            raise StateError("no page is open as this terminal's media engine (open the UI link)")
        self._archive()
        call = self._new_session(new_call_id(os.urandom))
        self.call = call
        self._call_started = self.clock.time()
        self._known_calls.add(call.call_id)
        self.emit("dialing", {"call": call.call_id, "target": target, "purpose": purpose})
        self._count_call(purpose, "outgoing")
        try:
            await call.dial(target, purpose)
        finally:
            if call.machine.state == CallState.IDLE:  # the ring never left
                self.call = None
        return call.call_id

    async def answer(self) -> None:
        await self._require_call().answer()

    async def decline(self) -> None:
        await self._require_call().decline()

    async def hangup(self) -> None:
        await self._require_call().hangup()

    async def invite(self, target: str) -> None:
        self.charter.charter.terminal(target)
        call = self._require_call()
        limit = self.charter.charter.policy.max_participants
        if len(call.machine.members) + len(call.machine.pending) >= limit:
            raise StateError(f"the charter allows at most {limit} terminals in a call")
        await call.invite(target)

    def _require_call(self) -> CallSession:
        if self.call is None:
            raise StateError("no call is ringing or running on this terminal")
        return self.call

    def _archive(self) -> None:
        if self.call is not None:
            machine = self.call.machine
            self.past_calls.append(
                {"call": self.call.call_id, "end": machine.end_reason, "purpose": machine.purpose}
            )
            self.call = None

    # --- exchange ----------------------------------------------------------------------------

    async def _send(self, recipient: str, msg_type: str, body: bytes) -> None:
        await self.client.send(recipient, msg_type, body)

    async def _pump_exchange(self) -> None:
        while not self._stopping:
            try:
                event = await self.client.next_event()
            except StateError:
                return  # the client was closed: we are stopping
            try:
                await self._on_exchange_event(event)
            except HotlineError as exc:
                self._count_rejection(exc.reason, str(exc))
            except Exception:  # a bug must not leave the terminal deaf to the exchange
                log.exception("internal error handling an exchange event")
                self._count_rejection("internal", "internal error handling an exchange event")

    async def _on_exchange_event(self, event: object) -> None:
        if isinstance(event, EnvelopeReceived):
            await self._on_envelope(event.envelope)
        elif isinstance(event, PresenceChanged):
            self.emit("presence", {"online": sorted(event.online)})
        elif isinstance(event, CharterUpdated):
            await self._adopt_charter(event.charter)  # accepted by the store already
        elif isinstance(event, EnvelopeRejected):
            what = "our charter" if event.seq is None else f"our envelope {event.seq}"
            self._count_rejection(f"exchange_{event.reason}", f"the exchange refused {what}")
        elif isinstance(event, Refusal):  # a delivery, a charter, or the exchange itself
            self._count_rejection(event.reason, event.detail)
        elif isinstance(event, ConnectionChanged):
            self._exchange_reason = event.reason
            self._exchange_since = time.time()
            self.emit(
                "exchange",
                {"connected": event.connected, "reason": event.reason, "url": self.client.url},
            )
            if event.reason == "duplicate_terminal":  # another copy of this terminal runs
                self._count_rejection(event.reason, "another copy of this terminal is running")

    async def _on_envelope(self, env: Envelope) -> None:
        """One verified envelope: ``terminal.dispatch`` decides, this acts."""
        call_id = _call_id_of(env.body)
        age_s = max(0.0, time.time() - env.timestamp_ms / 1000)
        members, purpose = 0, PURPOSE_CALL
        if env.msg_type == MSG_RING:
            members, purpose = _ring_facts(env.body)
        current = None
        if self.call is not None:
            state = self.call.machine.state
            current = CurrentCall(
                self.call.call_id, state in LIVE_STATES, state == CallState.ENDED,
                self.call.machine.purpose,
            )  # fmt: skip
        decision = dispatch(
            msg_type=env.msg_type,
            sender=env.sender,
            call_id=call_id,
            age_s=age_s,
            ring_members=members,
            ring_purpose=purpose,
            current=current,
            known_calls=self._known_calls,
            max_participants=self.charter.charter.policy.max_participants,
        )
        route = decision.route
        if route is Route.REFUSE:
            if decision.reason == "stale_ring":
                self._known_calls.add(call_id)
            self._count_rejection(decision.reason, decision.detail)
        elif route is Route.DECLINE:
            await self._decline(env.sender, call_id, decision.reason)
        elif route is Route.LEAVE_ENDED:
            await self._leave_ended(env.sender, call_id, env.msg_type)
            self._count_rejection(decision.reason, decision.detail)
        elif route in (Route.NEW_CALL, Route.PREEMPT):
            if route is Route.PREEMPT and self.call is not None:
                self.emit("check_preempted", {"call": self.call.call_id, "by": env.sender})
                await self.call.hangup("pre-empted by a call")
            await self._take_ring(env, call_id, age_s)
        else:
            assert self.call is not None
            if route is Route.TO_ENDED:
                await self._leave_ended(env.sender, call_id, env.msg_type)
            await self.call.receive(env.sender, env.msg_type, env.body)

    async def _take_ring(self, env: Envelope, call_id: str, age_s: float) -> None:
        self._archive()
        call = self._new_session(call_id)
        await call.receive(env.sender, env.msg_type, env.body)
        if call.machine.state != CallState.INCOMING:
            for reason, count in call.rejected.items():  # refused: no call remains
                self.rejected[reason] = self.rejected.get(reason, 0) + count
            return
        self.call = call
        self._call_started = self.clock.time()
        self._known_calls.add(call_id)
        purpose = call.machine.purpose
        self._count_call(purpose, "incoming")
        self.last_ring = {
            "call": call_id,
            "from": env.sender,
            "age_s": round(age_s, 1),
            "purpose": purpose,
        }
        self.emit("ring", self.last_ring)
        # a readiness check is answered by the terminal itself: it never rings a person
        if self.config.auto_answer or purpose == PURPOSE_CHECK:
            await call.answer()

    async def install_charter(self, signed: SignedCharter) -> None:
        """A newer charter from this terminal's operator: keep it (refusing an older one),
        give it to the exchange, which hands it to every online terminal, and apply it."""
        accepted = self.charters.accept(signed)
        await self.client.update_charter(accepted)
        await self._adopt_charter(accepted)

    async def _adopt_charter(self, signed: SignedCharter) -> None:
        """Use a verified, accepted charter from now on; a running call drops every terminal
        it no longer lists (or ends, if that is us)."""
        self.charter = signed
        charter = signed.charter
        self.emit("charter", {"version": charter.version})
        # its relays and relay-only policy for every peer connection built from now on
        self.config.media.ice = self.config.site.ice_settings(charter, strict=False)
        if self.call is not None:
            directory = {t.terminal_id: t.identity_key for t in charter.terminals}
            policy = charter.policy
            self.call.thresholds = policy.check_thresholds
            await self.call.on_charter(
                directory,
                charter.version,
                kem=policy.kem,
                suite=policy.cipher_suite,
                max_participants=policy.max_participants,
                sfus=charter.sfus,
                mesh_limit=policy.mesh_limit,
            )

    async def _decline(self, caller: str, call_id: str, reason: str) -> None:
        await self._send(caller, "call.decline", encode({"call": call_id, "reason": reason}))
        self.emit("declined", {"call": call_id, "by": self.terminal_id, "reason": reason})

    async def _leave_ended(self, sender: str, call_id: str, msg_type: str) -> None:
        """Traffic for a call this terminal has left (a phantom: a ring the exchange
        released late and another terminal answered): answer it with a leave, once per
        call and sender, so that the other side's call ends at once."""
        if msg_type in ENDED_CALL_TRAFFIC_OK or (call_id, sender) in self._left_replied:
            return
        self._left_replied[(call_id, sender)] = None
        while len(self._left_replied) > LEFT_REPLIED_MAX:
            del self._left_replied[next(iter(self._left_replied))]
        self.emit("ended_call_traffic", {"call": call_id, "from": sender, "type": msg_type})
        body = encode({"call": call_id, "reason": "this call has ended"})
        with contextlib.suppress(HotlineError):
            await self._send(sender, "call.leave", body)

    def _count_call(self, purpose: str, direction: str) -> None:
        key = (purpose, direction)
        self.call_counts[key] = self.call_counts.get(key, 0) + 1

    @property
    def running(self) -> bool:
        """The terminal's own tasks (exchange pump, clock) still run (``/livez``)."""
        return bool(self._tasks) and not self._stopping and all(not t.done() for t in self._tasks)

    @property
    def exchange_reason(self) -> str:
        """Why the exchange connection is in its state (the client's last reason)."""
        return self._exchange_reason

    def count_control_refusal(self, reason: str) -> None:
        """A control API request refused before any handler: not from the operator's tools
        (``not_local``) or malformed HTTP. Logged (rate-limited) by the control API."""
        key = f"control_{reason}"
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def _count_rejection(self, reason: str, detail: str) -> None:
        """Count a refusal exactly; log it and report it as an event at most once a second
        per reason (the next line says how many were held back). Reasons come from a
        fixed set (ours, or the exchange's mapped by ``frames.known_reason``); a map of
        them is capped all the same."""
        reason = clip(reason, 64)
        if reason not in self.rejected and len(self.rejected) >= MAX_REJECTION_REASONS:
            reason = "other"
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        now, held = self._refusal_gate.allow(reason)
        if not now:
            return
        detail = clip(detail)
        more = f" (and {held} more since the last line)" if held else ""
        log.warning(
            "refused (%s): %s%s",
            reason,
            detail,
            more,
            extra=event("refused", reason=reason, held_back=held),
        )
        self.emit("rejected", {"reason": reason, "detail": detail, "held_back": held})

    # --- readiness checks ----------------------------------------------------------------

    async def check(self, target: str, seconds: float = DEFAULT_SECONDS) -> dict[str, Any]:
        """Run one readiness check now (the CLI's `hotline check`); returns its result."""
        self.charter.charter.terminal(target)  # raises UnknownMember
        if target == self.terminal_id:
            raise UsageError("a terminal cannot check the line to itself")
        if self._check_task is not None and not self._check_task.done():
            raise StateError("a readiness check is already running")
        self._check_task = asyncio.ensure_future(run_check(self, target, seconds=seconds))
        result: Measurement = await asyncio.shield(self._check_task)
        return dict(result.to_value())

    def check_record(self, m: Measurement, wall: float) -> dict[str, Any]:
        """A check's record as both call logs keep it."""
        return {**m.to_value(), "time": int(wall), "by": self.terminal_id}

    def _on_call_event(self, kind: str, data: dict[str, Any]) -> None:
        """A call's event; the caller's result of a check it made to us joins our history."""
        if kind == "peer_check":
            record = dict(data["record"])
            self.checks.append(record)
            by = record.get("by")
            reasons = [str(r) for r in record.get("reasons") or []]
            self.emit("check", {"peer": by, "by": by, "verdict": record.get("verdict"),
                                "reasons": reasons})  # fmt: skip
            if isinstance(by, str) and by != self.terminal_id:
                alarm = self.readiness.checked_by(
                    by,
                    self.clock.monotonic(),
                    str(record.get("verdict")),
                    "; ".join(reasons),
                    self.clock.time(),
                )
                if alarm is not None:
                    self._readiness_alarm(alarm)
            return
        self.emit(kind, data)

    def record_check(
        self, m: Measurement, wall: float | None = None, call_id: str | None = None
    ) -> None:
        """Keep a finished check: call log (hash-chained, signed), history, schedule, alarm.
        ``call_id``: the check's call, if it got as far as dialling (else a result of its
        own: each result stays with its call, which is what rollups replace as a whole)."""
        wall = self.clock.time() if wall is None else wall
        record = self.check_record(m, wall)
        self.call_log.append(
            call_id or f"check-{os.urandom(8).hex()}", "check_result", record, wall
        )
        self.checks.append(record)
        self.check_counts[m.verdict] = self.check_counts.get(m.verdict, 0) + 1
        self.emit("check", {"peer": m.peer, "verdict": m.verdict, "reasons": list(m.reasons)})
        alarm = self.readiness.done(
            m.peer, self.clock.monotonic(), m.verdict, "; ".join(m.reasons), wall
        )
        if alarm is not None:
            self._readiness_alarm(alarm)

    def _readiness_alarm(self, alarm: Alarm) -> None:
        log.warning("readiness alarm: line to %s is red: %s", alarm.peer, alarm.reason)
        self._raise_alarm(
            {"peer": alarm.peer, "since": alarm.since, "reason": alarm.reason,
             "count": alarm.count}
        )  # fmt: skip

    def _watch_callers(self) -> None:
        """A missed check from a peer that calls this terminal is an alarm here too."""
        if not self.config.scheduled_checks or self._stopping:
            return
        ids = [t.terminal_id for t in self.charter.charter.terminals]
        now = self.clock.monotonic()
        if self._busy():
            self.readiness.waiting(ids, now)
            return
        for alarm in self.readiness.overdue(ids, now, self.clock.time()):
            self._readiness_alarm(alarm)

    def _raise_alarm(self, data: dict[str, Any]) -> None:
        """An alarm: an event (UI, followers, logs) and the operator's hook."""
        self.emit("alarm", data)
        if self.config.alarm_hook:
            task = asyncio.ensure_future(self._run_hook(data))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _run_hook(self, alarm: dict[str, Any]) -> None:
        assert self.config.alarm_hook is not None
        argv = shlex.split(self.config.alarm_hook)
        env = {**os.environ, "HOTLINE_ALARM": json.dumps(alarm, sort_keys=True)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            code = await asyncio.wait_for(proc.wait(), HOOK_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            log.warning("the alarm hook %r failed: %s", argv[0] if argv else "", exc)
            return
        if code != 0:
            log.warning("the alarm hook %r exited with %d", argv[0], code)

    def _load_checks(self) -> None:
        for entry in self.call_log.entries_of_event("check_result"):
            with contextlib.suppress(HotlineError, ValueError):
                value = decode(entry.payload_bytes)
                if isinstance(value, dict):
                    self.checks.append(dict(value))
        for entry in self.call_log.entries_of_event("check_rollup"):
            with contextlib.suppress(HotlineError, ValueError, KeyError):
                self.rollups[entry.index] = history_rows(entry)

    def check_history(self) -> list[dict[str, Any]]:
        """What `hotline check history` shows: the daily and monthly summaries of older
        checks, then the individual results still kept, oldest first."""
        rows = [r for rs in self.rollups.values() for r in rs]
        rows.sort(key=lambda r: (int(r.get("time") or 0), str(r.get("kind"))))
        return [*rows, *self.checks]

    # --- housekeeping: rollups and expiry ----------------------------------------------

    def housekeeping(self) -> None:
        """Roll old check results up (once a day of the readiness clock) and review what
        expires (each time). The tick calls it every :data:`HOUSEKEEPING_S`."""
        now = self.clock.time()
        today = int(now // 86_400)
        if self._rolled_up_day != today:
            self._rolled_up_day = today
            self._roll_up(now)
        self.review_expiry(now)

    def _roll_up(self, now: float) -> None:
        try:
            written = roll_up(self.call_log, now, self.config.retention)
        except HotlineError as exc:
            log.warning("readiness results could not be rolled up: %s", exc)
            return
        if not written:
            return
        present = set(self.call_log.indices_of_event("check_rollup"))
        self.rollups = {i: rows for i, rows in self.rollups.items() if i in present}
        for entry in written:  # a daily summary may be in a monthly one already
            if entry.index in present:
                self.rollups[entry.index] = history_rows(entry)
        # the individual results still kept begin with the oldest check_result left
        results = self.call_log.entries_of_event("check_result", limit=1)
        first = results[0].payload if results else None
        cutoff = int(str(first.get("time") or 0)) if isinstance(first, dict) else None
        self.checks = deque(
            (c for c in self.checks if cutoff is not None and int(c.get("time") or 0) >= cutoff),
            maxlen=CHECK_HISTORY,
        )
        self.emit("check_rollup", {"summaries": len(written)})

    def expiry_items(self) -> list[ExpiryItem]:
        """Everything this terminal depends on that ends (see ``check.expiry``)."""
        items: list[ExpiryItem] = []
        cert = self.client.peer_certificate
        if cert is not None:
            with contextlib.suppress(HotlineError):
                items.append(tls_item(self.client.url, cert))
        if self.config.identity_key_created is not None:
            items.append(
                key_age_item(
                    self.terminal_id, self.config.identity_key_created, self.expiry.settings
                )
            )
        charter = self.charter.charter
        item = charter_item(charter.line_id, charter.version, None)  # format 1: no end
        if item is not None:
            items.append(item)
        if self._call_started is not None and self.busy:
            for relay in self.config.media.ice.relays:
                if isinstance(relay.credentials, SharedSecretCredentials):
                    items.append(turn_item(relay.url, self._call_started, relay.credentials.ttl_s))
        return items

    def next_expiry(self) -> dict[str, Any] | None:
        """What expires next (for `hotline status`): key, kind, what, expires_at, in_s."""
        item = next_expiry(self.expiry_items())
        return None if item is None else item.to_value(self.clock.time())

    def expiry_list(self) -> list[dict[str, Any]]:
        """Every item that ends, soonest first, as ``hotline status`` shows it: ``what``,
        ``at`` (unix seconds), ``warn`` (within its warning lead, or a warning is open)."""
        now = self.clock.time()
        items = sorted(self.expiry_items(), key=lambda i: i.expires_at)
        return [
            {
                "what": i.what,
                "at": int(i.expires_at),
                "warn": i.expires_at - now <= i.lead(self.expiry.settings)
                or i.key in self.expiry.warnings,
            }
            for i in items
        ]

    def review_expiry(self, now: float | None = None) -> None:
        """Raise a warning (an alarm: event and hook) for each item within its lead, once a
        day each; clear those renewed."""
        now = self.clock.time() if now is None else now
        review = self.expiry.review(self.expiry_items(), now)
        for warning in review.raised:
            data = warning.to_value()
            log.warning("expiry alarm: %s", warning.reason)
            self._raise_alarm(data)
        for warning in review.cleared:
            self.emit("alarm_cleared", {"kind": "expiry", "item": warning.item.key})

    # --- the schedule ------------------------------------------------------------------

    def _maybe_check(self) -> None:
        """Start the next scheduled check when one is due and the terminal is idle."""
        if not self.config.scheduled_checks or self._stopping:
            return
        if self._check_task is not None and not self._check_task.done():
            return
        now = self.clock.monotonic()
        peer = self.readiness.next_due([t.terminal_id for t in self.charter.charter.terminals], now)
        if peer is None:
            return
        if self._busy():  # a real call: the check waits (that is not a miss)
            self.readiness.postpone(peer, now, CHECK_POSTPONE_S)
            return
        self._check_task = asyncio.ensure_future(self._scheduled_check(peer))

    async def _scheduled_check(self, peer: str) -> None:
        try:
            await run_check(self, peer)
        except StateError:  # a call began meanwhile
            self.readiness.postpone(peer, self.clock.monotonic(), CHECK_POSTPONE_S)
        except Exception:  # a bug in a check must not stop the schedule
            log.exception("internal error in a readiness check")

    def _other_end(self, record: dict[str, Any]) -> Any:
        """The terminal at the other end of a check record (we ran it, or it checked us)."""
        return record.get("peer") if record.get("by") == self.terminal_id else record.get("by")

    def readiness_status(self) -> dict[str, Any]:
        """The line's readiness as this terminal knows it: checks it ran and those the other
        end ran to it (``by``), newest last; ``last.with`` and ``last_good.peer`` name the
        other end."""
        now = self.clock.time()
        last = self.checks[-1] if self.checks else None
        good = next((c for c in reversed(self.checks) if c.get("verdict") != "red"), None)
        mono = self.clock.monotonic()
        return {
            "interval_s": self.readiness.interval_s,
            "last": None if last is None else {**last, "with": self._other_end(last)},
            "last_good": None if good is None else {
                "peer": self._other_end(good), "by": good.get("by"),
                "verdict": good.get("verdict"),
                "time": good.get("time"), "age_s": round(now - int(good.get("time") or now)),
            },
            "alarms": [
                *(dataclasses.asdict(a) for a in self.readiness.alarms.values()),
                *(w.to_value() for w in self.expiry.warnings.values()),
            ],
            "next_due_s": {p: round(t - mono) for p, t in sorted(self.readiness.due.items())},
            "next_expiry": self.next_expiry(),
            "scheduled": self.config.scheduled_checks,
            "retention": {"days": self.config.retention.days,
                          "months": self.config.retention.months},
        }  # fmt: skip

    async def _tick(self) -> None:
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            self._maybe_check()
            self._watch_callers()
            mono = self.clock.monotonic()
            if self._housekeeping_at is None or mono - self._housekeeping_at >= HOUSEKEEPING_S:
                self._housekeeping_at = mono
                try:
                    self.housekeeping()
                except Exception:  # a bug must not stop the terminal's clock
                    log.exception("internal error in the readiness housekeeping")
            if self.call is not None:
                try:
                    await self.call.tick()
                except HotlineError as exc:
                    self._count_rejection(exc.reason, str(exc))
                except Exception:  # a bug must not stop the terminal's clock
                    log.exception("internal error in the call timer")
                    self._count_rejection("internal", "internal error in the call timer")

    async def _digest_tick(self) -> None:
        """The call's signed frame digests on their own clock (``CallSession.digest_tick``):
        never held up by a call tick that waits on a conference being rebuilt."""
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            call = self.call
            if call is None:
                continue
            try:
                await call.digest_tick()
            except HotlineError as exc:
                self._count_rejection(exc.reason, str(exc))
            except Exception:  # a bug must not stop the digests' clock
                log.exception("internal error in the frame digests' timer")
                self._count_rejection("internal", "internal error in the frame digests' timer")

    # --- status ------------------------------------------------------------------------------

    async def status(self, *, media: bool = True) -> dict[str, Any]:
        """Everything about this terminal; ``media=False`` leaves out the sampled media
        statistics of the call (quick: what the web UI gets with every event)."""
        return {
            "terminal": self.terminal_id,
            "name": self.terminal.name,
            "role": str(self.terminal.role),
            "media_source": self.source.description,
            "engine": self.config.engine,
            "page_engine": self.browser_hub is not None and self.browser_hub.connected,
            "line": self.charter.charter.line_id,
            "charter_version": self.charter.charter.version,
            "exchange": {
                "connected": self.client.connected,
                "state": "connected" if self.client.connected else "unreachable",
                "reason": self._exchange_reason,
                "since": self._exchange_since,
                "url": self.client.url,
                "endpoints": self.client.endpoints,
                "online": sorted(self.client.online),
            },
            "call": await self.call.stats(media=media) if self.call is not None else None,
            "readiness": self.readiness_status(),
            "expiry": self.expiry_list(),
            "health": {
                name: {"ok": ok, "detail": detail} for name, (ok, detail) in readiness(self).items()
            },
            "last_ring": self.last_ring,
            "past_calls": self.past_calls[-10:],
            "rejected": dict(self.rejected),
            "last_event": self._event_seq,
        }


def _ring_facts(body: bytes) -> tuple[int, str]:
    """How many members a ring names, and its purpose (checked again by the call machine)."""
    fields = expect_dict(decode(body), MSG_RING)
    members = fields.get("members")
    purpose = fields.get("purpose", PURPOSE_CALL)
    return (len(members) if isinstance(members, list) else 0), str(purpose)


def _call_id_of(body: bytes) -> str:
    fields = expect_dict(decode(body), "message")
    call_id = fields.get("call")
    return ids.call_id(call_id, "message call")


def load_client_state(path: Path) -> ClientState | None:
    """What the exchange client persisted at the last stop: sequence numbers go on above
    it, and what was already taken is not taken again. Unreadable: start afresh (counted
    in the log), since sequence numbers also start above the clock."""
    try:
        data = json.loads(path.read_text())
        return ClientState(
            last_seq=int(data["last_seq"]),
            seen={str(k): int(v) for k, v in dict(data["seen"]).items()},
            store_id=None if data["store_id"] is None else str(data["store_id"]),
            delivered=int(data["delivered"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable exchange client state, starting afresh: %s", path, exc)
        return None


def save_client_state(path: Path, client_state: ClientState) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(client_state)))
    os.replace(tmp, path)


def new_token() -> str:
    return secrets.token_urlsafe(32)
