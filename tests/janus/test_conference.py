"""A conference of four Python terminals through a real Janus: every member decrypts every
other member's video and audio; Janus only ever held ciphertext."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from hotline.errors import JanusError
from tests.conftest import require
from tests.janus.conference import (
    conference,
    keyed_members,
    room_id,
    run_in_host,
    synthetic_source,
)
from tests.janus.server import JanusServer, running_janus
from tests.netlab import Host, Lab, prerequisites

pytestmark = pytest.mark.timeout(300)

IDS = ("berlin", "london", "paris", "rome")


@pytest.fixture(scope="module")
def sfu_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, JanusServer]]:
    problem = prerequisites()
    require(problem is None, problem or "")
    with Lab(seed=1) as lab:
        host = lab.add_host("sfu")
        with running_janus(tmp_path_factory.mktemp("janus-lab"), host) as janus:
            yield host, janus


def test_four_terminals_through_janus_decrypt_every_other_member(
    sfu_host: tuple[Host, JanusServer],
) -> None:
    host, janus = sfu_host
    _, cryptos = keyed_members(IDS)
    room, secret = room_id(), secrets.token_hex(16)

    async def main() -> None:
        terminals = conference(janus.url, IDS, cryptos, room, secret)
        try:
            await terminals[IDS[0]].create_room(publishers=len(IDS))
            for t in terminals.values():  # one after the other: later ones find earlier feeds
                await t.join()
            for t in terminals.values():
                for other in IDS:
                    if other == t.self_id:
                        continue
                    video, audio = t.sinks_of(other)
                    assert await video.wait_for(20, timeout=60), (t.self_id, other, t.status())
                    assert await audio.wait_for(2, timeout=60), (t.self_id, other, t.status())
            for t in terminals.values():
                assert set(t.downstream) == set(IDS) - {t.self_id}
                for other in set(IDS) - {t.self_id}:
                    got = t.received(other)
                    assert got.video_frames >= 20 and got.audio_packets >= 2
                    assert got.corrupt_shown == 0, (t.self_id, other)
                stats = t.crypto_stats()
                assert stats.rejected_total == 0, stats.rejected
                assert stats.protected > 0 and stats.unprotected > 0
                assert not t.refused, t.refused
        finally:
            await asyncio.gather(*(t.close() for t in terminals.values()))
            await terminals[IDS[0]].session.close()

    run_in_host(host, main)


def test_janus_refuses_a_publisher_without_e2ee(sfu_host: tuple[Host, JanusServer]) -> None:
    host, janus = sfu_host
    _, cryptos = keyed_members(IDS[:2])

    async def main() -> int:
        from aiortc import RTCPeerConnection

        from hotline.media import engine

        t = conference(janus.url, IDS[:2], cryptos, room_id(), "s")[IDS[0]]
        pc: RTCPeerConnection | None = None
        try:
            await t.create_room(publishers=2)
            control = await t._ensure_control()
            await control.join_publisher(t.room, t.self_id)
            pc = engine.create_peer_connection(None)
            for track in synthetic_source("plain").subscribe():
                pc.addTransceiver(track, direction="sendonly")
            engine.force_e2ee_codecs(pc)
            await pc.setLocalDescription(await pc.createOffer())
            with pytest.raises(JanusError) as refused:
                await control.publish(pc.localDescription.sdp, e2ee=False)
            return refused.value.code
        finally:
            if pc is not None:
                await pc.close()
            await t.session.close()

    assert run_in_host(host, main) == 433
