"""Peer-connection helpers: explicit ICE config, host addresses, fingerprints, codecs."""

from __future__ import annotations

import re

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from hotline.errors import CodecRefused, FingerprintMismatch, SdpError, StateError, UsageError
from hotline.media import aiortc_patch, engine
from hotline.media.engine import DtlsFingerprint, IceSettings, StaticCredentials, TurnRelay
from hotline.media.sources import SyntheticAudioTrack, SyntheticVideoTrack
from tests.media.aesgcm_crypto import crypto_pair


def test_configuration_is_always_explicit() -> None:
    config = engine.rtc_configuration()
    assert config.iceServers == []  # never aiortc's fallback public STUN server
    assert config.iceTransportPolicy is RTCIceTransportPolicy.ALL
    turn = TurnRelay("turn:127.0.0.1:3478?transport=udp", StaticCredentials("user", "secret"))
    other = TurnRelay("turn:127.0.0.2:3478", StaticCredentials("user2", "secret2"))
    relay = engine.rtc_configuration(IceSettings(relays=(turn, other), relay_only=True))
    assert relay.iceTransportPolicy is RTCIceTransportPolicy.RELAY
    # only the first relay: aiortc would use no other
    assert [(s.urls, s.username, s.credential) for s in relay.iceServers or []] == [
        ("turn:127.0.0.1:3478?transport=udp", "user", "secret")
    ]
    with pytest.raises(UsageError):
        engine.rtc_configuration(IceSettings(relay_only=True))
    with pytest.raises(UsageError):
        TurnRelay("stun:127.0.0.1:3478", StaticCredentials("u", "p"))
    # URLs aiortc would silently skip are refused
    for url in ("turn:h:3478?transport=sctp", "turns:h:5349?transport=udp"):
        with pytest.raises(UsageError, match="supports turn: over udp or tcp"):
            TurnRelay(url, StaticCredentials("u", "p"))


async def _offer_sdp(pc: RTCPeerConnection) -> str:
    pc.addTrack(SyntheticAudioTrack())
    pc.addTrack(SyntheticVideoTrack("x", 320, 180, 15))
    engine.force_e2ee_codecs(pc)
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def test_host_candidates_follow_the_address_setting() -> None:
    assert engine.ice_addresses() == ("loopback",)
    pc = engine.create_peer_connection(None)
    try:
        sdp = await _offer_sdp(pc)
    finally:
        await pc.close()
    candidates = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
    assert candidates and all(" 127.0.0.1 " in c and " typ host" in c for c in candidates)
    assert "stun" not in sdp.lower() and "typ srflx" not in sdp
    # explicit addresses must exist here; nonsense is refused with a clear error
    engine.set_ice_addresses(["127.0.0.1"])
    assert aiortc_patch._get_host_addresses(True, True) == ["127.0.0.1"]
    for bad in (["no-such-address"], ["192.0.2.77"], []):
        with pytest.raises(UsageError):
            engine.set_ice_addresses(bad)
    engine.set_ice_addresses(["loopback"])
    assert aiortc_patch._get_host_addresses(True, False) == ["127.0.0.1"]
    assert aiortc_patch._get_host_addresses(False, True) == []


async def test_offer_is_vp8_and_opus_only() -> None:
    pc = engine.create_peer_connection(None)
    try:
        sdp = await _offer_sdp(pc)
    finally:
        await pc.close()
    rtpmaps = {
        line.split(" ", 1)[1].split("/")[0]
        for line in sdp.splitlines()
        if line.startswith("a=rtpmap:")
    }
    assert rtpmaps == {"red", "opus", "VP8", "rtx"}  # RED over Opus (media.red)
    engine.check_codecs(sdp)
    h264 = sdp.replace("VP8/90000", "H264/90000")
    with pytest.raises(CodecRefused):
        engine.check_codecs(h264)
    extra_pt = re.sub(r"^(m=audio [^\r\n]*)", r"\1 0", sdp, count=1, flags=re.M)
    assert extra_pt != sdp
    with pytest.raises(CodecRefused):  # a payload type with no rtpmap (PCMU's static 0)
        engine.check_codecs(extra_pt)


async def test_fingerprints_bind_the_sdp_to_its_peer_connection() -> None:
    a, c = engine.create_peer_connection(None), engine.create_peer_connection(None)
    try:
        sdp_a = await _offer_sdp(a)
        sdp_c = await _offer_sdp(c)
    finally:
        await a.close()
        await c.close()
    fps = engine.sdp_fingerprints(sdp_a)
    assert [f.algorithm for f in fps] == ["sha-256", "sha-384", "sha-512"]
    assert engine.local_fingerprints(a) == fps
    engine.check_fingerprints(sdp_a, fps)
    engine.check_fingerprints(sdp_a, [str(f) for f in fps])  # the envelope's text form
    assert DtlsFingerprint.parse(str(fps[0]).lower()) == fps[0]
    with pytest.raises(FingerprintMismatch):  # an SDP swapped by a relay
        engine.check_fingerprints(sdp_c, fps)
    with pytest.raises(FingerprintMismatch):  # only part of what the envelope named
        engine.check_fingerprints(sdp_a, fps[:1])
    with pytest.raises(FingerprintMismatch):
        engine.check_fingerprints(sdp_a, [])
    no_fp = "\n".join(line for line in sdp_a.splitlines() if not line.startswith("a=fingerprint"))
    with pytest.raises(SdpError):
        engine.sdp_fingerprints(no_fp)
    sha1 = no_fp + "\na=fingerprint:sha-1 " + ":".join(["AB"] * 20) + "\n"
    with pytest.raises(SdpError, match="not accepted"):
        engine.sdp_fingerprints(sha1)
    short = no_fp + "\na=fingerprint:sha-256 AB:CD\n"
    with pytest.raises(SdpError, match="malformed"):
        engine.sdp_fingerprints(short)


async def test_bind_rules() -> None:
    ca, _ = crypto_pair()
    pc = engine.create_peer_connection(ca)
    assert aiortc_patch.is_bound(pc)
    with pytest.raises(StateError):
        aiortc_patch.bind(pc, ca, aiortc_patch.MediaCryptoStats())
    aiortc_patch.unbind(pc)
    assert not aiortc_patch.is_bound(pc)
    await pc.close()
    with pytest.raises(StateError):  # too late: media may already have started
        aiortc_patch.bind(pc, ca, aiortc_patch.MediaCryptoStats())
