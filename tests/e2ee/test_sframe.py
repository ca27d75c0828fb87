"""SFrame beyond the vectors: counters, replay window, key store, KID layout, parsers."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.e2ee import sframe
from hotline.errors import (
    BadFrameTag,
    CounterExhausted,
    ExpiredKey,
    MalformedFrame,
    ReplayedFrame,
    SFrameError,
    UnknownKeyId,
    UsageError,
)

SUITE = sframe.DEFAULT_SUITE


def test_kid_layout_is_injective_and_round_trips() -> None:
    seen: set[int] = set()
    for epoch in (0, 1, 2, 255, 256, sframe.MAX_EPOCH):
        for index in (0, 1, 7, 8, 255):
            kid = sframe.make_kid(epoch, index)
            assert kid not in seen
            seen.add(kid)
            assert sframe.kid_epoch(kid) == epoch
            assert sframe.kid_sender_index(kid) == index
            assert kid <= sframe.MAX_FIELD
    with pytest.raises(UsageError):
        sframe.make_kid(sframe.MAX_EPOCH + 1, 0)
    with pytest.raises(UsageError):
        sframe.make_kid(1, 256)
    with pytest.raises(UsageError):
        sframe.make_kid(-1, 0)


def test_counter_never_repeats_and_raises_before_wrapping() -> None:
    """RFC 9605 §4.4.3: a (key, CTR) pair must never repeat."""
    key = sframe.SFrameKey(SUITE, sframe.make_kid(1, 0), os.urandom(32))
    sender = sframe.SFrameSender(key, counter_limit=2)
    ctrs = [sframe.decode_header(sender.protect(b"x"))[1] for _ in range(3)]
    assert ctrs == [0, 1, 2]
    with pytest.raises(CounterExhausted):
        sender.protect(b"x")
    with pytest.raises(CounterExhausted):  # and stays exhausted
        sender.protect(b"x")


def test_counter_at_the_64_bit_limit() -> None:
    key = sframe.SFrameKey(SUITE, 9, os.urandom(32))
    sender = sframe.SFrameSender(key)
    sender.next_counter = sframe.MAX_COUNTER
    frame = sender.protect(b"last")
    assert sframe.decode_header(frame)[1] == sframe.MAX_COUNTER
    with pytest.raises(CounterExhausted):
        sender.protect(b"wraps")
    with pytest.raises(UsageError):
        sframe.SFrameSender(key, counter_limit=sframe.MAX_COUNTER + 1)


def test_replay_window() -> None:
    w = sframe.ReplayWindow(8)
    for ctr in (5, 3, 9, 4):
        w.accept(ctr)
    for ctr in (5, 3, 9, 4):
        with pytest.raises(ReplayedFrame):
            w.accept(ctr)
    w.accept(2)  # 9 - 2 = 7 < 8: still inside the window
    with pytest.raises(ReplayedFrame):
        w.accept(1)  # 9 - 1 = 8: fell out of the window
    w.accept(100)
    with pytest.raises(ReplayedFrame):
        w.check(92)
    w.accept(93)
    w.accept(2**64 - 1)
    with pytest.raises(ReplayedFrame):
        w.accept(2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=60))
def test_replay_window_accepts_each_counter_at_most_once(ctrs: list[int]) -> None:
    w = sframe.ReplayWindow(64)
    accepted: list[int] = []
    for ctr in ctrs:
        try:
            w.accept(ctr)
        except ReplayedFrame:
            continue
        assert ctr not in accepted
        assert not accepted or ctr > max(accepted) - 64
        accepted.append(ctr)


def _store_with(kids: dict[int, tuple[str, bytes]], **kw: int) -> sframe.KeyStore:
    store = sframe.KeyStore(SUITE, **kw)
    for kid, (sender, base) in kids.items():
        store.add(kid, sender, base)
    return store


def test_key_store_receives_rejects_replay_and_forgery() -> None:
    base = os.urandom(32)
    kid = sframe.make_kid(3, 1)
    store = _store_with({kid: ("alice", base)})
    sender = sframe.SFrameSender(sframe.SFrameKey(SUITE, kid, base))
    f0, f1 = sender.protect(b"zero", b"meta"), sender.protect(b"one", b"meta")
    assert store.unprotect(f1, b"meta") == (kid, 1, b"one")
    assert store.unprotect(f0, b"meta") == (kid, 0, b"zero")  # reordered is fine
    with pytest.raises(ReplayedFrame):
        store.unprotect(f0, b"meta")
    f2 = sender.protect(b"two")
    forged = f2[:-1] + bytes([f2[-1] ^ 0x80])
    with pytest.raises(BadFrameTag):
        store.unprotect(forged)
    # the forgery did not burn the counter: the genuine frame still goes through
    assert store.unprotect(f2) == (kid, 2, b"two")
    with pytest.raises(UnknownKeyId):
        store.unprotect(sframe.SFrameSender(sframe.SFrameKey(SUITE, kid + 1, base)).protect(b"x"))
    assert store.sender_of(kid) == "alice"


def test_key_store_bounded_history_and_epoch_erasure() -> None:
    bases = {e: os.urandom(32) for e in range(1, 6)}
    store = sframe.KeyStore(SUITE, history=2)
    keys = []
    for epoch in (1, 2, 3):
        kid = sframe.make_kid(epoch, 0)
        store.add(kid, "bob", bases[epoch])
        keys.append(sframe.SFrameKey(SUITE, kid, bases[epoch]))
    # history 2: epoch 1 was pushed out and erased
    assert [sframe.kid_epoch(k) for k in store.kids()] == [2, 3]
    with pytest.raises(ExpiredKey):
        store.unprotect(keys[0].protect(0, b"old"))
    assert store.unprotect(keys[1].protect(0, b"two"))[2] == b"two"
    store.erase_epochs_through(2)
    with pytest.raises(ExpiredKey):
        store.unprotect(keys[1].protect(1, b"two"))
    assert store.unprotect(keys[2].protect(0, b"three"))[2] == b"three"
    # an erased epoch cannot be installed again
    with pytest.raises(UsageError):
        store.add(sframe.make_kid(2, 1), "carol", bases[4])
    store.erase_sender("bob")
    assert store.kids() == []
    with pytest.raises(ExpiredKey):
        store.unprotect(keys[2].protect(1, b"three"))
    with pytest.raises(UnknownKeyId):
        store.unprotect(sframe.SFrameKey(SUITE, sframe.make_kid(9, 0), bases[5]).protect(0, b"?"))


def test_erased_key_object_refuses_use() -> None:
    key = sframe.SFrameKey(SUITE, 1, os.urandom(32))
    key.erase()
    with pytest.raises(ExpiredKey):
        key.protect(0, b"x")


def test_truncated_frames() -> None:
    store = _store_with({0x123: ("a", b"k" * 16)})
    for data in (b"", b"\x99", b"\x99\x01\x23\x45", b"\x99\x01\x23\x45\x67" + b"short"):
        with pytest.raises(MalformedFrame):
            store.unprotect(data)


def test_unknown_suite_names() -> None:
    with pytest.raises(UsageError):
        sframe.suite_by_name("ROT13")
    with pytest.raises(UsageError):
        sframe.suite_by_value(0)
    assert sframe.suite_by_name("AES_128_GCM_SHA256_128").value == 4


# --- property tests on the parsers: arbitrary bytes give only the documented errors ---------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_decode_header_arbitrary_bytes(data: bytes) -> None:
    try:
        kid, ctr, hlen = sframe.decode_header(data)
    except MalformedFrame:
        return
    assert 1 <= hlen <= 17 and hlen <= len(data)
    assert 0 <= kid <= sframe.MAX_FIELD and 0 <= ctr <= sframe.MAX_FIELD
    # what we encode decodes to the same values (our encoding is minimal)
    assert sframe.decode_header(sframe.encode_header(kid, ctr))[:2] == (kid, ctr)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.sampled_from(sorted(sframe.SUITES)))
def test_unprotect_arbitrary_bytes(data: bytes, suite_value: int) -> None:
    suite = sframe.SUITES[suite_value]
    store = sframe.KeyStore(suite)
    for kid in (0, 1, 7, 0x123, sframe.make_kid(1, 0)):
        store.add(kid, f"s{kid}", b"\x07" * 32)
    with pytest.raises(SFrameError) as info:
        store.unprotect(data)
    assert type(info.value) in {MalformedFrame, UnknownKeyId, BadFrameTag}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, sframe.MAX_FIELD), st.integers(0, sframe.MAX_FIELD))
def test_header_round_trip(kid: int, ctr: int) -> None:
    header = sframe.encode_header(kid, ctr)
    assert sframe.decode_header(header) == (kid, ctr, len(header))
    assert sframe.decode_header(b"clear" + header, 5) == (kid, ctr, len(header))
    # the per-key fast path writes the same bytes
    assert sframe.SFrameKey(SUITE, kid, b"k" * 32).header(ctr) == header
