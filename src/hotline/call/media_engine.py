"""The seam between a call and its media: what a media engine does for a call session.

A call session (``call.session``) runs the call machine, the key session and the liveness
decisions; it never touches a peer connection itself. Per other member it asks the engine
for a *link* (one transport: a peer connection), has it offer, answer or apply an answer
(the SDP travels in signed ``call.sdp`` envelopes, see ``call.signalling``), watches its
state and media count (``call.liveness`` decides on them) and closes it. The key session
hands every key to the engine's :attr:`MediaEngine.key_sink`; the frame crypto behind it
belongs to the engine.

Two engines implement this: ``call.aiortc_engine`` (aiortc in this process, the Python
frame crypto) and ``ui.browser_engine`` (the terminal's web page: the browser's WebRTC and
SFrame in a Worker, keyed by the daemon over the page's authenticated local channel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hotline.call.liveness import LivenessSettings
from hotline.e2ee.frame_digest import FrameHashes
from hotline.e2ee.media import KeySink, MediaStats
from hotline.media.stats import FrameEvent
from hotline.media.turn import IceSettings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hotline.media.sinks import CaptureFiles
    from hotline.sfu.topology import ConferenceSpec


@dataclass
class MediaSettings:
    #: what the terminal sends: see ``hotline.media.sources.SOURCE_HELP``
    source: str = "synthetic"
    width: int = 640
    height: int = 360
    fps: int = 30
    ice: IceSettings = field(default_factory=IceSettings)
    #: when a transport counts as lost, is rebuilt, and a peer is dropped
    liveness: LivenessSettings = field(default_factory=LivenessSettings)
    #: write the audio played out of each remote peer to WAV (``--capture-audio``); only
    #: with synthetic or file media, or when the charter allows recording (aiortc engine)
    capture_audio: CaptureFiles | None = None


@dataclass(frozen=True)
class Received:
    """What this terminal received from one peer so far (a readiness check's view)."""

    video_frames: int = 0
    #: audio packets that arrived (played audio includes concealment of what did not)
    audio_packets: int = 0
    corrupt_shown: int = 0
    longest_freeze_ms: int = 0

    @property
    def total(self) -> int:
        return self.video_frames + self.audio_packets


class MediaLink(Protocol):
    """One transport to one other member (a peer connection)."""

    peer_id: str
    offerer: bool
    #: which offer of the pair this link belongs to (1 for the first, then rebuilds)
    attempt: int
    #: monotonic time the link was made
    created: float
    #: the connection state ("new", "connecting", "connected", "failed", "closed")
    state: str

    @property
    def media_total(self) -> int:
        """Media that arrived on this link so far (liveness watches it grow): video frames
        and audio *packets* received, never concealment played in place of lost audio."""
        ...

    @property
    def video_frames(self) -> int:
        """Video frames decoded from this link so far: a picture of its peer is there to
        show (a move between mesh and SFU breaks the old path once the new one has one)."""
        ...

    def awaiting_answer(self) -> bool:
        """True while our offer is out and no answer was applied."""
        ...

    async def create_offer(self) -> str:
        """Our offer's SDP (all candidates inside)."""
        ...

    async def accept_offer(self, sdp: str) -> str:
        """Apply the remote offer; our answer's SDP."""
        ...

    async def apply_answer(self, sdp: str) -> None: ...


class MediaEngine(Protocol):
    """The media of one call at this terminal."""

    #: where the key session puts its keys
    key_sink: KeySink

    async def open_link(self, peer_id: str, *, offerer: bool, attempt: int) -> MediaLink:
        """A new transport to ``peer_id``; its frames are bound to ``peer_id``'s keys."""
        ...

    def show(self, link: MediaLink) -> None:
        """``link`` is now the active transport to its peer (its statistics are shown)."""
        ...

    async def close_link(self, link: MediaLink) -> None:
        """Close ``link`` (bounded in time); not one more frame goes through it."""
        ...

    async def snapshot(self) -> dict[str, Any]:
        """``{"frames": {...}, "peers": {peer: {...}}}``: the media statistics."""
        ...

    def received(self, peer_id: str) -> Received:
        """What arrived from ``peer_id`` (over its shown link; video over the whole call)."""
        ...

    async def path_quality(self, link: MediaLink, now: float) -> dict[str, dict[str, float]] | None:
        """``link``'s RTP statistics by media kind (``jitter_ms``, ``rtt_ms``,
        ``remote_fraction_lost``) for live quality warnings; None when there are none."""
        ...

    async def peer_left(self, peer_id: str) -> None:
        """``peer_id`` left the call: what shows and plays it stops (its links are closed)."""
        ...

    def crypto_stats(self) -> MediaStats:
        """The frame crypto's counters (protected, decrypted, rejected by reason)."""
        ...

    def take_frame_hashes(self) -> FrameHashes | None:
        """The hashes of the frames protected and accepted since the last call, which the
        call signs and checks (signed frame digests); None: this engine records none."""
        ...

    async def close(self) -> None:
        """The call is over (every link was closed already)."""
        ...


@runtime_checkable
class ConferenceEngine(Protocol):
    """An engine that can also carry the call through the charter's SFU (a conference above
    the mesh limit, ``docs/protocol.md`` §14): one upstream, one downstream per member, the
    same frame crypto and keys. Both engines are: the aiortc engine with peer connections
    in this process (``sfu.conference``), the browser engine with them in its page while
    the daemon talks to Janus (``ui.browser_conference``); the Janus side is shared
    (``sfu.room``)."""

    @property
    def in_conference(self) -> bool: ...

    async def join_conference(self, spec: ConferenceSpec, members: Iterable[str]) -> None:
        """Publish to ``spec``'s room and receive every member's feed (raises SfuError)."""
        ...

    async def conference_members(self, members: Iterable[str]) -> None:
        """The call's members are now ``members``: feeds of those gone are closed."""
        ...

    async def leave_conference(self) -> None: ...

    def conference_status(self) -> dict[str, Any] | None: ...

    def conference_broken(self) -> bool:
        """Our own upstream to the SFU failed or closed (the SFU lost us, or the browser
        page that held it reloaded) and a new one can be made now: the call joins the
        room again."""
        ...

    def conference_video(self, member: str) -> int:
        """Video frames decoded from ``member``'s feed through the SFU so far (0: none,
        or no subscription to it)."""
        ...


#: builds a call's engine: (SFrame suite name, callback for refused frames) -> engine
EngineFactory = Callable[[str, Callable[[FrameEvent], None]], MediaEngine]
