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
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline.call.machine import RING_TIMEOUT_S, CallState
from hotline.call.media_engine import EngineFactory
from hotline.call.session import CallSession, MediaSettings, new_call_id
from hotline.calllog import CallLog, log_path
from hotline.charter import CharterStore, SignedCharter
from hotline.encoding import decode, encode, expect_dict
from hotline.errors import ExchangeUnavailable, HotlineError, StateError, UsageError
from hotline.exchange.client import (
    CharterUpdated,
    ClientState,
    ConnectionChanged,
    EnvelopeReceived,
    EnvelopeRejected,
    ExchangeClient,
    PresenceChanged,
)
from hotline.keys import SigningKey
from hotline.media.sources import open_source
from hotline.terminal.config import TerminalConfig
from hotline.ui.browser_engine import BrowserHub, browser_engine_factory

log = logging.getLogger("hotline.terminal")

TICK_S = 0.1
CLIENT_STATE_FILE = "exchange-client.json"
#: at shutdown, how long the last messages (a hang-up) may take to leave, and tasks to end
STOP_FLUSH_S = 3.0
EVENT_HISTORY = 500
LIVE_STATES = frozenset({CallState.OUTGOING, CallState.INCOMING, CallState.ACTIVE})
#: messages for an ended call that need no answer (the summary is exchanged after the end)
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
    #: the site-local configuration (TURN credentials), applied to each charter adopted
    site: TerminalConfig = field(default_factory=TerminalConfig)
    #: the media engine: "aiortc" (in this process) or "browser" (the open UI page)
    engine: str = "aiortc"

    @property
    def state(self) -> Path:
        return self.state_dir or self.terminal_dir / "state"


class TerminalDaemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
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
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        self._event_seq = 0
        #: live followers of the event stream (control API, web UI); each gets every event
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.rejected: dict[str, int] = {}
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

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # without the exchange the terminal still starts, keeps trying in the background and
        # says "exchange unreachable"; calls already running go on peer to peer
        await self.client.start(require_connection=False)
        self._tasks.append(asyncio.create_task(self._pump_exchange()))
        self._tasks.append(asyncio.create_task(self._tick()))
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
        event = {**data, "seq": self._event_seq, "time": time.time(), "kind": kind}
        self.events.append(event)
        log.info("%s %s", kind, data)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a follower that stopped reading: its stream ends
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

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
                self.config.media,
                liveness=dataclasses.replace(
                    self.config.media.liveness, peer_timeout=float(charter.policy.peer_timeout_s)
                ),
            ),
            source=self.source,
            on_event=self.emit,
            engine=self._engine_for(call_id),
        )

    def _busy(self) -> bool:
        """Ringing, being rung or in a call (a refused ring leaves nothing behind)."""
        return self.call is not None and self.call.machine.state in LIVE_STATES

    async def dial(self, target: str) -> str:
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
        self._known_calls.add(call.call_id)
        self.emit("dialing", {"call": call.call_id, "target": target})
        try:
            await call.dial(target)
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
            self.past_calls.append({"call": self.call.call_id, "end": self.call.machine.end_reason})
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
            env = event.envelope
            if not (env.msg_type.startswith("call.") or env.msg_type.startswith("e2ee.")):
                self._count_rejection("unknown_type", f"{env.msg_type} from {env.sender}")
                return
            call_id = _call_id_of(env.body)
            ring_age_s = max(0.0, time.time() - env.timestamp_ms / 1000)
            if env.msg_type == "call.ring" and ring_age_s > RING_TIMEOUT_S:
                # released late by the exchange: its caller gave up long ago (a phantom)
                self._known_calls.add(call_id)
                self._count_rejection(
                    "stale_ring",
                    f"ring {call_id} from {env.sender}: {ring_age_s:.0f} s old "
                    f"(rings time out after {RING_TIMEOUT_S:.0f} s)",
                )
                return
            if env.msg_type == "call.ring" and not self._busy():
                if call_id in self._known_calls:
                    # an old ring again (a replay across our restart): never a new call
                    self._count_rejection("replayed_ring", f"{call_id} from {env.sender}")
                    return
                if self._ring_over_limit(env.body):
                    await self._decline(env.sender, call_id, "full")
                    return
                self._archive()
                call = self._new_session(call_id)
                await call.receive(env.sender, env.msg_type, env.body)
                if call.machine.state != CallState.INCOMING:
                    for reason, count in call.rejected.items():  # refused: no call remains
                        self.rejected[reason] = self.rejected.get(reason, 0) + count
                    return
                self.call = call
                self._known_calls.add(call_id)
                self.last_ring = {
                    "call": call_id,
                    "from": env.sender,
                    "age_s": round(ring_age_s, 1),
                }
                self.emit("ring", self.last_ring)
                if self.config.auto_answer:
                    await call.answer()
                return
            if self.call is None or call_id != self.call.call_id:
                if env.msg_type == "call.ring":
                    await self._decline(env.sender, call_id, "busy")
                    return
                if call_id in self._known_calls:
                    await self._leave_ended(env.sender, call_id, env.msg_type)
                self._count_rejection("no_such_call", f"{env.msg_type} from {env.sender}")
                return
            if self.call.machine.state == CallState.ENDED:
                await self._leave_ended(env.sender, call_id, env.msg_type)
            await self.call.receive(env.sender, env.msg_type, env.body)
        elif isinstance(event, PresenceChanged):
            self.emit("presence", {"online": sorted(event.online)})
        elif isinstance(event, CharterUpdated):
            await self._adopt_charter(event.charter)  # accepted by the store already
        elif isinstance(event, EnvelopeRejected):
            self._count_rejection(
                f"exchange_{event.reason}", f"the exchange refused our envelope {event.seq}"
            )
        elif isinstance(event, ConnectionChanged):
            self._exchange_reason = event.reason
            self._exchange_since = time.time()
            self.emit(
                "exchange",
                {"connected": event.connected, "reason": event.reason, "url": self.client.url},
            )
            if event.reason == "duplicate_terminal":  # another copy of this terminal runs
                self._count_rejection(event.reason, "another copy of this terminal is running")

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
            await self.call.on_charter(
                directory,
                charter.version,
                kem=policy.kem,
                suite=policy.cipher_suite,
                max_participants=policy.max_participants,
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

    def _ring_over_limit(self, body: bytes) -> bool:
        """A ring into a call that already holds the charter's maximum of terminals."""
        members = expect_dict(decode(body), "call.ring").get("members")
        count = len(members) if isinstance(members, list) else 0
        return count + 1 > self.charter.charter.policy.max_participants

    def count_control_refusal(self, reason: str) -> None:
        """A control API request refused before any handler: not from the operator's tools
        (``not_local``) or malformed HTTP. Logged (rate-limited) by the control API."""
        key = f"control_{reason}"
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def _count_rejection(self, reason: str, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("refused: %s", detail)
        self.emit("rejected", {"reason": reason, "detail": detail})

    async def _tick(self) -> None:
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            if self.call is not None:
                try:
                    await self.call.tick()
                except HotlineError as exc:
                    self._count_rejection(exc.reason, str(exc))
                except Exception:  # a bug must not stop the terminal's clock
                    log.exception("internal error in the call timer")
                    self._count_rejection("internal", "internal error in the call timer")

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
            "last_ring": self.last_ring,
            "past_calls": self.past_calls[-10:],
            "rejected": dict(self.rejected),
            "last_event": self._event_seq,
        }


def _call_id_of(body: bytes) -> str:
    fields = expect_dict(decode(body), "message")
    call_id = fields.get("call")
    if not isinstance(call_id, str) or not call_id or len(call_id) > 64:
        raise HotlineError("message without a valid call id", reason="malformed")
    return call_id


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
