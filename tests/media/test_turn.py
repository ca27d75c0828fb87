"""TURN relays with a real coturn: credentials, probing, choosing a relay, relay-only calls.

Every call here is relay-only between two peer connections in this process; the relay is a
real ``turnserver`` on 127.0.0.1 started from the test's own configuration.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from hotline.errors import RelayUnavailable
from hotline.media import aiortc_patch, turn
from hotline.media.aiortc_patch import RtpView
from hotline.media.engine import IceSettings, SharedSecretCredentials, StaticCredentials, TurnRelay
from tests.conftest import require
from tests.media.aesgcm_crypto import crypto_pair
from tests.media.harness import close, connect, make_side
from tests.turnserver import LoopbackCapture, can_capture, free_port, running_turnserver

pytestmark = pytest.mark.timeout(60)


def test_shared_secret_credentials_follow_coturns_rest_scheme() -> None:
    username, password = turn.shared_secret_credentials(
        b"north-secret", "sochi-principal", 1_800_000_000
    )
    assert username == "1800000000:sochi-principal"
    # a second implementation of the scheme: base64(HMAC-SHA1(secret, username))
    expected = hmac.new(b"north-secret", username.encode(), hashlib.sha1).digest()
    assert password == base64.b64encode(expected).decode()
    creds = SharedSecretCredentials(b"north-secret", "t1", ttl_s=600)
    assert creds.at(1000.9) == turn.shared_secret_credentials(b"north-secret", "t1", 1600)
    assert "north-secret" not in repr(creds) and "pw" not in repr(StaticCredentials("u", "pw"))


def test_relays_that_failed_lately_are_tried_last() -> None:
    a, b, c = (TurnRelay(f"turn:r{i}:3478", StaticCredentials("u", "p")) for i in range(3))
    history = turn.RelayHistory(remember_s=30)
    assert history.order((a, b, c), now=100) == (a, b, c)
    history.failed(a.url, now=100)
    history.failed(b.url, now=110)
    assert history.order((a, b, c), now=120) == (c, a, b)  # charter order among the failed
    assert history.order((a, b, c), now=135) == (a, c, b)  # a's failure is forgotten
    history.succeeded(b.url)
    assert history.order((a, b, c), now=136) == (a, b, c)


def static(url: str, user: str = "sochi", password: str = "pw-sochi") -> TurnRelay:
    return TurnRelay(url, StaticCredentials(user, password))


def dead_relay_url() -> str:
    return f"turn:127.0.0.1:{free_port()}?transport=udp"


def relayed_pair(pc: RTCPeerConnection) -> tuple[str, str]:
    """Types of the nominated ICE pair (local, remote) of a bundled peer connection."""
    path = aiortc_patch.selected_path(pc)
    assert path is not None
    return path["local"], path["remote"]


def candidate_types(sdp: str) -> set[str]:
    return {
        line.split(" typ ", 1)[1].split()[0]
        for line in sdp.splitlines()
        if line.startswith("a=candidate:")
    }


@pytest.mark.slow
async def test_probe_and_select_in_charter_order(tmp_path: Path) -> None:
    users = {"sochi": "pw-sochi"}
    with (
        running_turnserver(tmp_path / "one", users=users) as one,
        running_turnserver(tmp_path / "two", users=users) as two,
    ):
        took = await turn.probe_relay(static(one.url))
        assert 0 < took < 0.5
        settings = IceSettings(
            relays=(static(one.url), static(two.url)), relay_only=True, probe_timeout_s=2.0
        )
        chosen = await turn.select_ice(settings)
        assert chosen.turn is not None and chosen.turn.url == one.url
        # the first relay dies: the next peer connection built moves to the second
        one.stop()
        start = time.monotonic()
        chosen = await turn.select_ice(settings)
        assert chosen.turn is not None and chosen.turn.url == two.url
        assert chosen.relay_only
        assert time.monotonic() - start < settings.probe_timeout_s + 1.0
        # the next choice (a rebuild, the next call) does not wait for the dead relay again
        start = time.monotonic()
        again = await turn.select_ice(settings)
        assert again.turn is not None and again.turn.url == two.url
        assert time.monotonic() - start < 1.0  # well under the dead relay's 2 s timeout
        # TURN over TCP to the same relay
        assert await turn.probe_relay(static(f"turn:127.0.0.1:{two.port}?transport=tcp")) < 0.5
        # wrong credentials: a clear refusal at once, not a hang
        start = time.monotonic()
        with pytest.raises(RelayUnavailable, match=r"refused this site's credentials \(401"):
            await turn.probe_relay(static(two.url, password="wrong"))
        assert time.monotonic() - start < 1.0
        bad = IceSettings(relays=(static(dead_relay_url()), static(two.url, password="x")),
                          relay_only=True, probe_timeout_s=0.3)  # fmt: skip
        with pytest.raises(RelayUnavailable) as refused:
            await turn.select_ice(bad)
        assert "no answer within 0.3 s" in str(refused.value)
        assert "401" in str(refused.value)
        # without relay-only, no usable relay means direct paths only
        direct = await turn.select_ice(IceSettings(relays=bad.relays, probe_timeout_s=0.3))
        assert direct.relays == () and not direct.relay_only
    assert await turn.select_ice(IceSettings()) == IceSettings()


@pytest.mark.slow
async def test_relay_only_call_carries_e2ee_media_and_the_relay_sees_only_srtp(
    tmp_path: Path,
) -> None:
    require(can_capture(), "capturing on the loopback interface needs root")
    users = {"sochi": "pw-sochi", "washington": "pw-washington"}
    sent: list[bytes] = []

    def record(view: RtpView) -> bytes:
        sent.append(view.data[view.payload_offset :])  # SFrame ciphertext, before SRTP
        return view.data

    with running_turnserver(tmp_path / "relay", users=users) as relay:
        ice_a = await turn.select_ice(IceSettings(relays=(static(relay.url),), relay_only=True))
        ice_b = await turn.select_ice(
            IceSettings(relays=(static(relay.url, "washington", "pw-washington"),), relay_only=True)
        )
        ca, cb = crypto_pair()
        with LoopbackCapture(relay.port) as capture:
            a = make_side("sochi", ca, tap=record, ice=ice_a)
            b = make_side("washington", cb, ice=ice_b)
            try:
                await connect(a, b)
                for side in (a, b):
                    # no host address of either side is ever offered
                    sdp = side.pc.localDescription.sdp
                    assert candidate_types(sdp) == {"relay"}
                    # nor its address as seen by the relay (the related address is hidden)
                    related = [ln.split(" raddr ")[1].split()[0]
                               for ln in sdp.splitlines() if " raddr " in ln]  # fmt: skip
                    assert related and set(related) == {"0.0.0.0"}
                assert await b.video_sink.wait_for(20, timeout=20)
                assert await a.video_sink.wait_for(20, timeout=20)
                assert await b.audio_sink.wait_for(2, timeout=10)
                assert relayed_pair(a.pc) == ("relay", "relay")
                assert relayed_pair(b.pc) == ("relay", "relay")
                for side in (a, b):
                    s = side.stats.to_dict()
                    assert s["video"]["decrypted"] >= 20 and s["video"]["rejected_total"] == 0
                    assert side.video_sink.unreadable <= 0.05 * side.video_sink.frames
            finally:
                await close(a, b)
    # what the relay received and sent: many datagrams, none carrying an RTP payload in clear
    assert len(capture.datagrams) > 200
    seen = b"".join(d for _, _, d in capture.datagrams)
    samples = [p for p in sent if len(p) >= 48]
    assert len(samples) > 100
    assert not any(p[16:48] in seen for p in samples[:300])
    media = [d[4:] for _, _, d in capture.datagrams if len(d) > 4 and 0x40 <= d[0] <= 0x4F]
    assert len(media) > 100  # TURN ChannelData (RFC 8656 §12.4), each holding one datagram
    rtp = [m for m in media if 128 <= m[0] <= 191]
    assert len(rtp) > 100  # SRTP / SRTCP
    assert all(m[0] <= 3 or 20 <= m[0] <= 63 or 128 <= m[0] <= 191 for m in media)  # RFC 7983


@pytest.mark.slow
async def test_shared_secret_relay_is_used_when_the_first_relay_is_down(tmp_path: Path) -> None:
    with running_turnserver(tmp_path / "relay", shared_secret="rest-api-secret") as relay:
        dead = static(dead_relay_url())

        def live(name: str) -> TurnRelay:
            return TurnRelay(relay.url, SharedSecretCredentials(b"rest-api-secret", name))

        relays_a, relays_b = (dead, live("sochi")), (dead, live("washington"))
        ice_a = await turn.select_ice(
            IceSettings(relays=relays_a, relay_only=True, probe_timeout_s=0.5)
        )
        ice_b = await turn.select_ice(
            IceSettings(relays=relays_b, relay_only=True, probe_timeout_s=0.5)
        )
        assert ice_a.turn is not None and ice_a.turn.url == relay.url
        ca, cb = crypto_pair()
        a, b = make_side("sochi", ca, ice=ice_a), make_side("washington", cb, ice=ice_b)
        try:
            await connect(a, b)
            assert await b.video_sink.wait_for(15, timeout=20)
            assert await a.video_sink.wait_for(15, timeout=20)
            assert relayed_pair(a.pc) == ("relay", "relay")
        finally:
            await close(a, b)
        await asyncio.sleep(0.2)
    assert "use-auth-secret" in relay.config()
