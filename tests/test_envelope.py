"""Signed envelopes: round trip, every refusal, sequence numbers across restarts."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.encoding import decode, encode
from hotline.envelope import (
    DEFAULT_MAX_ENVELOPE_SIZE,
    ENVELOPE_LABEL,
    SEQ_SHIFT,
    Envelope,
    SequenceCounter,
    SequenceTracker,
)
from hotline.errors import (
    CounterExhausted,
    EncodingError,
    EnvelopeError,
    MisroutedEnvelope,
    ReplayError,
    SignatureError,
    StaleEnvelope,
    TooLarge,
    UnknownMember,
    UnknownRecipient,
)
from hotline.keys import SigningKey

from .charters import KEYS as POOL
from .charters import make_charter, sign_all

# a real two-site charter: a = sochi-principal, b = sochi-interpreter, c = wh-principal
NAMES = {"a": "sochi-principal", "b": "sochi-interpreter", "c": "wh-principal"}
KEYS = {"a": POOL[2], "b": POOL[3], "c": POOL[4]}
SIGNED = sign_all(make_charter())
CHARTER = SIGNED.charter
LINE = CHARTER.line_id


def _env(sender: str = "a", recipient: str | None = "b", seq: int = 1, **kw: object) -> Envelope:
    args: dict[str, object] = {
        "line_id": LINE,
        "sender": NAMES[sender],
        "recipient": NAMES.get(recipient, recipient) if recipient else None,
        "seq": seq,
        "timestamp_ms": 1_700_000_000_000,
        "msg_type": "call.offer",
        "body": b"hello",
    }
    args.update(kw)
    return Envelope.create(KEYS[sender], **args)  # type: ignore[arg-type]


def test_round_trip_and_verify() -> None:
    env = _env()
    data = env.to_bytes()
    back = Envelope.from_bytes(data)
    assert back == env and back.raw == data
    back.verify(CHARTER)
    back.verify(SIGNED)  # a signed charter is unwrapped
    broadcast = _env(recipient=None)
    Envelope.from_bytes(broadcast.to_bytes()).verify(CHARTER)
    assert "body" not in broadcast.describe() and "hello" not in broadcast.describe()


def test_wire_form_is_the_documented_dict() -> None:
    obj = decode(_env().to_bytes())
    assert isinstance(obj, dict)
    assert set(obj) == {"v", "line", "from", "to", "seq", "ts", "type", "body", "sig"}
    assert obj["from"] == NAMES["a"] and obj["to"] == NAMES["b"] and obj["v"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from", "wh-principal"),
        ("to", "wh-principal"),
        ("seq", 2),
        ("ts", 5),
        ("type", "call.answer"),
        ("body", b"hellO"),
    ],
)
def test_any_changed_field_breaks_the_signature(field: str, value: object) -> None:
    obj = decode(_env().to_bytes())
    assert isinstance(obj, dict)
    obj[field] = value  # type: ignore[assignment]
    tampered = Envelope.from_bytes(encode(obj))
    with pytest.raises(SignatureError):
        tampered.verify(CHARTER)


def test_wrong_line_unknown_sender_unknown_recipient() -> None:
    with pytest.raises(MisroutedEnvelope) as info:
        _env(line_id="line-2").verify(CHARTER)
    assert info.value.reason == "wrong_line"
    stranger = SigningKey.generate()
    env = Envelope.create(
        stranger,
        line_id=LINE,
        sender="zz",
        recipient=NAMES["a"],
        seq=1,
        timestamp_ms=0,
        msg_type="x",
        body=b"",
    )
    with pytest.raises(UnknownMember):
        env.verify(CHARTER)
    with pytest.raises(UnknownRecipient):
        _env(recipient="zz").verify(CHARTER)
    # an enrolled name, signed with another key: a forgery
    forged = Envelope.create(
        stranger,
        line_id=LINE,
        sender=NAMES["a"],
        recipient=NAMES["b"],
        seq=1,
        timestamp_ms=0,
        msg_type="x",
        body=b"",
    )
    with pytest.raises(SignatureError):
        forged.verify(CHARTER)


def test_parse_refusals() -> None:
    good = decode(_env().to_bytes())
    assert isinstance(good, dict)
    with pytest.raises(TooLarge):
        Envelope.from_bytes(_env(body=b"x" * 2000).to_bytes(), max_size=1000)
    assert Envelope.from_bytes(_env(body=b"x" * 2000).to_bytes(), max_size=4000).body == b"x" * 2000
    bad: list[dict[str, object]] = [
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "ts"},
        {**good, "v": 2},
        {**good, "to": 5},
        {**good, "sig": b"short"},
        {**good, "seq": -1},
        {**good, "type": "Bad Type"},
        {**good, "from": ""},
        {**good, "line": "x" * 200},
        {**good, "body": "not bytes"},
    ]
    for obj in bad:
        with pytest.raises(EncodingError):
            Envelope.from_bytes(encode(obj))
    with pytest.raises(EncodingError):
        Envelope.from_bytes(b"\x00garbage")
    with pytest.raises(EncodingError):
        Envelope.from_bytes(encode([1, 2]))
    with pytest.raises(EncodingError):
        _env(msg_type="UPPER")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError, EncodingError, TooLarge):
        Envelope.from_bytes(data)


def test_freshness() -> None:
    env = _env(timestamp_ms=100_000)
    env.check_fresh(150_000, max_age_ms=60_000, max_future_ms=5_000)
    env.check_fresh(96_000, max_age_ms=60_000, max_future_ms=5_000)
    with pytest.raises(StaleEnvelope):
        env.check_fresh(170_001, max_age_ms=60_000, max_future_ms=5_000)
    with pytest.raises(StaleEnvelope):
        env.check_fresh(94_000, max_age_ms=60_000, max_future_ms=5_000)


def test_tracker_refuses_duplicates_and_reordering() -> None:
    tracker = SequenceTracker()
    tracker.accept(_env(seq=5))
    tracker.accept(_env(sender="c", seq=1))  # senders are independent
    with pytest.raises(ReplayError):
        tracker.accept(_env(seq=5))
    with pytest.raises(ReplayError):
        tracker.accept(_env(seq=3))
    tracker.accept(_env(seq=9))  # gaps are fine: a recipient sees only what is for it
    assert tracker.highest(NAMES["a"]) == 9
    restored = SequenceTracker(tracker.snapshot())
    with pytest.raises(ReplayError):
        restored.check(NAMES["a"], 9)
    restored.forget(NAMES["a"])
    restored.check(NAMES["a"], 1)


def test_counter_is_monotonic_across_restarts() -> None:
    first = SequenceCounter(now_ms=1_700_000_000_000)
    used = [first.next() for _ in range(1000)]
    assert used == sorted(set(used))
    assert used[0] == 1_700_000_000_000 << SEQ_SHIFT
    # restarted one millisecond later: above everything the first run used
    second = SequenceCounter(now_ms=1_700_000_000_001)
    assert second.next() > used[-1]
    # clock went back: the persisted floor keeps the numbers above the old ones
    third = SequenceCounter(now_ms=1_600_000_000_000, floor=first.last)
    assert third.next() == first.last + 1
    big = SequenceCounter(now_ms=0, floor=(1 << 63) - 2)
    big.next()
    with pytest.raises(CounterExhausted):
        big.next()


def test_equality_ignores_raw() -> None:
    env = _env()
    assert replace(env, raw=b"") == env
    assert replace(env, raw=b"").to_bytes() == env.to_bytes()


def test_default_limit_is_generous_for_signalling() -> None:
    assert DEFAULT_MAX_ENVELOPE_SIZE >= 32 * 1024


def _reference_parse(data: bytes) -> dict[str, object]:
    """The envelope as the generic canonical decoder reads it."""
    obj = decode(data)
    if not isinstance(obj, dict) or set(obj) != {
        "v",
        "line",
        "from",
        "to",
        "seq",
        "ts",
        "type",
        "body",
        "sig",
    }:
        raise EncodingError("not an envelope")
    types = {
        "v": int,
        "line": str,
        "from": str,
        "seq": int,
        "ts": int,
        "type": str,
        "body": bytes,
        "sig": bytes,
    }
    for key, kind in types.items():
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise EncodingError(key)
    if obj["to"] is not None and not isinstance(obj["to"], str):
        raise EncodingError("to")
    return obj


@settings(max_examples=500, deadline=None)
@given(
    st.integers(min_value=0, max_value=400),
    st.binary(min_size=1, max_size=4),
    st.sampled_from(["flip", "insert", "delete"]),
    st.booleans(),
)
def test_fast_parser_accepts_exactly_the_canonical_layout(
    where: int, patch: bytes, how: str, broadcast: bool
) -> None:
    data = _env(recipient=None if broadcast else "b", body=b"\x00" * 40).to_bytes()
    where %= len(data)
    if how == "flip":
        mutated = data[:where] + bytes(b ^ 0x55 for b in patch) + data[where + len(patch) :]
    elif how == "insert":
        mutated = data[:where] + patch + data[where:]
    else:
        mutated = data[:where] + data[where + len(patch) :]
    try:
        reference: dict[str, object] | None = _reference_parse(mutated)
    except EncodingError:
        reference = None
    try:
        fast = Envelope.from_bytes(mutated)
    except EncodingError:
        fast = None
    if reference is None:
        assert fast is None
        return
    if fast is None:  # the field checks (ids, type names, sizes) refused it: same as before
        return
    assert (fast.line_id, fast.sender, fast.recipient, fast.seq, fast.timestamp_ms) == (
        reference["line"],
        reference["from"],
        reference["to"],
        reference["seq"],
        reference["ts"],
    )
    assert (fast.msg_type, fast.body, fast.signature) == (
        reference["type"],
        reference["body"],
        reference["sig"],
    )
    # the signed bytes cut from the wire are the canonical encoding without the signature
    without = {k: v for k, v in reference.items() if k != "sig"}
    assert fast.signed_bytes() == ENVELOPE_LABEL + encode(without)


def test_tracker_window_takes_reordered_envelopes_once() -> None:
    """An exchange that swaps two envelopes (an SDP offer before the key agreement it
    follows) must not break a call: within the window each is taken, each only once."""
    tracker = SequenceTracker(window=4)
    a = NAMES["a"]
    tracker.record(a, 10)
    tracker.record(a, 12)
    tracker.record(a, 11)  # late, never seen: taken
    with pytest.raises(ReplayError):
        tracker.record(a, 11)  # but only once
    with pytest.raises(ReplayError):
        tracker.record(a, 12)
    for seq in (13, 14, 15):
        tracker.record(a, seq)
    # the window holds 12..15 now: 10 and 11 fell out, anything at or below is refused
    with pytest.raises(ReplayError):
        tracker.record(a, 9)
    assert tracker.highest(a) == 15
    # after a restart from the snapshot: nothing at or below the highest, window or not
    restored = SequenceTracker(tracker.snapshot(), window=4)
    with pytest.raises(ReplayError):
        restored.record(a, 14)
    restored.record(a, 16)
