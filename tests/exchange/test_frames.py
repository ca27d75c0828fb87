"""Protocol frames: round trips, refusals, and the metrics text format."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotline.cli.exchange import parse_listen
from hotline.encoding import decode, encode
from hotline.errors import FrameError, TooLarge, UsageError
from hotline.exchange.frames import (
    Accepted,
    Ack,
    AdvertisedLimits,
    Challenge,
    CharterFrame,
    Deliver,
    Hello,
    Presence,
    Reject,
    Send,
    Welcome,
    auth_message,
    decode_client_frame,
    decode_server_frame,
    encode_deliver,
    encode_frame,
    is_loopback,
)
from hotline.exchange.metrics import Metrics

LIMITS = AdvertisedLimits(65536, 50.0, 200, 60.0)
SERVER_FRAMES = [
    Challenge(os.urandom(32), "sha256:" + "ab" * 32, "store", LIMITS),
    Welcome("t0", frozenset({"t0", "t1"}), None, 3),
    Welcome("t0", frozenset(), 12345, 1),
    Deliver(7, b"envelope bytes"),
    Accepted(99),
    Reject(5, "replay"),
    Reject(5, "queue_full", "t2"),
    Reject(None, "charter_rollback"),
    Presence(frozenset({"t1"})),
    CharterFrame(b"{}"),
]
CLIENT_FRAMES = [
    Hello("line-1", "t0", b"s" * 64, 0, 1),
    Send(b"envelope bytes"),
    Ack(12),
    CharterFrame(b"{}"),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES)
def test_server_frames_round_trip(frame: object) -> None:
    assert decode_server_frame(encode_frame(frame), 1 << 20) == frame  # type: ignore[arg-type]


@pytest.mark.parametrize("frame", CLIENT_FRAMES)
def test_client_frames_round_trip(frame: object) -> None:
    assert decode_client_frame(encode_frame(frame), 1 << 20) == frame  # type: ignore[arg-type]


def test_deliver_fast_path_matches() -> None:
    assert encode_deliver(7, b"abc") == encode_frame(Deliver(7, b"abc"))


def test_refusals() -> None:
    with pytest.raises(TooLarge):
        decode_client_frame(encode_frame(Send(b"x" * 100)), 50)
    bad_client = [
        encode({"t": "deliver", "id": 1, "env": b""}),  # a server frame from a terminal
        encode({"t": "env"}),
        encode(
            {
                "t": "hello",
                "line": "l",
                "terminal": "t",
                "sig": b"",
                "resume": -1,
                "charter_version": 1,
            }
        ),
        encode(
            {
                "t": "hello",
                "line": "",
                "terminal": "t",
                "sig": b"",
                "resume": 0,
                "charter_version": 1,
            }
        ),
        encode([1]),
        b"\xff",
    ]
    for data in bad_client:
        with pytest.raises(FrameError):
            decode_client_frame(data, 1 << 20)
    bad_server = [
        encode({"t": "hello"}),
        encode({"t": "deliver", "id": 0, "env": b""}),
        encode(
            {
                "t": "challenge",
                "v": 2,
                "challenge": b"c" * 32,
                "exchange": "e",
                "store": "s",
                "limits": LIMITS.to_value(),
            }
        ),
        encode(
            {
                "t": "challenge",
                "v": 1,
                "challenge": b"c",
                "exchange": "e",
                "store": "s",
                "limits": LIMITS.to_value(),
            }
        ),
        encode({"t": "presence", "online": [1]}),
        encode({"t": "reject", "seq": 1, "reason": "x", "to": 5}),
    ]
    for data in bad_server:
        with pytest.raises(FrameError):
            decode_server_frame(data, 1 << 20)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_frame_errors(data: bytes) -> None:
    for decoder in (decode_client_frame, decode_server_frame):
        with contextlib.suppress(FrameError, TooLarge):
            decoder(data, 150)


def test_auth_message_binds_every_field() -> None:
    base = auth_message(b"c" * 32, "ex", "line", "t0")
    assert (
        len(
            {
                base,
                auth_message(b"d" * 32, "ex", "line", "t0"),
                auth_message(b"c" * 32, "ex2", "line", "t0"),
                auth_message(b"c" * 32, "ex", "line2", "t0"),
                auth_message(b"c" * 32, "ex", "line", "t1"),
            }
        )
        == 5
    )


def test_loopback_and_listen() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.5.0.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("exchange.example")
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8443") == ("::1", 8443)
    assert parse_listen("127.0.0.1") == ("127.0.0.1", 7447)
    for bad in ("127.0.0.1:x", "127.0.0.1:70000", "[::1", "[::1]x", ":80"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_metrics_text_format() -> None:
    metrics = Metrics()
    metrics.inc("envelopes_routed_total", n=3)
    metrics.inc("envelopes_rejected_total", "replay")
    metrics.inc("envelopes_rejected_total", 'odd"reason\\')
    metrics.gauge("open_connections", lambda: 7)
    text = metrics.render()
    assert "# TYPE hotline_exchange_envelopes_routed_total counter" in text
    assert "hotline_exchange_envelopes_routed_total 3.0\n" in text
    assert 'hotline_exchange_envelopes_rejected_total{reason="replay"} 1.0\n' in text
    assert 'reason="odd\\"reason\\\\"' in text
    assert "hotline_exchange_open_connections 7.0\n" in text
    assert metrics.get("open_connections") == 7
    with pytest.raises(ValueError):
        metrics.inc("envelopes_rejected_total")  # needs a reason
    with pytest.raises(ValueError):
        metrics.inc("envelopes_routed_total", "x")
    with pytest.raises(KeyError):
        metrics.inc("no_such_metric")


@given(st.binary(max_size=100), st.integers(min_value=1, max_value=2**63 - 1))
def test_hot_path_frames_match_the_generic_decoder(env: bytes, delivery_id: int) -> None:
    send = encode_frame(Send(env))
    assert decode(send) == {"t": "env", "env": env}
    assert decode_client_frame(send, 1 << 20) == Send(env)
    deliver = encode_deliver(delivery_id, env)
    assert decode(deliver) == {"t": "deliver", "id": delivery_id, "env": env}
    assert decode_server_frame(deliver, 1 << 20) == Deliver(delivery_id, env)
    # damaged hot-path frames fall through to the generic decoder, which refuses them
    for damaged in (send[:-1], send + b"x"):
        with pytest.raises(FrameError):
            decode_client_frame(damaged, 1 << 20)
    for damaged in (deliver[:-1], deliver + b"\x00"):
        with pytest.raises(FrameError):
            decode_server_frame(damaged, 1 << 20)
    with pytest.raises(FrameError):
        decode_server_frame(encode_deliver(-delivery_id, env), 1 << 20)
