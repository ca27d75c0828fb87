"""Signed frame digests (docs/protocol.md §11): the message, the signer, the verifier, and
the frame crypto's records."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.e2ee import messages as m
from hotline.e2ee import sframe
from hotline.e2ee.frame_digest import (
    DIGEST_INTERVAL_S,
    FAST_DIGEST_ENVELOPES_PER_S,
    FORGED,
    NOT_SENT,
    RETAIN_S,
    STRICT_DIGEST_INTERVAL_S,
    UNCHECKED,
    UNKNOWN_MEMBER,
    UNSIGNED,
    DigestSigner,
    DigestVerifier,
    FrameAuthenticity,
    FrameHashes,
    ReceivedFrame,
    SentFrame,
    digest_interval,
    frame_hash,
)
from hotline.e2ee.media import AUDIO, VIDEO, MediaCrypto
from hotline.encoding import decode, encode
from hotline.errors import (
    BadKeySignature,
    Equivocation,
    MalformedMessage,
    SenderMismatch,
    UncheckedFrame,
    WrongContext,
)
from hotline.keys import SigningKey

CTX = m.Context("line-a", "call-1", 3)
KID = sframe.make_kid(2, 1)
H = [os.urandom(16) for _ in range(8)]


def keys() -> dict[str, SigningKey]:
    return {"alice": SigningKey.generate(), "bob": SigningKey.generate()}


def auth_pair(strict: bool = True) -> tuple[dict[str, SigningKey], FrameAuthenticity]:
    ks = keys()
    directory = {i: k.public for i, k in ks.items()}
    bob = FrameAuthenticity(
        context=CTX, self_id="bob", identity_key=ks["bob"], directory=directory, strict=strict
    )
    return ks, bob


def digest(key: SigningKey, first: int, hashes: list[bytes], **kw: object) -> bytes:
    args: dict[str, object] = {"epoch": 2, "signer": "alice", "kid": KID, "first_ctr": first}
    args.update(kw)
    ctx = args.pop("ctx", CTX)
    assert isinstance(ctx, m.Context)
    return m.build_frame_digest(key, ctx, hashes=hashes, **args)  # type: ignore[arg-type]


# --- the message ----------------------------------------------------------------------------


def test_frame_digest_round_trip_and_signature() -> None:
    ks = keys()
    body = digest(ks["alice"], 100, H[:3])
    msg = m.parse(m.MSG_FRAME_DIGEST, body)
    assert isinstance(msg, m.FrameDigest)
    assert (msg.kid, msg.first_ctr, msg.last_ctr, msg.hashes) == (KID, 100, 102, tuple(H[:3]))
    assert (msg.context, msg.epoch, msg.signer) == (CTX, 2, "alice")
    signed = decode(msg.signed)
    assert isinstance(signed, dict) and signed["t"] == m.LABELS[m.MSG_FRAME_DIGEST]
    assert set(signed) == {"t", "line", "call", "cv", "epoch", "from", "kid", "first_ctr",
                           "last_ctr", "hashes"}  # fmt: skip
    msg.verify(ks["alice"].public)
    with pytest.raises(BadKeySignature):
        msg.verify(ks["bob"].public)
    assert m.MSG_FRAME_DIGEST not in m.MSG_TYPES  # not a key agreement step


def _resign(body: bytes, key: SigningKey, **changes: object) -> bytes:
    outer = decode(body)
    assert isinstance(outer, dict)
    signed = dict(outer["signed"])  # type: ignore[arg-type]
    signed.update(changes)  # type: ignore[arg-type]
    return encode({"signed": signed, "sig": key.sign(encode(signed))})


@pytest.mark.parametrize(
    "changes",
    [
        {"last_ctr": 103},  # more counters than hashes
        {"last_ctr": 99},  # before the first
        {"hashes": b"\x00" * 47},  # not a whole number of hashes
        {"kid": sframe.make_kid(3, 1)},  # a KID of another epoch
        {"first_ctr": -1},
        {"t": "hotline.e2ee.v1.ack"},
        {"extra": 1},
    ],
)
def test_malformed_frame_digests_are_refused(changes: dict[str, object]) -> None:
    key = SigningKey.generate()
    body = _resign(digest(key, 100, H[:3]), key, **changes)
    with pytest.raises(MalformedMessage):
        m.parse(m.MSG_FRAME_DIGEST, body)


def test_a_digest_covers_at_most_max_digest_frames() -> None:
    key = SigningKey.generate()
    ok = digest(key, 0, [bytes(16)] * m.MAX_DIGEST_FRAMES)
    m.parse(m.MSG_FRAME_DIGEST, ok)
    with pytest.raises(MalformedMessage):
        m.parse(m.MSG_FRAME_DIGEST, digest(key, 0, [bytes(16)] * (m.MAX_DIGEST_FRAMES + 1)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        m.parse(m.MSG_FRAME_DIGEST, data)


# --- the signer -----------------------------------------------------------------------------


def test_signer_ranges_gaps_and_epoch_end() -> None:
    s = DigestSigner(interval_s=1.0, gap_wait_s=0.5)
    assert not s.due(0.0)
    s.add([SentFrame(KID, c, H[c]) for c in (0, 1, 3)], 0.0)
    assert s.due(0.0)  # never signed yet
    [r] = s.take(0.0)  # counter 2 may still come: signed up to the gap
    assert (r.kid, r.first_ctr, r.hashes) == (KID, 0, (H[0], H[1]))
    assert s.take(0.4) == []
    [r] = s.take(0.5)  # the frame after the gap waited 0.5 s: counter 2 was never sent
    assert (r.first_ctr, r.hashes) == (2, (NOT_SENT, H[3]))
    s.add([SentFrame(KID, 2, H[2])], 0.6)  # too late: dropped, counted
    assert s.late == 1 and s.pending == 0
    s.add([SentFrame(KID, 4, H[4])], 0.6)
    assert not s.due(1.4) and s.due(1.5)  # a second after the last signing
    # a new epoch's KID: the old KID's last frames are signed at once
    new_kid = sframe.make_kid(3, 1)
    s.add([SentFrame(KID, 5, H[6]), SentFrame(new_kid, 0, H[5])], 0.7)
    assert s.due(0.7)
    ranges = s.take(0.7)
    assert [(r.kid, r.first_ctr, r.last_ctr) for r in ranges] == [(KID, 4, 5), (new_kid, 0, 0)]
    s.add([SentFrame(new_kid, 1, H[7])], 0.8)
    assert not s.due(1.0) and s.due(1.7)  # only the newest KID pending: once a second


def test_signer_frames_recorded_out_of_order() -> None:
    """The browser's worker records audio and video frames as their hashes complete, not
    in counter order: nothing is declared not sent while it may still come."""
    s = DigestSigner()
    s.add([SentFrame(KID, c, H[c]) for c in (1, 0, 3)], 0.0)
    [r] = s.take(0.1)
    assert r.hashes == (H[0], H[1])
    s.add([SentFrame(KID, c, H[c]) for c in (5, 2, 4)], 0.2)
    [r] = s.take(0.3)
    assert (r.first_ctr, r.hashes) == (2, (H[2], H[3], H[4], H[5]))
    s.add([SentFrame(KID, 7, H[7])], 0.3)
    [r] = s.take(0.3, force=True)  # hanging up: every gap now
    assert (r.first_ctr, r.hashes) == (6, (NOT_SENT, H[7]))
    assert s.late == 0


def test_signer_splits_long_runs() -> None:
    s = DigestSigner()
    n = m.MAX_DIGEST_FRAMES * 2 + 5
    s.add((SentFrame(KID, c, bytes(16)) for c in range(n)), 0.0)
    ranges = s.take(0.0)
    assert [len(r.hashes) for r in ranges] == [m.MAX_DIGEST_FRAMES, m.MAX_DIGEST_FRAMES, 5]
    assert [r.first_ctr for r in ranges] == [0, m.MAX_DIGEST_FRAMES, 2 * m.MAX_DIGEST_FRAMES]


# --- the verifier ---------------------------------------------------------------------------


def test_verifier_digest_before_or_after_the_frame() -> None:
    v = DigestVerifier(strict=True)
    v.frames([ReceivedFrame(KID, 0, H[0], "alice")], 0.0)  # frame first
    v.signed("alice", KID, 0, (H[0], H[1]), 0.5)
    v.frames([ReceivedFrame(KID, 1, H[1], "alice")], 0.6)  # digest first
    assert v.poll(5.0) == []
    assert v.stats().verified == {"alice": 2} and v.stats().pending == 0


def test_verifier_forged_alarm_at_once_and_throttled() -> None:
    v = DigestVerifier(strict=True)
    v.signed("alice", KID, 0, tuple(H[:4]), 0.0)
    v.frames([ReceivedFrame(KID, 0, H[7], "alice")], 0.1)
    [alarm] = v.poll(0.1)
    assert (alarm.member, alarm.reason, alarm.frames, alarm.first_ctr) == ("alice", FORGED, 1, 0)
    assert "alice" in alarm.message
    v.frames([ReceivedFrame(KID, c, H[7], "alice") for c in (1, 2)], 0.2)
    assert v.poll(0.5) == []  # at most one alarm a second per member and reason
    [again] = v.poll(1.1)
    assert (again.frames, again.first_ctr) == (2, 1)
    assert v.stats().unauthenticated == {"alice": 3}


def test_verifier_a_not_sent_counter_is_a_forgery() -> None:
    v = DigestVerifier(strict=True)
    v.signed("alice", KID, 0, (H[0], NOT_SENT), 0.0)
    v.frames([ReceivedFrame(KID, 1, H[1], "alice")], 0.1)
    [alarm] = v.poll(0.1)
    assert alarm.reason == FORGED


def test_verifier_matches_only_the_kids_own_member() -> None:
    """A digest signed by bob for counters of a KID whose frames are alice's covers
    nothing: the frames stay unsigned (alarm), bob's entry is never used."""
    v = DigestVerifier(strict=True)
    v.signed("bob", KID, 0, (H[0],), 0.0)
    v.frames([ReceivedFrame(KID, 0, H[0], "alice")], 0.0)
    assert v.poll(1.9) == []
    [alarm] = v.poll(2.0)
    assert (alarm.member, alarm.reason) == ("alice", UNSIGNED)


