"""Wire formats of the e2ee.* messages: round trips, strictness, and property tests."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotline.e2ee import messages as m
from hotline.e2ee.security_code import security_code
from hotline.encoding import Value, decode, encode
from hotline.errors import BadKeySignature, MalformedMessage, ProtocolVersionMismatch
from hotline.keys import SigningKey

KEY = SigningKey.generate()
OTHER = SigningKey.generate()
CTX = m.Context("line", "call", 7)
H32 = bytes(range(32))


def samples() -> dict[str, bytes]:
    entry = m.RosterEntry("a", KEY.public.raw, m.ephemeral_key_hash(b"e" * 32), H32)
    return {
        m.MSG_START: m.build_start(
            KEY,
            CTX,
            epoch=2,
            signer="a",
            members=["a", "b"],
            kem="X25519",
            suite="S",
            reason="join",
        ),
        m.MSG_EPHEMERAL: m.build_ephemeral(
            KEY, CTX, epoch=2, signer="a", kem="X25519", ek=b"e" * 32, commit=H32
        ),
        m.MSG_ROSTER: m.build_roster(
            KEY,
            CTX,
            epoch=2,
            signer="a",
            kem="X25519",
            suite="S",
            entries=[entry],
            secret_commit=H32,
        ),
        m.MSG_SECRET: m.build_secret(
            KEY, CTX, epoch=2, signer="a", recipient="b", roster_hash=H32, sealed=b"k" * 80
        ),
        m.MSG_CONFIRM: m.build_confirm(KEY, CTX, epoch=2, signer="a", roster_hash=H32, reveal=H32),
        m.MSG_ACK: m.build_ack(KEY, CTX, epoch=2, signer="a", roster_hash=H32, transcript_hash=H32),
    }


SAMPLES = samples()


@pytest.mark.parametrize("msg_type", m.MSG_TYPES)
def test_round_trip_and_signature(msg_type: str) -> None:
    body = SAMPLES[msg_type]
    msg = m.parse(msg_type, body)
    assert (msg.msg_type, msg.context, msg.epoch, msg.signer) == (msg_type, CTX, 2, "a")
    assert msg.body == body
    outer = decode(body)
    assert isinstance(outer, dict)
    assert msg.signed == encode(outer["signed"])  # cut from the body, equal to re-encoding
    msg.verify(KEY.public)
    with pytest.raises(BadKeySignature):
        msg.verify(OTHER.public)
    if isinstance(msg, m.Secret):
        assert (msg.recipient, msg.sealed) == ("b", b"k" * 80)
    # a body parsed as another type is refused: the label inside says which type it is
    for other in m.MSG_TYPES:
        if other != msg_type:
            with pytest.raises(MalformedMessage):
                m.parse(other, body)


def test_roster_hash_and_members() -> None:
    roster = m.parse(m.MSG_ROSTER, SAMPLES[m.MSG_ROSTER])
    assert isinstance(roster, m.RosterProposal)
    assert roster.members == ("a",)
    assert len(roster.roster_hash) == 32
    assert roster.secret_commit == H32


def test_messages_of_the_old_protocol_version_say_so() -> None:
    """A v1 terminal's messages (labels hotline.e2ee.v1.*, and its e2ee.sender_key kind)
    are refused as a version mismatch naming both versions, not as noise."""
    assert m.PROTOCOL_VERSION == 2 and all(".v2." in label for label in m.LABELS.values())
    for msg_type, body in SAMPLES.items():
        outer = decode(body)
        assert isinstance(outer, dict) and isinstance(outer["signed"], dict)
        signed = dict(outer["signed"])
        signed["t"] = str(signed["t"]).replace(".v2.", ".v1.")
        old = encode({"signed": signed, "sig": KEY.sign(encode(signed))})
        with pytest.raises(ProtocolVersionMismatch, match="v1; this terminal speaks v2"):
            m.parse(msg_type, old)
    v1_sender_key = encode({"signed": {"t": "hotline.e2ee.v1.sender_key"}, "sig": b"s" * 64})
    with pytest.raises(ProtocolVersionMismatch) as info:
        m.parse("e2ee.sender_key", v1_sender_key)
    assert info.value.reason == "e2ee_version_mismatch"
    with pytest.raises(ProtocolVersionMismatch):
        m.parse("e2ee.sender_key", b"not even HCE")


def test_strictness() -> None:
    outer = decode(SAMPLES[m.MSG_ACK])
    assert isinstance(outer, dict)
    signed = outer["signed"]
    assert isinstance(signed, dict)

    def variant(**changes: Value) -> bytes:
        s = dict(signed)
        s.update(changes)
        return encode({"signed": s, "sig": outer["sig"]})

    bad = [
        variant(extra=1),
        variant(epoch=0),
        variant(epoch=1 << 56),
        variant(epoch="2"),
        variant(roster=b"short"),
        variant(**{"from": ""}),
        variant(**{"from": "x" * 129}),
        variant(cv=-1),
        encode({"signed": signed, "sig": outer["sig"], "more": 1}),
        encode({"signed": signed, "sig": b"x" * 63}),
        encode([signed]),
        SAMPLES[m.MSG_ACK] + b"\x00",
    ]
    for body in bad:
        with pytest.raises(MalformedMessage):
            m.parse(m.MSG_ACK, body)
    start = decode(SAMPLES[m.MSG_START])
    assert isinstance(start, dict) and isinstance(start["signed"], dict)
    for members in (["b", "a"], ["a", "a"], [], ["a", 3], "ab"):
        s = dict(start["signed"])
        s["members"] = members
        with pytest.raises(MalformedMessage):
            m.parse(m.MSG_START, encode({"signed": s, "sig": start["sig"]}))
    with pytest.raises(MalformedMessage):
        m.parse("e2ee.unknown", SAMPLES[m.MSG_ACK])


def test_commitment_binds_member_and_epoch() -> None:
    n = os.urandom(32)
    c = m.commitment(3, "a", n)
    assert c != m.commitment(3, "b", n) and c != m.commitment(4, "a", n)
    assert c != m.commitment(3, "a", os.urandom(32))


def test_security_code_format_and_sensitivity() -> None:
    reveals = {"a": b"\x01" * 32, "b": b"\x02" * 32}
    code = security_code(H32, reveals)
    groups = code.split(" ")
    assert len(groups) == 3 and all(len(g) == 4 and g.isdigit() for g in groups)
    assert security_code(H32, dict(reversed(reveals.items()))) == code  # order-free
    assert security_code(bytes(32), reveals) != code
    assert security_code(H32, {**reveals, "b": b"\x03" * 32}) != code
    assert security_code(H32, {"a": b"\x01" * 32, "c": b"\x02" * 32}) != code


# --- property tests: arbitrary input gives only MalformedMessage ------------------------------

hce_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.binary(max_size=40)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["signed", "sig", "roster_sig", "t", "epoch", "from", "members", "x"]),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(m.MSG_TYPES), st.binary(max_size=200))
def test_parse_arbitrary_bytes(msg_type: str, data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        m.parse(msg_type, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(m.MSG_TYPES), hce_values)
def test_parse_arbitrary_values(msg_type: str, value: Value) -> None:
    with pytest.raises(MalformedMessage):
        m.parse(msg_type, encode(value))


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(m.MSG_TYPES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=3),
)
def test_parse_mutated_bodies(msg_type: str, flips: list[tuple[int, int]]) -> None:
    body = bytearray(SAMPLES[msg_type])
    for pos, mask in flips:
        body[pos % len(body)] ^= mask
    if bytes(body) == SAMPLES[msg_type]:
        return  # the flips cancelled out
    try:
        msg = m.parse(msg_type, bytes(body))
    except MalformedMessage:
        return
    # it still parses: then the signature must fail (or the flip hit only the signature)
    with pytest.raises(BadKeySignature):
        msg.verify(KEY.public)
        if isinstance(msg, m.SenderKey):
            msg.verify_roster_signature(KEY.public)
