"""Media framing (VP8 clear prefix, Opus fully protected) and the thread-safe MediaCrypto."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.e2ee import sframe
from hotline.e2ee.media import (
    AUDIO,
    VIDEO,
    VP8_DELTA_FRAME_PREFIX,
    VP8_KEY_FRAME_PREFIX,
    FrameCrypto,
    MediaCrypto,
    vp8_clear_prefix_length,
)
from hotline.errors import (
    BadFrameTag,
    CounterExhausted,
    ExpiredKey,
    InvalidMediaFrame,
    MalformedFrame,
    NoMediaKey,
    ReplayedFrame,
    SFrameError,
    UnknownKeyId,
)

# a VP8 key frame starts with a frame tag whose bit 0 is 0, then the start code 9d 01 2a
KEY_FRAME = bytes.fromhex("5003009d012a800268 01") + os.urandom(300)
DELTA_FRAME = bytes.fromhex("b10700") + os.urandom(120)
OPUS = bytes.fromhex("fc") + os.urandom(80)
ROSTER = ("alice", "bob", "carol")


def pair(epoch: int = 1, **kw: int) -> tuple[MediaCrypto, MediaCrypto]:
    """alice sends, bob receives, under alice's key of ``epoch``."""
    base = os.urandom(32)
    alice, bob = MediaCrypto(**kw), MediaCrypto(**kw)  # type: ignore[arg-type]
    alice.activate_send(epoch, ROSTER.index("alice"), base)
    bob.install_receive_keys(epoch, ROSTER, {"alice": base})
    return alice, bob


def test_media_crypto_is_a_frame_crypto() -> None:
    crypto: FrameCrypto = MediaCrypto()
    assert callable(crypto.protect) and callable(crypto.unprotect)


def test_vp8_prefix_lengths() -> None:
    assert vp8_clear_prefix_length(KEY_FRAME) == VP8_KEY_FRAME_PREFIX == 10
    assert vp8_clear_prefix_length(DELTA_FRAME) == VP8_DELTA_FRAME_PREFIX == 3
    with pytest.raises(MalformedFrame):
        vp8_clear_prefix_length(b"")


@pytest.mark.parametrize(("frame", "clear"), [(KEY_FRAME, 10), (DELTA_FRAME, 3)])
def test_vp8_clear_prefix_is_readable_and_authenticated(frame: bytes, clear: int) -> None:
    alice, bob = pair()
    data = alice.protect(VIDEO, frame)
    assert data[:clear] == frame[:clear]  # readable by depacketizers and an SFU
    kid, ctr, hlen = sframe.decode_header(data[clear:])
    assert (kid, ctr) == (sframe.make_kid(1, 0), 0)
    # layout: prefix || header || ciphertext || 16-byte tag
    assert len(data) == clear + hlen + (len(frame) - clear) + 16
    assert frame[clear:] not in data
    assert bob.unprotect(VIDEO, data) == frame
    # changing a clear byte (but not the key-frame bit) breaks the tag
    tampered = bytearray(alice.protect(VIDEO, frame))
    tampered[1] ^= 0x40
    with pytest.raises(BadFrameTag):
        bob.unprotect(VIDEO, bytes(tampered))
    # flipping the key-frame bit changes the prefix length: refused as well
    flipped = bytearray(alice.protect(VIDEO, frame))
    flipped[0] ^= 0x01
    with pytest.raises(SFrameError):
        bob.unprotect(VIDEO, bytes(flipped))


def test_opus_fully_protected() -> None:
    alice, bob = pair()
    data = alice.protect(AUDIO, OPUS)
    hlen = sframe.decode_header(data)[2]
    assert sframe.decode_header(data)[:2] == (sframe.make_kid(1, 0), 0)  # header first
    assert len(data) == hlen + len(OPUS) + 16
    assert OPUS[:8] not in data and OPUS[-8:] not in data
    assert bob.unprotect(AUDIO, data) == OPUS


def test_kinds_cannot_be_swapped() -> None:
    alice, bob = pair()
    audio = alice.protect(AUDIO, bytes([0x10]) + OPUS)  # looks like a VP8 key frame start
    video = alice.protect(VIDEO, DELTA_FRAME)
    with pytest.raises(SFrameError):
        bob.unprotect(VIDEO, audio)
    with pytest.raises(SFrameError):
        bob.unprotect(AUDIO, video)
    # the genuine frames still pass afterwards (failures did not burn the counters)
    assert bob.unprotect(AUDIO, audio) == bytes([0x10]) + OPUS
    assert bob.unprotect(VIDEO, video) == DELTA_FRAME


def test_fail_closed_without_key() -> None:
    crypto = MediaCrypto()
    with pytest.raises(NoMediaKey):
        crypto.protect(AUDIO, OPUS)
    alice, _ = pair()
    alice.pause_sending("bob left")
    with pytest.raises(NoMediaKey, match="bob left"):
        alice.protect(VIDEO, KEY_FRAME)
    stats = alice.stats()
    assert stats.refused == {"no_media_key": 1} and stats.sending_epoch == 0


