"""call.signalling: the offerer rule and the call.sdp body, shared by every media engine."""

from __future__ import annotations

import pytest

from hotline.call.machine import CallProtocolError
from hotline.call.signalling import (
    MAX_ATTEMPT,
    SdpMessage,
    check_binding,
    is_offerer,
    make_sdp_message,
    parse_sdp_message,
)
from hotline.encoding import encode
from hotline.errors import CodecRefused, FingerprintMismatch, SdpError

FP_A = ":".join(["AB"] * 32)
FP_B = ":".join(["CD"] * 32)


def sdp(fingerprint: str = FP_A, video: str = "VP8") -> str:
    return "\r\n".join(
        [
            "v=0",
            "o=- 1 1 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            f"a=fingerprint:sha-256 {fingerprint}",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
            f"a=rtpmap:96 {video}/90000",
            "a=rtpmap:97 rtx/90000",
            f"a=fingerprint:sha-256 {fingerprint}",
            "",
        ]
    )


def test_the_lower_terminal_id_offers() -> None:
    assert is_offerer("alpha", "bravo")
    assert not is_offerer("bravo", "alpha")


def test_body_round_trip_binds_the_fingerprints() -> None:
    message = make_sdp_message("call-1", "offer", sdp(), 3)
    assert message.fingerprints == (f"sha-256 {FP_A}",)
    parsed = parse_sdp_message(message.encode())
    assert parsed == message
    check_binding(parsed)


def test_a_swapped_sdp_or_codec_is_refused() -> None:
    signed = make_sdp_message("call-1", "answer", sdp(), 1)
    swapped = SdpMessage("call-1", "answer", sdp(FP_B), signed.fingerprints, 1)
    with pytest.raises(FingerprintMismatch):
        check_binding(parsed := parse_sdp_message(swapped.encode()))
    assert parsed.sdp != signed.sdp
    with pytest.raises(CodecRefused):
        check_binding(make_sdp_message("call-1", "offer", sdp(video="H264"), 1))
    with pytest.raises(SdpError):
        make_sdp_message("call-1", "offer", "v=0\r\n", 1)  # no fingerprint at all


@pytest.mark.parametrize(
    "body",
    [
        {"call": "c", "type": "pranswer", "sdp": "x", "fingerprints": []},
        {"call": "c", "type": "offer", "sdp": b"x", "fingerprints": []},
        {"call": "c", "type": "offer", "sdp": "x", "fingerprints": "sha-256 AB"},
        {"call": "c", "type": "offer", "sdp": "x", "fingerprints": [1]},
        {"call": "c", "type": "offer", "sdp": "x", "fingerprints": [], "attempt": 0},
        {"call": "c", "type": "offer", "sdp": "x", "fingerprints": [], "attempt": True},
        {"call": "c", "type": "offer", "sdp": "x", "fingerprints": [], "attempt": MAX_ATTEMPT + 1},
    ],
)
def test_malformed_bodies_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(CallProtocolError):
        parse_sdp_message(encode(body))  # type: ignore[arg-type]


def test_attempt_defaults_to_the_first() -> None:
    body = encode({"call": "c", "type": "offer", "sdp": "x", "fingerprints": []})
    assert parse_sdp_message(body).attempt == 1