def test_verifier_unsigned_strict_and_mesh() -> None:
    for strict in (True, False):
        v = DigestVerifier(strict=strict)
        v.frames([ReceivedFrame(KID, c, H[c], "alice") for c in range(3)], 0.0)
        assert v.poll(1.99) == []
        alarms = v.poll(2.0)
        if strict:
            assert [(a.reason, a.frames) for a in alarms] == [(UNSIGNED, 3)]
            assert v.stats().unauthenticated == {"alice": 3} and v.stats().unsigned == {}
        else:  # a mesh: the connection binds the frame; counted, no alarm
            assert alarms == [] and v.stats().unsigned == {"alice": 3}
            assert v.stats().unauthenticated == {}


def test_verifier_keeps_signed_hashes_for_retain_s() -> None:
    v = DigestVerifier(strict=True)
    v.signed("alice", KID, 0, (H[0], H[1]), 0.0)
    v.frames([ReceivedFrame(KID, 0, H[0], "alice")], RETAIN_S - 0.1)
    v.poll(RETAIN_S)  # prunes what was signed RETAIN_S ago
    v.frames([ReceivedFrame(KID, 1, H[1], "alice")], RETAIN_S + 0.1)
    assert v.stats().verified == {"alice": 1} and v.stats().pending == 1
    # how long the signature waited for its frame (a receiver that records frames late)
    assert v.stats().frame_wait_s == {"alice": pytest.approx(RETAIN_S - 0.1)}