def test_invalid_frames_for_protect() -> None:
    alice, _ = pair()
    with pytest.raises(InvalidMediaFrame):
        alice.protect("screen", b"x")
    with pytest.raises(InvalidMediaFrame):
        alice.protect(VIDEO, b"")
    with pytest.raises(InvalidMediaFrame):
        alice.protect(VIDEO, KEY_FRAME[:5])  # a key frame needs its 10 clear bytes
    assert alice.stats().refused == {"invalid_media_frame": 3}


def test_counters_and_last_rejecting_sender() -> None:
    alice, bob = pair()
    frames = [alice.protect(AUDIO, OPUS) for _ in range(3)]
    for f in frames:
        bob.unprotect(AUDIO, f)
    with pytest.raises(ReplayedFrame):
        bob.unprotect(AUDIO, frames[0])
    fresh = alice.protect(AUDIO, OPUS)
    with pytest.raises(BadFrameTag):
        bob.unprotect(AUDIO, fresh[:-1] + bytes([fresh[-1] ^ 1]))
    with pytest.raises(MalformedFrame):
        bob.unprotect(AUDIO, b"")
    stranger = MediaCrypto()
    stranger.activate_send(1, 2, os.urandom(32))  # carol's KID, a key bob never got
    with pytest.raises(UnknownKeyId):
        bob.unprotect(AUDIO, stranger.protect(AUDIO, OPUS))
    stats = bob.stats()
    assert stats.unprotected == 3
    assert stats.rejected == {"replay": 1, "bad_tag": 1, "malformed_frame": 1, "unknown_kid": 1}
    assert stats.rejected_total == 4
    assert stats.last_rejected_sender == "carol"  # named through the epoch's roster
    assert alice.stats().protected == 4


def test_grace_then_erasure_and_forgetting_a_sender() -> None:
    alice, bob = pair(epoch=1)
    old = alice.protect(AUDIO, OPUS)
    new_base = os.urandom(32)
    alice.activate_send(2, 0, new_base)
    bob.install_receive_keys(2, ROSTER, {"alice": new_base})
    assert bob.stats().receive_epochs == (1, 2)
    assert bob.unprotect(AUDIO, old) == OPUS  # grace: the old epoch still decrypts
    bob.erase_epochs_through(1)
    with pytest.raises(ExpiredKey):
        bob.unprotect(AUDIO, old)
    assert bob.unprotect(AUDIO, alice.protect(AUDIO, OPUS)) == OPUS
    bob.forget_sender("alice")
    with pytest.raises(ExpiredKey):
        bob.unprotect(AUDIO, alice.protect(AUDIO, OPUS))
    assert bob.stats().last_rejected_sender == "alice"


def test_counter_exhaustion_fails_closed() -> None:
    alice, bob = pair(counter_limit=1)
    bob.unprotect(AUDIO, alice.protect(AUDIO, OPUS))
    bob.unprotect(AUDIO, alice.protect(AUDIO, OPUS))
    with pytest.raises(CounterExhausted):
        alice.protect(AUDIO, OPUS)
    assert alice.stats().refused == {"counter_exhausted": 1}


def test_threads_share_one_counter_without_repeats() -> None:
    """The encoder threads of audio and video protect concurrently; counters stay unique
    and every frame decrypts exactly once on the receiver's decoder threads."""
    alice, bob = pair()
    per_thread = 300
    out: dict[str, list[bytes]] = {VIDEO: [], AUDIO: []}

    def encode(kind: str, frame: bytes) -> None:
        for _ in range(per_thread):
            out[kind].append(alice.protect(kind, frame))

    threads = [
        threading.Thread(target=encode, args=(VIDEO, DELTA_FRAME)),
        threading.Thread(target=encode, args=(AUDIO, OPUS)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctrs = [sframe.decode_header(f[3:])[1] for f in out[VIDEO]]
    ctrs += [sframe.decode_header(f)[1] for f in out[AUDIO]]
    assert sorted(ctrs) == list(range(2 * per_thread))

    errors: list[BaseException] = []

    def decode(kind: str, expected: bytes) -> None:
        try:
            for f in out[kind]:
                assert bob.unprotect(kind, f) == expected
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=decode, args=(VIDEO, DELTA_FRAME)),
        threading.Thread(target=decode, args=(AUDIO, OPUS)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert bob.stats().unprotected == 2 * per_thread


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([VIDEO, AUDIO, "other"]))
def test_unprotect_arbitrary_bytes_gives_only_sframe_errors(data: bytes, kind: str) -> None:
    _, bob = pair()
    with pytest.raises(SFrameError):
        bob.unprotect(kind, data)
