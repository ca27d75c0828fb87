"""Signalling of one call's transports, sans I/O and without a media engine.

Per pair of members the member with the lower terminal id offers (:func:`is_offerer`).
Offer and answer travel in signed envelopes of type ``call.sdp`` whose body is::

    {"call": CALL_ID, "type": "offer" | "answer", "sdp": SDP,
     "fingerprints": ["sha-256 AB:CD:...", ...], "attempt": N}

``fingerprints`` are the DTLS certificate fingerprints of ``sdp``: the envelope's signature
binds them to the sender's charter identity, and the receiver checks that the SDP carries
exactly them (:func:`check_binding`), and only E2EE codecs. ``attempt`` numbers the offers of
one pair (1 for the first transport, then one more per rebuild); an answer names the offer
it answers. Any engine (aiortc, a browser page) produces and consumes the same bodies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hotline.call.machine import CallProtocolError
from hotline.encoding import Value, decode, encode, expect_dict
from hotline.media.sdp import check_codecs, check_fingerprints, sdp_fingerprints

MSG_SDP: Final = "call.sdp"
MAX_ATTEMPT: Final = (1 << 32) - 1


def is_offerer(self_id: str, peer_id: str) -> bool:
    """The member with the lower terminal id offers the pair's transport."""
    return self_id < peer_id


@dataclass(frozen=True)
class SdpMessage:
    """One ``call.sdp`` body."""

    call: str
    kind: str  # "offer" or "answer"
    sdp: str
    fingerprints: tuple[str, ...]
    attempt: int = 1

    def encode(self) -> bytes:
        return encode(
            {
                "call": self.call,
                "type": self.kind,
                "sdp": self.sdp,
                "fingerprints": list[Value](self.fingerprints),
                "attempt": self.attempt,
            }
        )


def make_sdp_message(call_id: str, kind: str, sdp: str, attempt: int) -> SdpMessage:
    """Our own ``call.sdp``: the fingerprints are read from ``sdp`` itself."""
    prints = tuple(str(f) for f in sdp_fingerprints(sdp))
    return SdpMessage(call=call_id, kind=kind, sdp=sdp, fingerprints=prints, attempt=attempt)


def parse_sdp_message(body: bytes) -> SdpMessage:
    """Parse a received ``call.sdp`` body; raises :class:`CallProtocolError` if malformed."""
    fields = expect_dict(decode(body), MSG_SDP)
    call, kind, sdp, prints = (
        fields.get("call"),
        fields.get("type"),
        fields.get("sdp"),
        fields.get("fingerprints"),
    )
    attempt = fields.get("attempt", 1)
    if (
        not isinstance(sdp, str)
        or kind not in ("offer", "answer")
        or not isinstance(prints, list)
        or not all(isinstance(p, str) for p in prints)
        or not isinstance(attempt, int)
        or isinstance(attempt, bool)
        or not 1 <= attempt <= MAX_ATTEMPT
    ):
        raise CallProtocolError("call.sdp: malformed body")
    assert isinstance(kind, str)
    return SdpMessage(
        call=call if isinstance(call, str) else "",
        kind=kind,
        sdp=sdp,
        fingerprints=tuple(str(p) for p in prints),
        attempt=attempt,
    )


def check_binding(message: SdpMessage) -> None:
    """The SDP uses only E2EE codecs and carries exactly the signed fingerprints.

    Raises :class:`~hotline.errors.CodecRefused` or
    :class:`~hotline.errors.FingerprintMismatch` (or :class:`~hotline.errors.SdpError`).
    """
    check_codecs(message.sdp)
    check_fingerprints(message.sdp, message.fingerprints)
