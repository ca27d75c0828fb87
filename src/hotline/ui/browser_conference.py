"""A browser-engine terminal in a conference through the SFU: the daemon talks to Janus, the
page holds the peer connections.

The page never talks to Janus and holds no Janus session or room secret: the daemon drives
Janus's API with the same client and the same feed bookkeeping as the aiortc engine
(:class:`~hotline.sfu.room.JanusConference`: members only, ``duplicate_feed`` /
``unknown_feed`` refused). The page only makes peer connections, over the engine ops it
already has (``ui.browser_engine``), with a ``mode`` on ``open``:

``publish``    one send-only link: the page offers, the daemon sends the offer to Janus's
               ``publish`` with the E2EE flag and applies Janus's answer to the page
``subscribe``  one receive-only link per member's feed, opened with ``peer`` = that member:
               Janus offers, the page answers (its worker's receive transforms are put on
               before the answer), the daemon sends the answer with ``start``

Frames on the subscription of member M are bound to M's keys in the page's worker exactly as
a mesh link to M is: one under another member's KID is refused (``wrong_sender``) and
counted. The worker hashes every frame it protects and accepts as on a mesh, so the signed
frame digests (strict through the SFU, ``docs/protocol.md`` §11) check the browser's frames
and the browser's view of everyone else's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hotline.media.sdp import check_codecs
from hotline.sfu.janus import VideoRoomHandle
from hotline.sfu.room import JanusConference, Subscription

if TYPE_CHECKING:
    from hotline.ui.browser_engine import BrowserEngine, BrowserLink


@dataclass
class PageDownstream(Subscription):
    """The subscription to one member's feed: a receive-only peer connection in the page."""

    link: BrowserLink = field(kw_only=True)

    @property
    def state(self) -> str:
        return self.link.state

    @property
    def video_frames(self) -> int:
        return self.link.video_frames


class PageConference(JanusConference[PageDownstream]):
    """One browser-engine terminal's conference (see the module docstring)."""

    def __init__(
        self,
        *,
        engine: BrowserEngine,
        self_id: str,
        url: str,
        room: int,
        secret: str,
        members: Iterable[str] = (),
        tls_fingerprint: bytes | None = None,
    ) -> None:
        super().__init__(
            self_id=self_id,
            url=url,
            room=room,
            secret=secret,
            members=members,
            tls_fingerprint=tls_fingerprint,
        )
        self.engine = engine
        self.upstream: BrowserLink | None = None

    async def _publish(self, control: VideoRoomHandle) -> None:
        link = await self.engine.open_page_link(self.self_id, mode="publish")
        self.upstream = link
        answer = await control.publish(await link.create_offer(), e2ee=True)
        check_codecs(answer)
        await link.apply_answer(answer)
        await self._connected(lambda: link.state, "upstream")

    async def _open_downstream(
        self, member: str, feed_id: int, handle: VideoRoomHandle
    ) -> PageDownstream:
        link = await self.engine.open_page_link(member, mode="subscribe")
        return PageDownstream(member, feed_id, handle, link=link)

    async def _answer_downstream(self, down: PageDownstream, offer: str) -> str:
        return await down.link.accept_offer(offer)

    async def _close_downstream_media(self, down: PageDownstream) -> None:
        await self.engine.close_link(down.link)

    async def _close_upstream_media(self) -> None:
        if self.upstream is not None:
            await self.engine.close_link(self.upstream)

    def upstream_state(self) -> str | None:
        return self.upstream.state if self.upstream is not None else None
