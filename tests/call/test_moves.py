"""A call's moves between mesh and SFU make the new path before they break the old
(``CallSession._moved`` / ``_break_old_path``), driven against an engine double that records
what is opened and closed and reports the video each path decoded as the test sets it.

The double stands in for the media only (its links carry no frames); the session, its call
machine, key session and call log are the real ones. The real paths are tested end to end
by ``tests/janus/test_terminal_conference.py`` and ``tests/janus/test_browser_conference.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import pytest

from hotline.call import session as session_module
from hotline.call.machine import CallState
from hotline.call.media_engine import MediaSettings, Received
from hotline.call.session import CallSession
from hotline.calllog import CallLog
from hotline.charter.model import SfuEndpoint
from hotline.e2ee.media import MediaCrypto, MediaStats
from hotline.e2ee.sframe import DEFAULT_SUITE
from hotline.errors import SfuError
from hotline.keys import SigningKey
from hotline.media.sources import MediaSource
from hotline.sfu.topology import ConferenceSpec

IDS = ("alpha", "bravo", "charlie", "delta")
#: what the double's links offer and answer (the signed call.sdp carries its fingerprint)
SDP = "v=0\r\na=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"


class Link:
    def __init__(self, peer_id: str, offerer: bool, attempt: int) -> None:
        self.peer_id, self.offerer, self.attempt = peer_id, offerer, attempt
        self.created = 0.0
        self.state = "connected"
        self.media_total = 0
        self.video_frames = 0
        self.closed = False

    def awaiting_answer(self) -> bool:
        return False

    async def create_offer(self) -> str:
        return SDP

    async def accept_offer(self, sdp: str) -> str:
        return SDP

    async def apply_answer(self, sdp: str) -> None:
        return None


class Engine:
    """A media engine and conference engine that records, and shows what the test says."""

    def __init__(self) -> None:
        self.crypto = MediaCrypto(DEFAULT_SUITE)
        self.key_sink = self.crypto
        self.links: list[Link] = []
        self.in_conference = False
        self.joins = 0
        self.leaves = 0
        self.fail_join = False
        #: the conference is broken (our upstream or the SFU's API failed)
        self.broken = False
        #: video frames each member's feed decoded through the room
        self.room_video: dict[str, int] = {}

    async def open_link(self, peer_id: str, *, offerer: bool, attempt: int) -> Link:
        link = Link(peer_id, offerer, attempt)
        self.links.append(link)
        return link

    def show(self, link: Any) -> None:
        return None

    async def close_link(self, link: Any) -> None:
        assert not link.closed, "a link closed twice"
        link.closed = True

    async def snapshot(self) -> dict[str, Any]:
        return {"frames": {}, "peers": {}}

    def received(self, peer_id: str) -> Received:
        return Received()

    async def path_quality(self, link: Any, now: float) -> None:
        return None

    async def peer_left(self, peer_id: str) -> None:
        return None

    def crypto_stats(self) -> MediaStats:
        return self.crypto.stats()

    def take_frame_hashes(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def join_conference(self, spec: ConferenceSpec, members: Any) -> None:
        self.joins += 1
        if self.fail_join:
            raise SfuError("the SFU refused the room", reason="refused")
        self.in_conference = True

    async def conference_members(self, members: Any) -> None:
        return None

    async def leave_conference(self) -> None:
        if self.in_conference:
            self.leaves += 1
        self.in_conference = False
        self.broken = False
        self.room_video.clear()

    def conference_status(self) -> dict[str, Any] | None:
        return {} if self.in_conference else None

    def conference_broken(self) -> bool:
        return self.in_conference and self.broken

    def conference_video(self, member: str) -> int:
        return self.room_video.get(member, 0) if self.in_conference else 0


@pytest.fixture
def fast_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "MOVE_OVERLAP_MAX_S", 1.0)
    monkeypatch.setattr(session_module, "MOVE_GRACE_S", 0.05)


def make_session(tmp_path: Path, engine: Engine, events: list[str]) -> CallSession:
    keys = {tid: SigningKey.generate() for tid in IDS}

    async def send(to: str, kind: str, body: bytes) -> None:
        return None

    session = CallSession(
        call_id="c" * 32,
        line_id="moves",
        charter_version=1,
        self_id="alpha",
        self_name="Alpha",
        identity_key=keys["alpha"],
        directory={tid: k.public for tid, k in keys.items()},
        kem="X25519",
        rekey_interval_s=3600.0,
        max_participants=4,
        send=send,
        call_log=CallLog.open(tmp_path / "calls.sqlite", "alpha", keys["alpha"]),
        media=MediaSettings(),
        source=cast(MediaSource, None),  # the double sends nothing
        on_event=lambda kind, detail: events.append(kind),
        engine=lambda suite, on_frame_event: engine,
        sfus=(SfuEndpoint("http://127.0.0.1:1/janus"),),
        mesh_limit=3,
    )
    session.machine.state = CallState.ACTIVE
    return session


async def set_members(session: CallSession, *ids: str) -> None:
    session.machine.members = frozenset(ids)
    await session._sync_peers(session.machine.members)


def mesh_of(session: CallSession) -> dict[str, Link]:
    return cast(dict[str, Link], dict(session.peers))


async def settle() -> None:
    """Past the overlap (1 s here) and its grace."""
    await asyncio.sleep(1.3)


async def test_the_mesh_stays_until_the_room_shows_each_member(
    tmp_path: Path, fast_moves: None
) -> None:
    engine, events = Engine(), []
    session = make_session(tmp_path, engine, events)
    await set_members(session, "alpha", "bravo", "charlie")
    mesh = mesh_of(session)
    assert session.topology == "mesh" and set(mesh) == {"bravo", "charlie"}
    for link in mesh.values():
        link.video_frames = 30
    await set_members(session, *IDS)  # a fourth: the room, with the mesh kept meanwhile
    assert session.topology == "sfu" and engine.in_conference
    await asyncio.sleep(0.3)
    assert not any(link.closed for link in mesh.values())  # the room shows nobody yet
    engine.room_video.update(bravo=2, charlie=1)
    await settle()
    assert all(link.closed for link in mesh.values()) and not session.peers
    assert list(session.moves) == [
        {"topology": "sfu", "overlap_ms": session.moves[0]["overlap_ms"], "not_shown": []}
    ]
    assert "old_path_closed" in events
    await session.close()


async def test_a_room_that_shows_nobody_is_taken_after_the_overlap(
    tmp_path: Path, fast_moves: None
) -> None:
    engine, events = Engine(), []
    session = make_session(tmp_path, engine, events)
    await set_members(session, "alpha", "bravo", "charlie")
    await set_members(session, *IDS)
    await settle()
    assert not session.peers  # 1 s of overlap (here), then the mesh closed anyway
    assert session.moves[-1]["not_shown"] == ["bravo", "charlie"]
    await session.close()


async def test_a_join_that_fails_leaves_the_mesh_as_it_was(
    tmp_path: Path, fast_moves: None
) -> None:
    engine, events = Engine(), []
    engine.fail_join = True
    session = make_session(tmp_path, engine, events)
    await set_members(session, "alpha", "bravo", "charlie")
    before = mesh_of(session)
    await set_members(session, *IDS)
    assert session.topology == "mesh" and engine.joins == 1
    assert "sfu_unreachable" in events
    kept = mesh_of(session)
    assert all(kept[p] is before[p] and not before[p].closed for p in before)  # not rebuilt
    await settle()
    assert all(not link.closed for link in before.values()) and not session.moves
    await session.close()


async def test_back_to_the_sfu_while_leaving_it_keeps_a_path_throughout(
    tmp_path: Path, fast_moves: None
) -> None:
    """SFU -> mesh -> SFU within one overlap: the room is never left, the new mesh links
    stay until the room shows their members again (more frames than at the move), and the
    move to the mesh is superseded (it would leave the room it is in again)."""
    engine, events = Engine(), []
    session = make_session(tmp_path, engine, events)
    await set_members(session, *IDS)
    engine.room_video.update(bravo=10, charlie=10, delta=10)
    await settle()
    assert session.topology == "sfu" and not session.peers
    await set_members(session, "alpha", "bravo", "charlie")  # delta leaves: a mesh again
    assert session.topology == "mesh" and engine.in_conference
    mesh = mesh_of(session)
    assert set(mesh) == {"bravo", "charlie"}  # made while the room still shows them
    await set_members(session, *IDS)  # delta is back before the room was left
    assert session.topology == "sfu" and engine.in_conference and engine.joins == 1
    await asyncio.sleep(0.3)
    assert not any(link.closed for link in mesh.values())  # no more frames through the room
    engine.room_video.update(bravo=11, charlie=12)
    await settle()
    assert all(link.closed for link in mesh.values())
    assert engine.in_conference and engine.leaves == 0  # the superseded move left nothing
    assert [m["topology"] for m in session.moves] == ["sfu", "sfu"]
    await session.close()


async def test_back_to_a_mesh_leaves_the_room_once_the_mesh_shows_everyone(
    tmp_path: Path, fast_moves: None
) -> None:
    engine, events = Engine(), []
    session = make_session(tmp_path, engine, events)
    await set_members(session, *IDS)
    await settle()
    await set_members(session, "alpha", "bravo", "charlie")
    mesh = mesh_of(session)
    mesh["bravo"].video_frames = 5
    await asyncio.sleep(0.3)
    assert engine.in_conference  # charlie's link shows nothing yet: the room stays
    mesh["charlie"].video_frames = 1
    await settle()
    assert not engine.in_conference and engine.leaves == 1
    assert session.moves[-1]["topology"] == "mesh" and session.moves[-1]["not_shown"] == []
    await session.close()


async def test_a_conference_that_keeps_breaking_is_a_mesh_until_the_retry(
    tmp_path: Path, fast_moves: None
) -> None:
    """An SFU that takes every join and then drops it (failing, or hostile) gets two rejoins;
    the third break within the window makes the call a mesh until the SFU retry."""
    engine, events = Engine(), []
    session = make_session(tmp_path, engine, events)
    await set_members(session, *IDS)
    assert session.topology == "sfu" and engine.joins == 1

    async def breaks(at: float) -> None:
        engine.broken = True
        session._watch_own_upstream(at)  # broken since now
        session._watch_own_upstream(at + session_module.SFU_REJOIN_AFTER_S)  # rejoin
        assert session._sfu_rejoining
        while session._sfu_rejoining:
            await asyncio.sleep(0.01)

    await breaks(100.0)
    await breaks(200.0)
    assert session.topology == "sfu" and engine.in_conference and engine.joins == 3
    assert session.sfu_rejoins == 2 and "sfu_unreachable" not in events
    await breaks(300.0)
    assert session.sfu_rejoins == 3 and events.count("sfu_rejoin") == 3
    assert session.topology == "mesh" and not engine.in_conference and engine.joins == 3
    assert set(session.peers) == {"bravo", "charlie", "delta"}  # a mesh of the four
    assert "sfu_unreachable" in events
    assert session._sfu_failed_at is not None  # the SFU retry takes it from here
    assert session._sfu_retry_s() == session_module.SFU_RETRY_S
    # the retry joins (what _retry_sfu does once the SFU answers); it breaks three times
    # again within the window: the next retry waits twice as long
    session._sfu_failed_at = None
    await session._sync_peers(session.machine.members)
    assert session.topology == "sfu" and engine.joins == 4
    for at in (400.0, 500.0, 600.0):
        await breaks(at)
    assert session.topology == "mesh" and session.sfu_rejoins == 6
    assert session._sfu_retry_s() == 2 * session_module.SFU_RETRY_S
    # a whole window through the SFU without a break: trusted as new again
    session._sfu_failed_at = None
    await session._sync_peers(session.machine.members)
    session._watch_own_upstream(time.monotonic() + session_module.SFU_REJOIN_WINDOW_S + 1)
    assert session._sfu_unstable == 0
    await session.close()
