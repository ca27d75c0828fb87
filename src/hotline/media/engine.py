"""Building peer connections safely: ICE settings, DTLS fingerprints, VP8 + Opus only.

- :func:`rtc_configuration` always passes ``iceServers`` explicitly: empty (host candidates
  only) or one of the charter's TURN relays, the one :func:`select_ice` (``media.turn``)
  found alive. aiortc falls back to a public STUN server when
  ``iceServers`` is ``None``; this module never lets that happen.
- :func:`set_ice_addresses` (a terminal setting) chooses the local addresses ICE gathers on;
  the default is loopback only, for tests and the demo.
- :func:`sdp_fingerprints` / :func:`check_fingerprints` / :func:`check_codecs` (from
  ``media.sdp``, the engine-free text rules) bind DTLS fingerprints and keep codecs E2EE-safe.
- :func:`force_e2ee_codecs` keeps every aiortc transceiver to VP8 (+ RTX) and Opus.
- :func:`create_peer_connection` does all of that and binds the frame crypto (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from hotline.errors import CodecRefused, SdpError, UsageError
from hotline.media import aiortc_patch
from hotline.media.aiortc_patch import FrameCrypto
from hotline.media.sdp import (
    ALLOWED_CODECS,
    FINGERPRINT_ALGORITHMS,
    DtlsFingerprint,
    check_codecs,
    check_fingerprints,
    sdp_fingerprints,
)
from hotline.media.stats import MediaCryptoStats
from hotline.media.turn import (
    IceSettings,
    SharedSecretCredentials,
    StaticCredentials,
    TurnRelay,
    select_ice,
)

__all__ = [
    "ALLOWED_CODECS",
    "FINGERPRINT_ALGORITHMS",
    "DtlsFingerprint",
    "IceSettings",
    "SharedSecretCredentials",
    "StaticCredentials",
    "TurnRelay",
    "check_codecs",
    "check_fingerprints",
    "sdp_fingerprints",
    "select_ice",
]


log = logging.getLogger(__name__)


def rtc_configuration(settings: IceSettings | None = None) -> RTCConfiguration:
    """An explicit ``RTCConfiguration``: never aiortc's default public STUN server."""
    settings = settings or IceSettings()
    servers: list[RTCIceServer] = []
    if settings.turn is not None:  # aiortc would ignore any other relay
        username, password = settings.turn.credentials.at(time.time())
        servers.append(RTCIceServer(urls=settings.turn.url, username=username, credential=password))
    if settings.relay_only and not servers:
        raise UsageError("relay-only ICE needs a TURN relay")  # it would gather nothing
    policy = RTCIceTransportPolicy.RELAY if settings.relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def set_ice_addresses(addresses: Sequence[str]) -> None:
    """The local addresses ICE gathers host candidates on, for this whole process.

    ``["loopback"]`` (the default): 127.0.0.1 only. ``["host"]``: every non-loopback address
    (aioice's own choice). Otherwise a list of local IP addresses. Raises ``UsageError``.
    """
    aiortc_patch.set_host_addresses(addresses)


def ice_addresses() -> tuple[str, ...]:
    return aiortc_patch.host_addresses()


def create_peer_connection(
    crypto: FrameCrypto | None,
    stats: MediaCryptoStats | None = None,
    settings: IceSettings | None = None,
) -> RTCPeerConnection:
    """A peer connection with explicit ICE settings and ``crypto`` bound to all its media.

    With ``crypto=None`` nothing is bound: the connection carries no media at all (fail
    closed), which is what a call whose E2EE has not completed must look like.
    """
    aiortc_patch.install()
    pc = RTCPeerConnection(configuration=rtc_configuration(settings))
    if crypto is not None:
        aiortc_patch.bind(pc, crypto, stats if stats is not None else MediaCryptoStats())
    return pc


#: how long closing a peer connection may hold up its caller; the rest goes on in background
CLOSE_WAIT_S = 0.25
_closing: set[asyncio.Task[None]] = set()


async def close_peer_connection(pc: RTCPeerConnection, wait_s: float = CLOSE_WAIT_S) -> None:
    """Close ``pc``, waiting at most ``wait_s``; the close finishes in the background.

    aiortc's ``close()`` waits until every TURN allocation is deleted, and a relay that died
    never answers: aioice retransmits the deletion for about half a minute. A transport being
    rebuilt because its relay died must not wait for that.
    """
    task = asyncio.ensure_future(pc.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    done, _ = await asyncio.wait({task}, timeout=wait_s)
    if not done:
        log.info(
            "peer connection still closing after %.1f s (a relay that does not answer)", wait_s
        )


# --- codecs -----------------------------------------------------------------------------


def _preferred(kind: str) -> list[RTCRtpCodecCapability]:
    allowed = ALLOWED_CODECS[kind]
    caps = RTCRtpReceiver.getCapabilities(kind)
    assert caps is not None
    chosen = [c for c in caps.codecs if c.mimeType.split("/")[1].lower() in allowed]
    if not any(c.mimeType.lower() != "video/rtx" for c in chosen):
        raise CodecRefused(f"aiortc offers no E2EE codec for {kind}")
    return chosen


def force_e2ee_codecs(pc: RTCPeerConnection) -> None:
    """Restrict every transceiver of ``pc`` to VP8 (+ RTX) / Opus.

    Call before ``createOffer`` and again before ``createAnswer`` (the answerer's transceivers
    appear with the remote offer).
    """
    red = aiortc_patch.red_allowed(pc)
    for transceiver in pc.getTransceivers():
        _force(transceiver, red)


def _force(transceiver: RTCRtpTransceiver, red: bool = True) -> None:
    if transceiver.kind in ALLOWED_CODECS:
        codecs = _preferred(transceiver.kind)
        if not red:  # aiortc's own audio path cannot send or receive RED
            codecs = [c for c in codecs if c.mimeType.lower() != "audio/red"]
        transceiver.setCodecPreferences(codecs)


def local_fingerprints(pc: RTCPeerConnection) -> tuple[DtlsFingerprint, ...]:
    """The fingerprints of ``pc``'s local description (after ``setLocalDescription``)."""
    description = pc.localDescription
    if description is None:
        raise SdpError("no local description yet")
    return sdp_fingerprints(description.sdp)


# --- direct negotiation (tests and benchmarks: no signalling) ---------------------------


async def negotiate_direct(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    """Offer/answer between two peer connections of this process, without signalling.

    Forces VP8 + Opus on both sides and checks the answer's codecs. (The call layer also
    checks each description's DTLS fingerprints against its signed envelope.)
    """
    force_e2ee_codecs(offerer)
    await offerer.setLocalDescription(await offerer.createOffer())
    offer = offerer.localDescription
    await answerer.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type=offer.type))
    force_e2ee_codecs(answerer)
    await answerer.setLocalDescription(await answerer.createAnswer())
    answer = answerer.localDescription
    check_codecs(answer.sdp)
    await offerer.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))