def test_verifier_measures_how_long_frames_wait_for_their_signature() -> None:
    v = DigestVerifier(strict=True)
    v.frames([ReceivedFrame(KID, c, H[c], "alice") for c in range(2)], 0.0)
    v.signed("alice", KID, 0, (H[0],), 0.4)
    v.signed("alice", KID, 1, (H[1],), 1.5)
    assert v.stats().cover_wait_s == {"alice": pytest.approx(1.5)}
    assert v.stats().frame_wait_s == {} and v.stats().verified == {"alice": 2}


def test_verifier_refuses_a_conflicting_digest_and_keeps_nothing_of_it() -> None:
    v = DigestVerifier(strict=True)
    v.signed("alice", KID, 0, (H[0], H[1]), 0.0)
    with pytest.raises(Equivocation) as info:
        v.signed("alice", KID, 1, (H[5], H[2]), 0.1)
    assert info.value.reason == "conflicting_digest"
    v.frames([ReceivedFrame(KID, 2, H[2], "alice")], 0.2)  # counter 2 was not kept
    assert v.stats().pending == 1


# --- one call's authenticity: message checks --------------------------------------------------


def test_authenticity_receive_checks() -> None:
    ks, bob = auth_pair()
    good = digest(ks["alice"], 0, H[:2])
    with pytest.raises(SenderMismatch):
        bob.receive("mallory", good, 0.0)  # the exchange says someone else sent it
    with pytest.raises(BadKeySignature):
        bob.receive("alice", digest(ks["bob"], 0, H[:2]), 0.0)
    with pytest.raises(WrongContext):
        bob.receive("alice", digest(ks["alice"], 0, H[:2], ctx=m.Context("line-a", "c2", 3)), 0)
    with pytest.raises(WrongContext):
        bob.receive("alice", digest(ks["alice"], 0, H[:2], ctx=m.Context("line-a", "call-1", 2)), 0)
    with pytest.raises(MalformedMessage):
        bob.receive("alice", good[:-1], 0.0)
    msg = bob.receive("alice", good, 0.0)
    assert msg.last_ctr == 1
    bob.receive("alice", good, 0.1)  # the same digest again (a replay): nothing new
    stats = bob.stats()
    assert stats["digests_received"] == 2
    assert stats["digests_rejected"] == {
        "sender_mismatch": 1,
        "e2ee_bad_signature": 1,
        "wrong_context": 2,
        "malformed_message": 1,
    }
    # a newer charter: digests signed under the version the call started with still count,
    # and so do those of a member that adopted an even newer one first
    bob.update_directory({i: k.public for i, k in ks.items()}, 4)
    bob.receive("alice", digest(ks["alice"], 2, H[2:3]), 0.2)
    bob.receive("alice", digest(ks["alice"], 3, H[3:4], ctx=m.Context("line-a", "call-1", 9)), 0)
    with pytest.raises(WrongContext):  # older than any this call held
        bob.receive(
            "alice", digest(ks["alice"], 4, H[4:5], ctx=m.Context("line-a", "call-1", 2)), 0
        )


