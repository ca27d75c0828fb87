"""Building peer connections safely: ICE settings, DTLS fingerprints, VP8 + Opus only.

- :func:`rtc_configuration` always passes ``iceServers`` explicitly: empty (host candidates
  only) or one of the charter's TURN relays, the one :func:`select_ice` (``media.turn``)
  found alive. aiortc falls back to a public STUN server when
  ``iceServers`` is ``None``; this module never lets that happen.
- :func:`set_ice_addresses` (a terminal setting) chooses the local addresses ICE gathers on;
  the default is loopback only, for tests and the demo.
- :func:`sdp_fingerprints` / :func:`check_fingerprints` extract the DTLS certificate
  fingerprints from a session description, to bind them into signed signalling and to check
  that the remote description carries exactly the ones the signed envelope named.
- :func:`force_e2ee_codecs` / :func:`check_codecs` keep every media section to VP8 (+ RTX)
  and Opus, the codecs the frame-crypto seam can carry.
- :func:`create_peer_connection` does all of that and binds the frame crypto (fail closed).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

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

from hotline.errors import CodecRefused, FingerprintMismatch, SdpError, UsageError
from hotline.media import aiortc_patch
from hotline.media.aiortc_patch import FrameCrypto
from hotline.media.stats import MediaCryptoStats
from hotline.media.turn import (
    IceSettings,
    SharedSecretCredentials,
    StaticCredentials,
    TurnRelay,
    select_ice,
)

__all__ = [
    "IceSettings",
    "SharedSecretCredentials",
    "StaticCredentials",
    "TurnRelay",
    "select_ice",
]

#: DTLS fingerprint hash functions we accept (RFC 8122 names); SHA-1 is not among them
FINGERPRINT_ALGORITHMS = ("sha-256", "sha-384", "sha-512")
#: the codecs allowed in an m-section under E2EE, by kind (RTX only as VP8's retransmission)
ALLOWED_CODECS = {"video": ("vp8", "rtx"), "audio": ("opus",)}

log = logging.getLogger(__name__)

_FINGERPRINT_RE = re.compile(r"^a=fingerprint:(\S+)\s+([0-9A-Fa-f:]+)\s*$")
_RTPMAP_RE = re.compile(r"^a=rtpmap:(\d+)\s+([^/\s]+)/")
_MLINE_RE = re.compile(r"^m=(\w+)\s+\d+\s+\S+\s*(.*)$")


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
    for transceiver in pc.getTransceivers():
        _force(transceiver)


def _force(transceiver: RTCRtpTransceiver) -> None:
    if transceiver.kind in ALLOWED_CODECS:
        transceiver.setCodecPreferences(_preferred(transceiver.kind))


def check_codecs(sdp: str) -> None:
    """Raise :class:`CodecRefused` unless every audio/video section uses only E2EE codecs.

    Meant for answers (local or remote), where the negotiated codecs are final.
    """
    kind: str | None = None
    formats: dict[str, str] = {}
    sections: list[tuple[str, dict[str, str], list[str]]] = []
    payload_types: list[str] = []
    for line in sdp.splitlines():
        m = _MLINE_RE.match(line)
        if m:
            if kind is not None:
                sections.append((kind, formats, payload_types))
            kind, formats, payload_types = m.group(1), {}, m.group(2).split()
            continue
        r = _RTPMAP_RE.match(line)
        if r and kind is not None:
            formats[r.group(1)] = r.group(2).lower()
    if kind is not None:
        sections.append((kind, formats, payload_types))
    for kind, formats, payload_types in sections:
        if kind not in ALLOWED_CODECS:
            continue
        for pt in payload_types:
            name = formats.get(pt)
            if name is None or name not in ALLOWED_CODECS[kind]:
                raise CodecRefused(
                    f"{kind} section offers {name or 'payload ' + pt}: not E2EE-safe"
                )


# --- DTLS fingerprints ------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class DtlsFingerprint:
    """One ``a=fingerprint`` value, normalised: lower-case algorithm, upper-case hex."""

    algorithm: str
    value: str

    def __str__(self) -> str:
        return f"{self.algorithm} {self.value}"

    @classmethod
    def parse(cls, text: str) -> DtlsFingerprint:
        """Parse ``"sha-256 AB:CD:..."`` (the form carried in signed envelopes)."""
        parts = text.split()
        if len(parts) != 2:
            raise SdpError("a DTLS fingerprint is '<algorithm> <hex>'")
        return cls._make(parts[0], parts[1])

    @classmethod
    def _make(cls, algorithm: str, value: str) -> DtlsFingerprint:
        algorithm = algorithm.lower()
        value = value.upper()
        if algorithm not in FINGERPRINT_ALGORITHMS:
            raise SdpError(f"DTLS fingerprint algorithm {algorithm} is not accepted")
        octets = value.split(":")
        size = {"sha-256": 32, "sha-384": 48, "sha-512": 64}[algorithm]
        if len(octets) != size or any(not re.fullmatch(r"[0-9A-F]{2}", o) for o in octets):
            raise SdpError(f"malformed {algorithm} DTLS fingerprint")
        return cls(algorithm, value)


def sdp_fingerprints(sdp: str) -> tuple[DtlsFingerprint, ...]:
    """All DTLS fingerprints in ``sdp`` (session and media level), sorted and de-duplicated.

    Raises :class:`SdpError` when there is none or one is malformed or uses a weak hash.
    """
    found: set[DtlsFingerprint] = set()
    for line in sdp.splitlines():
        m = _FINGERPRINT_RE.match(line.strip())
        if m:
            found.add(DtlsFingerprint._make(m.group(1), m.group(2)))
        elif line.startswith("a=fingerprint:"):
            raise SdpError("malformed a=fingerprint line")
    if not found:
        raise SdpError("the session description carries no DTLS fingerprint")
    return tuple(sorted(found))


def local_fingerprints(pc: RTCPeerConnection) -> tuple[DtlsFingerprint, ...]:
    """The fingerprints of ``pc``'s local description (after ``setLocalDescription``)."""
    description = pc.localDescription
    if description is None:
        raise SdpError("no local description yet")
    return sdp_fingerprints(description.sdp)


def check_fingerprints(sdp: str, expected: Sequence[DtlsFingerprint | str]) -> None:
    """Raise :class:`FingerprintMismatch` unless ``sdp`` carries exactly ``expected``.

    ``expected`` comes from the signed envelope; every fingerprint in the SDP must be one of
    them and every one of them must be in the SDP, so a relay that swapped the SDP (and with
    it the DTLS certificate) is caught before any media flows.
    """
    want = {e if isinstance(e, DtlsFingerprint) else DtlsFingerprint.parse(e) for e in expected}
    if not want:
        raise FingerprintMismatch("no expected DTLS fingerprint given")
    got = set(sdp_fingerprints(sdp))
    want_text = "\n".join(str(f) for f in sorted(want)).encode()
    got_text = "\n".join(str(f) for f in sorted(got)).encode()
    if not hmac.compare_digest(want_text, got_text):
        raise FingerprintMismatch("the DTLS fingerprint differs from the signed one")


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
