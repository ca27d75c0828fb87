"""The Janus side of one terminal in a conference: the room, the publisher, the feeds.

What every media engine in a conference needs from Janus (VideoRoom, ``require_e2ee``) and
nothing of the media itself: one Janus session, a control handle that joins the call's room
as a publisher named by the terminal's id, the room's events (feeds published, unpublished,
leaving), and one subscriber handle per member's feed. The peer connections are the
engine's: :class:`JanusConference` asks a subclass for them through four hooks —
:meth:`~JanusConference._publish` (our offer out, Janus's answer in), and
:meth:`~JanusConference._open_downstream`, :meth:`~JanusConference._answer_downstream`,
:meth:`~JanusConference._close_downstream_media` for each subscription (Janus offers, the
engine answers). ``sfu.conference.SfuConference`` makes them aiortc peer connections in
this process; ``ui.browser_conference.PageConference`` makes them in the terminal's page.

The feed bookkeeping lives here once, for both: a publisher names itself (``display`` =
its terminal id), and Janus relays that name; neither is trusted. Only feeds of
:attr:`JanusConference.members` are subscribed; a second feed naming a member already
subscribed is refused and counted (``duplicate_feed``), one naming a stranger too
(``unknown_feed``). A feed that leaves or unpublishes closes its subscription. What makes
a subscription *M's* is the engine's frame crypto: frames on it open only under M's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hotline.errors import HotlineError, JanusError, SfuError, SfuProtocolError
from hotline.media.sdp import check_codecs
from hotline.sfu.janus import Feed, JanusSession, Joined, VideoRoomHandle, parse_feeds

log = logging.getLogger("hotline.sfu.conference")

#: how long to wait for a peer connection to Janus to connect
CONNECT_TIMEOUT_S = 20.0
#: JANUS_VIDEOROOM_ERROR_ROOM_EXISTS
ROOM_EXISTS = 427


@dataclass
class Subscription:
    """The subscription to one member's feed: its Janus handle; the engine's receive-only
    peer connection is in the subclass (:attr:`state` is that connection's)."""

    member: str
    feed_id: int
    handle: VideoRoomHandle
    created: float = field(default_factory=time.monotonic, kw_only=True)

    @property
    def state(self) -> str:
        raise NotImplementedError

    @property
    def video_frames(self) -> int:
        """Video frames decoded from this feed so far."""
        raise NotImplementedError


D = TypeVar("D", bound=Subscription)


class JanusConference(Generic[D]):
    """The Janus side of one terminal's conference (see the module docstring).

    ``room`` and ``secret`` are the call's (from its signed set-up), ``url`` one SFU of the
    charter. ``members``: the roster this terminal accepts feeds from (its own id excluded).
    """

    def __init__(
        self,
        *,
        self_id: str,
        url: str,
        room: int,
        secret: str,
        members: Iterable[str] = (),
        tls_fingerprint: bytes | None = None,
    ) -> None:
        self.self_id = self_id
        self.room = room
        self._secret = secret
        self.members: set[str] = set(members) - {self_id}
        self.session = JanusSession(url, tls_fingerprint=tls_fingerprint)
        self._control: VideoRoomHandle | None = None
        self.joined: Joined | None = None
        self.downstream: dict[str, D] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._subscribing: set[int] = set()
        self._pending: set[asyncio.Task[None]] = set()
        #: refusals and SFU failures by reason (shown in the call's status)
        self.refused: dict[str, int] = {}
        self.setup_ms: float | None = None
        #: on close, destroy the room if nobody is left in it
        self.destroy_when_empty = False
        #: told of each subscription once it connects, and when it closes (statistics)
        self.on_downstream: Callable[[D], None] | None = None
        self.on_downstream_closed: Callable[[D], None] | None = None

    def _count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    # --- what an engine provides ----------------------------------------------------------

    async def _publish(self, control: VideoRoomHandle) -> None:
        """Make the upstream connection, publish it (``control.publish`` with the E2EE flag:
        Janus's answer goes back to the connection) and return once it is connected."""
        raise NotImplementedError

    async def _open_downstream(self, member: str, feed_id: int, handle: VideoRoomHandle) -> D:
        """A new receive-only connection for ``member``'s feed: frames on it must be under
        ``member``'s keys (before any SDP is applied)."""
        raise NotImplementedError

    async def _answer_downstream(self, down: D, offer: str) -> str:
        """Apply Janus's offer for ``down``: our answer."""
        raise NotImplementedError

    async def _close_downstream_media(self, down: D) -> None:
        """Close ``down``'s connection (bounded in time); not one more frame goes through."""
        raise NotImplementedError

    async def _close_upstream_media(self) -> None:
        """Close the upstream connection (bounded in time)."""
        raise NotImplementedError

    # --- set-up ----------------------------------------------------------------------------

    async def create_room(self, publishers: int) -> None:
        """Make the call's ``require_e2ee`` room (the member that sets the call up does)."""
        handle = await self._ensure_control()
        await handle.create_room(self.room, publishers=publishers, secret=self._secret)

    async def ensure_room(self, publishers: int) -> None:
        """Make the call's room unless another member did already (Janus error 427)."""
        try:
            await self.create_room(publishers)
        except JanusError as exc:
            if exc.code != ROOM_EXISTS:
                raise

    async def destroy_room(self) -> None:
        handle = await self._ensure_control()
        await handle.destroy_room(self.room, secret=self._secret)

    async def _ensure_control(self) -> VideoRoomHandle:
        if self.session.session_id is None:
            await self.session.create()
        if self._control is None:
            self._control = VideoRoomHandle(await self.session.attach())
        return self._control

    async def join(self) -> None:
        """Join the room, publish our upstream, subscribe to every member's feed listed."""
        started = time.monotonic()
        control = await self._ensure_control()
        self.joined = await control.join_publisher(self.room, self.self_id)
        await self._publish(control)
        self._watcher = asyncio.create_task(self._watch(control), name=f"sfu-{self.self_id}")
        await asyncio.gather(*(self._offer_feed(f) for f in self.joined.publishers))
        self.setup_ms = (time.monotonic() - started) * 1000

    async def _connected(self, state: Callable[[], str], what: str) -> None:
        """Wait until ``state()`` says connected; a connection that fails or takes longer
        than :data:`CONNECT_TIMEOUT_S` is counted as ``<what>_failed`` and raises."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while state() != "connected":
            if state() in ("failed", "closed") or time.monotonic() > deadline:
                self._count(f"{what}_failed")
                raise SfuError(f"the {what} connection to the SFU did not connect")
            await asyncio.sleep(0.05)

    async def _offer_feed(self, feed: Feed) -> None:
        member = feed.display
        if member not in self.members:
            self._count("unknown_feed")
            log.warning("SFU lists a feed for %r, not a member of this call: ignored", member[:64])
            return
        if member in self.downstream or feed.feed_id in self._subscribing:
            self._count("duplicate_feed")
            log.warning("SFU lists a second feed for %s: ignored", member)
            return
        self._subscribing.add(feed.feed_id)
        try:
            await self.subscribe(member, feed.feed_id)
        except (HotlineError, OSError) as exc:
            self._count("subscribe_failed")
            log.warning("subscription to %s's feed failed: %s", member, exc)
        finally:
            self._subscribing.discard(feed.feed_id)

    async def subscribe(self, member: str, feed_id: int) -> D:
        """Receive ``member``'s feed ``feed_id``: frames on it must be under its keys."""
        handle = VideoRoomHandle(await self.session.attach())
        down = await self._open_downstream(member, feed_id, handle)
        private_id = self.joined.private_id if self.joined is not None else None
        try:
            offer = await handle.subscribe(self.room, feed_id, private_id=private_id)
            check_codecs(offer)
            await handle.start(await self._answer_downstream(down, offer))
            self.downstream[member] = down
            await self._connected(lambda: down.state, "downstream")
            if self.on_downstream is not None:
                self.on_downstream(down)
        except BaseException:
            if self.downstream.get(member) is down:
                del self.downstream[member]
            await self._close_downstream(down)
            raise
        return down

    # --- what Janus says during the call ------------------------------------------------------

    async def _watch(self, control: VideoRoomHandle) -> None:
        while True:
            event = await control.handle.events.get()
            if event.kind == "failed":
                self._count("sfu_failed")
                return
            if event.kind != "event":
                continue
            try:
                pd = event.message.get("plugindata")
                data = pd.get("data") if isinstance(pd, dict) else None
                if not isinstance(data, dict):
                    raise SfuProtocolError("Janus event without plugin data")
                for feed in parse_feeds(data.get("publishers"), "publishers"):
                    task = asyncio.create_task(self._offer_feed(feed))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
                for key in ("unpublished", "leaving"):
                    gone = data.get(key)
                    if isinstance(gone, int) and not isinstance(gone, bool):
                        await self._feed_gone(gone)
            except SfuProtocolError as exc:
                self._count("malformed_event")
                log.warning("%s", exc)

    async def _feed_gone(self, feed_id: int) -> None:
        for down in list(self.downstream.values()):
            if down.feed_id == feed_id:
                del self.downstream[down.member]
                await self._close_downstream(down)

    async def _close_downstream(self, down: D) -> None:
        if self.on_downstream_closed is not None:
            self.on_downstream_closed(down)
        await self._close_downstream_media(down)
        await down.handle.leave()
        await down.handle.handle.detach()

    async def member_left(self, member: str) -> None:
        """``member`` left the call: its subscription closes, its feeds are no longer taken."""
        self.members.discard(member)
        down = self.downstream.pop(member, None)
        if down is not None:
            await self._close_downstream(down)

    def member_joined(self, member: str) -> None:
        if member != self.self_id:
            self.members.add(member)

    async def set_members(self, members: Iterable[str]) -> None:
        """The call's members are now ``members``: feeds of those who left are closed,
        feeds of those who joined are taken when Janus lists them."""
        wanted = set(members) - {self.self_id}
        for gone in sorted(self.members - wanted):
            await self.member_left(gone)
        for new in sorted(wanted - self.members):
            self.member_joined(new)

    # --- what the call shows ----------------------------------------------------------------

    def upstream_state(self) -> str | None:
        raise NotImplementedError

    def broken(self) -> str | None:
        """Why this conference can no longer carry the call, once joined (None: it can):
        our upstream failed or closed, or the SFU's API session failed (the SFU restarted,
        lost our session or stopped answering: its events failed three times). The API
        fails within a second of an SFU's crash, where the upstream's ICE takes ~30 s."""
        if self.joined is None:
            return None
        if self.session.failure is not None:  # a fixed word: this goes into the call log
            return f"the SFU's API failed: {self.session.failure_reason}"
        state = self.upstream_state()
        return f"the upstream {state}" if state in ("failed", "closed") else None

    def status(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "feed": self.joined.feed_id if self.joined else None,
            "upstream": self.upstream_state(),
            "broken": self.broken(),
            "downstream": {m: d.state for m, d in sorted(self.downstream.items())},
            "refused": dict(self.refused),
            "sfu": dict(self.session.stats),
            "setup_ms": self.setup_ms,
        }

    async def close(self) -> None:
        """Leave the room and close every connection (bounded in time)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for down in list(self.downstream.values()):
            await self._close_downstream(down)
        self.downstream.clear()
        await self._close_upstream_media()
        if self._control is not None and self.joined is not None:
            await self._control.leave()
            if self.destroy_when_empty:
                with contextlib.suppress(SfuError):  # the last one out removes the room
                    if await self._control.participants(self.room) == 0:
                        await self._control.destroy_room(self.room, secret=self._secret)
        await self.session.close()


C = TypeVar("C", bound="JanusConference[Any]")


class ConferenceSlot(Generic[C]):
    """The one conference an engine carries at a time, and the parts of the
    :class:`~hotline.call.media_engine.ConferenceEngine` interface that do not depend on where
    the media is (this process for the aiortc engine, the page for the browser engine)."""

    conference: C | None = None

    @property
    def in_conference(self) -> bool:
        return self.conference is not None

    async def _enter_conference(self, conference: C, publishers: int) -> None:
        """Make the room if it is missing and join it; on any failure the slot stays empty
        and what was opened is closed."""
        conference.destroy_when_empty = True
        self.conference = conference
        try:
            await conference.ensure_room(publishers)
            await conference.join()
        except BaseException:
            self.conference = None
            await conference.close()
            raise

    async def conference_members(self, members: Iterable[str]) -> None:
        """The call's members changed: feeds of those who left are closed."""
        if self.conference is not None:
            await self.conference.set_members(members)

    def conference_status(self) -> dict[str, Any] | None:
        return self.conference.status() if self.conference is not None else None

    def conference_broken(self) -> bool:
        return self.conference is not None and self.conference.broken() is not None

    def conference_video(self, member: str) -> int:
        conference = self.conference
        down = conference.downstream.get(member) if conference is not None else None
        return down.video_frames if down is not None else 0

    async def leave_conference(self) -> None:
        conference, self.conference = self.conference, None
        if conference is not None:
            await conference.close()