def test_authenticity_signs_what_the_frame_crypto_recorded() -> None:
    """alice's MediaCrypto protects, bob's accepts; alice's digest covers each frame."""
    ks = keys()
    directory = {i: k.public for i, k in ks.items()}
    base = os.urandom(32)
    alice_media, bob_media = MediaCrypto(), MediaCrypto()
    alice_media.activate_send(2, 0, base)
    bob_media.install_receive_keys(2, ["alice", "bob"], {"alice": base})
    alice = FrameAuthenticity(context=CTX, self_id="alice", identity_key=ks["alice"],
                              directory=directory)  # fmt: skip
    bob = FrameAuthenticity(context=CTX, self_id="bob", identity_key=ks["bob"],
                            directory=directory, strict=True,
                            member_of=bob_media.member_of)  # fmt: skip
    for i in range(30):
        kind = AUDIO if i % 3 else VIDEO
        frame = b"\xfc" + os.urandom(50) if kind == AUDIO else b"\xb1\x07\x00" + os.urandom(500)
        data = alice_media.protect(kind, frame)
        if i % 7 != 3:  # some are lost on the way
            bob_media.unprotect(kind, data)
    alice.frames(alice_media.take_frame_hashes(), 0.0)
    bob.frames(bob_media.take_frame_hashes(), 0.0)
    [body] = alice.outgoing(0.0)
    assert alice.outgoing(0.1) == []  # once a second
    msg = bob.receive("alice", body, 0.3)
    assert (msg.first_ctr, msg.last_ctr) == (0, 29)
    assert bob.poll(3.0) == []
    assert bob.stats()["verified"] == 30 - 4 and bob.stats()["pending"] == 0
    assert bob_media.stats().unprotected_by_sender == {"alice": 26}


def test_frame_hash_binds_kind_and_every_byte() -> None:
    data = os.urandom(100)
    assert len(frame_hash(b"a", data)) == 16
    assert frame_hash(b"a", data) != frame_hash(b"v", data)
    assert frame_hash(b"a", data) != frame_hash(b"a", data[:-1] + bytes([data[-1] ^ 1]))


