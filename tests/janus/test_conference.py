"""A conference of four Python terminals through a real Janus: every member decrypts every
other member's video and audio; Janus only ever held ciphertext."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from hotline.e2ee.media import MediaCrypto
from hotline.errors import JanusError
from hotline.media.aiortc_patch import FrameCrypto
from hotline.sfu.conference import SfuConference
from tests.janus.conference import (
    RecordingCrypto,
    RecordingPeer,
    conference,
    keyed_members,
    room_id,
    run_in_host,
    synthetic_source,
)
from tests.janus.server import JanusServer, janus_in_lab
from tests.netlab import Host

pytestmark = pytest.mark.timeout(300)

IDS = ("berlin", "london", "paris", "rome")


@pytest.fixture(scope="module")
def sfu_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, JanusServer]]:
    with janus_in_lab(tmp_path_factory.mktemp("janus-lab"), "sfu", seed=1) as pair:
        yield pair


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


def test_the_sfu_forwards_ciphertext_byte_for_byte_and_a_keyless_subscriber_sees_nothing(
    sfu_host: tuple[Host, JanusServer],
) -> None:
    """The hash audit: every frame a member received through Janus is, byte for byte, one
    its sender protected; none is a plaintext frame. A subscriber without the epoch's keys
    (what Janus, or anyone holding its feed, has) decodes no frame at all."""
    host, janus = sfu_host
    ids = IDS[:2]
    _, cryptos = keyed_members(ids, seed=2, make=RecordingCrypto)
    room, secret = room_id(), secrets.token_hex(16)
    peers: dict[tuple[str, str], RecordingPeer] = {}

    def recording(me: str) -> Callable[[str], FrameCrypto]:
        def make(member: str) -> FrameCrypto:
            peers[me, member] = RecordingPeer(cryptos[me].for_peer(member))
            return peers[me, member]

        return make

    async def main() -> tuple[SfuConference, set[str]]:
        terminals = {
            i: conference(janus.url, ids, cryptos, room, secret, frame_crypto_for=recording(i))[i]
            for i in ids
        }
        # a terminal that is no member of the epoch: it holds no key of it
        outsider = SfuConference(
            self_id="observer",
            url=janus.url,
            room=room,
            secret=secret,
            crypto=MediaCrypto(),
            source=synthetic_source("observer"),
            members=ids,
        )
        try:
            await terminals[ids[0]].create_room(publishers=3)
            for t in (*terminals.values(), outsider):
                await t.join()
            for t in terminals.values():
                (other,) = set(ids) - {t.self_id}
                assert await t.sinks_of(other)[0].wait_for(20, timeout=60), t.status()
            for member in ids:
                video, _ = outsider.sinks_of(member)
                assert not await video.wait_for(1, timeout=3)
            return outsider, set(outsider.downstream)
        finally:
            await asyncio.gather(*(t.close() for t in (*terminals.values(), outsider)))

    outsider, subscribed = run_in_host(host, main)
    for (me, member), peer in peers.items():
        sent = cast(RecordingCrypto, cryptos[member])
        assert len(peer.arrived) >= 20
        assert set(peer.arrived) <= sent.sent, f"{me} got frames {member} never sent"
        assert not set(peer.arrived) & sent.plain, "a plaintext frame crossed the SFU"
    assert subscribed == set(ids)  # Janus gave the outsider both feeds
    for member in ids:
        assert outsider.received(member).video_frames == 0
        assert outsider.received(member).audio_packets == 0
    stats = outsider.crypto_stats()
    assert stats.unprotected == 0
    assert stats.rejected.get("unknown_kid", 0) >= 20, stats.rejected
    assert stats.protected == 0  # no key, nothing sent
