"""The routing core, driven without sockets: admission, routing, limits, store-and-forward."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotline.encoding import encode
from hotline.envelope import Envelope
from hotline.errors import (
    AuthenticationError,
    CharterRollback,
    EncodingError,
    HotlineError,
    MisroutedEnvelope,
    QueueFull,
    RateLimited,
    ReplayError,
    SignatureError,
    StateError,
    TooLarge,
    TooManyConnections,
    UnknownRecipient,
)
from hotline.exchange.frames import auth_message
from hotline.exchange.routing import (
    Limits,
    Refused,
    Routed,
    Router,
    Session,
    SourceGuard,
    TokenBucket,
)
from hotline.keys import SigningKey

from .lines import Line, make_line

EXCHANGE_ID = "sha256:" + "ab" * 32


class _Seq:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def _env(line: Line, sender: str, recipient: str | None, seq: int, **kw: object) -> bytes:
    key = kw.pop("key", line.keys[sender])
    assert isinstance(key, SigningKey)
    return Envelope.create(
        key,
        line_id=str(kw.pop("line_id", line.line_id)),
        sender=sender,
        recipient=recipient,
        seq=seq,
        timestamp_ms=1_000,
        msg_type="test",
        body=bytes(kw.pop("body", b"x")),  # type: ignore[call-overload]
    ).to_bytes()


def _router(line: Line, **limits: object) -> Router:
    router = Router(Limits(**limits))  # type: ignore[arg-type]
    router.set_charter(line.charter)
    return router


def _connect(
    router: Router, line: Line, terminal: str, now: float = 0.0, resume: int = 0
) -> Session:
    return router.connect(
        line_id=line.line_id, terminal_id=terminal, source="127.0.0.1", now=now, resume=resume
    ).session


def test_limits_are_validated() -> None:
    limits = Limits()
    assert limits.max_frame_size > limits.max_envelope_size
    assert limits.advertised().window_s == 60.0
    with pytest.raises(StateError):
        Limits(rate_per_s=0)
    with pytest.raises(StateError):
        Limits(max_queue=-1)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.delay(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert bucket.take(100.0) and bucket.tokens == pytest.approx(2)  # capped at burst


def test_source_guard_limits_connections_and_failures() -> None:
    guard = SourceGuard(
        Limits(
            max_connections_per_source=2,
            max_connections=3,
            auth_failures_per_source=3,
            auth_block_s=10,
        )
    )
    guard.open("a", 0)
    guard.open("a", 0)
    with pytest.raises(TooManyConnections):
        guard.open("a", 0)
    guard.open("b", 0)
    with pytest.raises(TooManyConnections):
        guard.open("c", 0)  # total
    guard.close("a")
    guard.open("c", 0)
    assert guard.connections("a") == 1
    with pytest.raises(StateError):
        guard.close("zz")
    assert not guard.auth_failed("x", 0)
    assert not guard.auth_failed("x", 1)
    assert guard.auth_failed("x", 2)
    guard.close("c")
    assert guard.blocked("x", 3)
    guard.open("x", 3)  # still opens: a hello that verifies must get in (issue 9, point 13)
    guard.close("x")
    assert not guard.blocked("x", 11)  # the first failure has aged out
    guard.open("x", 12.5)


def test_authenticate(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    router = _router(line)
    challenge = os.urandom(32)

    def sig(terminal: str, key: SigningKey, line_id: str = line.line_id) -> bytes:
        return key.sign(auth_message(challenge, EXCHANGE_ID, line_id, terminal))

    args = {"challenge": challenge, "exchange_id": EXCHANGE_ID}
    key = router.authenticate(
        **args, line_id=line.line_id, terminal_id="t0", signature=sig("t0", line.keys["t0"])
    )
    assert key == line.keys["t0"].public
    cases = [
        ("other-line", "t0", sig("t0", line.keys["t0"], "other-line"), "unknown_line"),
        (line.line_id, "t9", sig("t9", SigningKey.generate()), "unknown_member"),
        (line.line_id, "t0", sig("t0", SigningKey.generate()), "bad_signature"),  # unenrolled key
        (line.line_id, "t0", sig("t1", line.keys["t0"]), "bad_signature"),  # signed for t1
        (line.line_id, "t0", b"\x00" * 64, "bad_signature"),
    ]
    for line_id, terminal, signature, reason in cases:
        with pytest.raises(AuthenticationError) as info:
            router.authenticate(**args, line_id=line_id, terminal_id=terminal, signature=signature)
        assert info.value.reason == reason
    # a signature for another exchange does not verify here
    with pytest.raises(AuthenticationError):
        router.authenticate(
            challenge=challenge,
            exchange_id="sha256:" + "cd" * 32,
            line_id=line.line_id,
            terminal_id="t0",
            signature=sig("t0", line.keys["t0"]),
        )


def test_route_direct_and_broadcast_in_order(tmp_path: Path) -> None:
    line = make_line(tmp_path, 3)
    router = _router(line)
    s0, s1 = _connect(router, line, "t0"), _connect(router, line, "t1")
    assert router.online(line.line_id) == {"t0", "t1"}
    presence = router.take_presence()
    assert presence[0][1] == {"t0", "t1"} and router.take_presence() == []
    routed = _routed(router.submit(s0, _env(line, "t0", "t1", 1), now=1.0))
    assert [p.recipient for p in routed.deliveries] == ["t1"] and routed.wake == (s1,)
    routed = _routed(router.submit(s0, _env(line, "t0", None, 2), now=1.0))
    assert sorted(p.recipient for p in routed.deliveries) == ["t1", "t2"]  # t2 is offline
    assert routed.wake == (s1,)
    got = router.take(s1)
    assert [(p.sender, p.seq) for p in got] == [("t0", 1), ("t0", 2)]
    assert got[0].data == _env_data(got[0])  # forwarded as received
    assert router.take(s1) == []  # sent once
    assert len(router.pending(line.line_id, "t2")) == 1
    s2 = _connect(router, line, "t2")
    assert [p.seq for p in router.take(s2)] == [2]


def _env_data(p: object) -> bytes:
    data = p.data
    Envelope.from_bytes(data)
    return bytes(data)


def test_ack_reconnect_resume_exactly_once(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    router = _router(line)
    s0, s1 = _connect(router, line, "t0"), _connect(router, line, "t1")
    for seq in range(1, 6):
        router.submit(s0, _env(line, "t0", "t1", seq), now=1.0)
    first = router.take(s1, max_n=3)
    assert [p.seq for p in first] == [1, 2, 3]
    removed = router.ack(s1, first[1].delivery_id, now=1.0)  # processed 1 and 2
    assert [p.seq for p in removed] == [1, 2]
    # an ack for something never sent removes nothing more
    assert [p.seq for p in router.ack(s1, 10**9, now=1.0)] == [3]
    # t1 drops; t0 keeps sending; t1 comes back and gets everything unacknowledged, in order
    router.disconnect(s1)
    assert router.online(line.line_id) == {"t0"}
    router.submit(s0, _env(line, "t0", "t1", 6), now=2.0)
    s1b = _connect(router, line, "t1")
    assert [p.seq for p in router.take(s1b)] == [4, 5, 6]
    # another reconnect that says it processed up to seq 5
    pending = router.pending(line.line_id, "t1")
    connected = router.connect(
        line_id=line.line_id, terminal_id="t1", source="s", now=3.0, resume=pending[1].delivery_id
    )
    assert connected.superseded is s1b and s1b.closed
    assert [p.seq for p in connected.dropped] == [4, 5]
    assert [p.seq for p in router.take(connected.session)] == [6]
    assert router.take(s1b) == []  # the superseded session gets nothing
    assert not router.disconnect(s1b)  # not the current one: presence unchanged
    assert router.online(line.line_id) == {"t0", "t1"}


def test_window_expiry(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    router = _router(line, window_s=60.0)
    s0 = _connect(router, line, "t0")
    router.submit(s0, _env(line, "t0", "t1", 1), now=0.0)
    router.submit(s0, _env(line, "t0", "t1", 2), now=30.0)
    assert router.expire(59.0) == []
    assert [p.seq for p in router.expire(60.0)] == [1]
    assert [p.seq for p in router.expire(91.0)] == [2]
    assert router.pending_count() == 0


@pytest.mark.parametrize(
    ("make", "error", "reason"),
    [
        (lambda line: b"\x00garbage", EncodingError, "encoding"),
        (lambda line: encode({"t": 1}), EncodingError, "encoding"),
        (lambda line: _env(line, "t0", "t1", 1, body=b"x" * 5000), TooLarge, "too_large"),
        (lambda line: _env(line, "t0", "t1", 1, line_id="line-2"), MisroutedEnvelope, "wrong_line"),
        (lambda line: _env(line, "t1", "t0", 1), MisroutedEnvelope, "sender_mismatch"),
        (
            lambda line: _env(line, "t0", "t1", 1, key=SigningKey.generate()),
            SignatureError,
            "bad_signature",
        ),
    ],
)
def test_refusals(tmp_path: Path, make: object, error: type[HotlineError], reason: str) -> None:
    line = make_line(tmp_path, 2)
    router = _router(line, max_envelope_size=4096)
    s0 = _connect(router, line, "t0")
    with pytest.raises(error) as info:
        router.submit(s0, make(line), now=0.0)  # type: ignore[operator]
    assert info.value.reason == reason
    assert router.pending_count() == 0
    # the session still works for a good envelope (the server decides whether to close)
    router.submit(s0, _env(line, "t0", "t1", 1), now=0.0)


def _refused(result: Routed | Refused, error: type[HotlineError], reason: str) -> None:
    assert isinstance(result, Refused), result
    assert isinstance(result.error, error) and result.error.reason == reason


def _routed(result: Routed | Refused) -> Routed:
    assert isinstance(result, Routed), result
    return result


def test_soft_refusals_keep_the_session(tmp_path: Path) -> None:
    line = make_line(tmp_path, 3)
    router = _router(line, max_queue=2)
    s0 = _connect(router, line, "t0")
    router.submit(s0, _env(line, "t0", "t1", 10), now=0.0)
    _refused(router.submit(s0, _env(line, "t0", "t1", 10), now=0.0), ReplayError, "replay")
    _refused(router.submit(s0, _env(line, "t0", "t1", 9), now=0.0), ReplayError, "replay")
    _refused(
        router.submit(s0, _env(line, "t0", "t9", 11), now=0.0),
        UnknownRecipient,
        "unknown_recipient",
    )
    _refused(router.submit(s0, _env(line, "t0", "t0", 11), now=0.0), UnknownRecipient, "misrouted")
    router.submit(s0, _env(line, "t0", "t1", 11), now=0.0)
    _refused(router.submit(s0, _env(line, "t0", "t1", 12), now=0.0), QueueFull, "queue_full")
    assert router.last_seq(line.line_id, "t0") == 11  # a refused envelope does not count
    routed = _routed(router.submit(s0, _env(line, "t0", None, 12), now=0.0))
    assert [p.recipient for p in routed.deliveries] == ["t2"]
    assert routed.dropped == (("t1", "queue_full"),)


def test_flood_is_rate_limited(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    router = _router(line, rate_per_s=10, burst=5)
    s0 = _connect(router, line, "t0")
    seq = _Seq()
    for _ in range(5):
        router.submit(s0, _env(line, "t0", "t1", seq()), now=0.0)
    with pytest.raises(RateLimited):
        router.submit(s0, _env(line, "t0", "t1", seq()), now=0.0)
    router.submit(s0, _env(line, "t0", "t1", seq()), now=0.5)


def test_charter_update_evicts_and_refuses_rollback(tmp_path: Path) -> None:
    line = make_line(tmp_path, 3)
    router = _router(line)
    s0, s1, s2 = (_connect(router, line, t) for t in ("t0", "t1", "t2"))
    router.submit(s0, _env(line, "t0", "t1", 1), now=0.0)
    router.disconnect(s1)
    router.take_presence()
    v2 = line.with_version(2, drop=("t1", "t2"), add=("n1",))
    change = router.set_charter(v2.charter)
    assert change.evicted == (s2,) and s2.closed
    assert change.notify == (s0,)
    assert [p.recipient for p in change.dropped] == ["t1"]
    assert router.online(line.line_id) == {"t0"}
    assert router.take_presence()[0][1] == {"t0"}
    with pytest.raises(CharterRollback):
        router.set_charter(line.charter)
    assert router.set_charter(v2.charter).evicted == ()  # same version: nothing
    new = "n1"
    s_new = _connect(router, v2, new)
    router.submit(s0, _env(v2, "t0", new, 2), now=0.0)
    assert len(router.take(s_new)) == 1
    with pytest.raises(AuthenticationError):
        _connect(router, line, "t1")


def test_restore_after_restart(tmp_path: Path) -> None:
    line = make_line(tmp_path, 2)
    router = _router(line)
    s0 = _connect(router, line, "t0")
    for seq in (5, 6):
        router.submit(s0, _env(line, "t0", "t1", seq), now=0.0)
    kept = router.pending(line.line_id, "t1")
    other = make_line(tmp_path, 2, "gone-line")
    ghost = kept[0].__class__(**{**_fields(kept[0]), "line_id": "gone-line", "delivery_id": 99})
    fresh = Router(Limits())
    fresh.set_charter(line.charter)
    stale = fresh.restore(
        [*reversed(kept), ghost], {(line.line_id, "t0"): 6, ("gone-line", "t0"): 1}
    )
    assert stale == [ghost] and other.line_id == "gone-line"
    s1 = _connect(fresh, line, "t1")
    assert [p.seq for p in fresh.take(s1)] == [5, 6]
    s0b = _connect(fresh, line, "t0")
    _refused(fresh.submit(s0b, _env(line, "t0", "t1", 6), now=0.0), ReplayError, "replay")
    routed = _routed(fresh.submit(s0b, _env(line, "t0", "t1", 7), now=0.0))
    assert routed.deliveries[0].delivery_id > max(p.delivery_id for p in kept)
    assert routed.envelope_id > max(p.envelope_id for p in kept)


def _fields(p: object) -> dict[str, object]:
    return {name: getattr(p, name) for name in p.__slots__}  # type: ignore[attr-defined]