def test_media_crypto_hash_buffer() -> None:
    base = os.urandom(32)
    off = MediaCrypto(hash_buffer=0)
    off.activate_send(1, 0, base)
    off.protect(AUDIO, b"\xfc" + bytes(20))
    assert off.take_frame_hashes().sent == ()
    small = MediaCrypto(hash_buffer=4)
    small.activate_send(1, 0, base)
    for _ in range(6):
        small.protect(AUDIO, b"\xfc" + bytes(20))
    hashes = small.take_frame_hashes()
    assert [f.ctr for f in hashes.sent] == [2, 3, 4, 5] and hashes.overflow == 2
    assert small.take_frame_hashes().sent == ()


def test_a_frame_that_cannot_be_digested_is_refused_where_digests_are_required() -> None:
    """Through an SFU the signed digests are what binds a frame to its sender: when the
    record between two digests is full, a further frame is refused (``hash_overflow``),
    not shown unchecked; on a mesh (not required) it is shown and the overflow counted."""
    base = os.urandom(32)
    alice = MediaCrypto()
    alice.activate_send(2, 0, base)
    frames = [alice.protect(AUDIO, b"\xfc" + bytes([i]) * 20) for i in range(6)]
    for required in (False, True):
        bob = MediaCrypto(hash_buffer=4)
        bob.install_receive_keys(2, ["alice", "bob"], {"alice": base})
        bob.hashes_required = required
        for data in frames[:4]:
            assert bob.unprotect(AUDIO, data, "alice").startswith(b"\xfc")
        if required:
            with pytest.raises(UncheckedFrame):
                bob.unprotect(AUDIO, frames[4], "alice")
            assert bob.stats().rejected == {"hash_overflow": 1}
            # once the record is taken (the digests were made), frames pass again; the
            # refused one did not move the replay window, so it can still arrive
            assert len(bob.take_frame_hashes().received) == 4
            assert bob.unprotect(AUDIO, frames[4], "alice").startswith(b"\xfc")
        else:
            bob.unprotect(AUDIO, frames[4], "alice")
            assert bob.take_frame_hashes().overflow == 1
            assert bob.stats().rejected == {}


def test_hashes_lost_on_the_strict_path_are_an_alarm() -> None:
    """Through the SFU, hashes lost between the frame crypto and the verifier (a page's
    reports dropped while the call's tick stalled) mean frames may have been shown unchecked:
    an alarm, not only a count. On a mesh they stay a count."""
    ks = keys()
    directory = {i: k.public for i, k in ks.items()}
    for strict in (False, True):
        bob = FrameAuthenticity(context=CTX, self_id="bob", identity_key=ks["bob"],
                                directory=directory, strict=strict)  # fmt: skip
        bob.frames(FrameHashes((), (), 7), 0.0)
        alarms = bob.poll(0.1)
        assert bob.stats()["hash_overflow"] == 7
        if not strict:
            assert alarms == [] and bob.stats()["unauthenticated_frame"] == {}
            continue
        [alarm] = alarms
        assert (alarm.member, alarm.reason, alarm.frames) == (UNKNOWN_MEMBER, UNCHECKED, 7)
        assert "shown unchecked" in alarm.message
        assert bob.stats()["unauthenticated_frame"] == {UNKNOWN_MEMBER: 7}


def test_through_an_sfu_a_sender_signs_twice_a_second_while_envelopes_allow() -> None:
    assert digest_interval(strict=False, recipients=5) == DIGEST_INTERVAL_S
    assert digest_interval(strict=True, recipients=5) == STRICT_DIGEST_INTERVAL_S
    fast = int(FAST_DIGEST_ENVELOPES_PER_S * STRICT_DIGEST_INTERVAL_S)  # 10 others: 11 members
    assert digest_interval(strict=True, recipients=fast) == STRICT_DIGEST_INTERVAL_S
    assert digest_interval(strict=True, recipients=fast + 1) == DIGEST_INTERVAL_S
    s = DigestSigner(STRICT_DIGEST_INTERVAL_S)
    s.add([SentFrame(KID, 0, H[0])], 0.0)
    assert s.due(0.0) and s.take(0.0)
    s.add([SentFrame(KID, 1, H[1])], 0.1)
    assert not s.due(0.4) and s.due(0.5)
