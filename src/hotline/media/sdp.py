"""Session descriptions as text, without a media engine: the E2EE codec rule and DTLS
fingerprints (any engine's SDP: aiortc's, a browser's).

- :func:`check_codecs` keeps every media section to VP8 (+ RTX) and Opus, the codecs the
  frame crypto can carry.
- :func:`sdp_fingerprints` / :func:`check_fingerprints` extract the DTLS certificate
  fingerprints from a session description, to bind them into signed signalling and to check
  that the remote description carries exactly the ones the signed envelope named.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hotline.errors import CodecRefused, FingerprintMismatch, SdpError

#: DTLS fingerprint hash functions we accept (RFC 8122 names); SHA-1 is not among them
FINGERPRINT_ALGORITHMS = ("sha-256", "sha-384", "sha-512")
#: the codecs allowed in an m-section under E2EE, by kind (RTX only as VP8's retransmission)
ALLOWED_CODECS = {"video": ("vp8", "rtx"), "audio": ("red", "opus")}

_FINGERPRINT_RE = re.compile(r"^a=fingerprint:(\S+)\s+([0-9A-Fa-f:]+)\s*$")
_RTPMAP_RE = re.compile(r"^a=rtpmap:(\d+)\s+([^/\s]+)/")
_MLINE_RE = re.compile(r"^m=(\w+)\s+\d+\s+\S+\s*(.*)$")


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
