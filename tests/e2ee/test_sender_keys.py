"""HPKE sealing of base keys, checked against RFC 9180 Appendix A where the API allows.

``cryptography``'s HPKE is single-shot base mode with an empty AAD, while the RFC's
encryptions carry AAD "Count-<seq>": the receiver side is checked through the binding's
``_decrypt_with_aad`` (sequence 0 only: single shot means one message per context). The
sender side cannot be checked against vectors (no way to pass the ephemeral key in);
A.1.3 is Auth mode, which ``cryptography`` lacks, and is left out.
"""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.e2ee import sender_keys as sk
from hotline.errors import MalformedMessage, SealedKeyError, StateError, UsageError
from tests.conftest import require

from .vectors import HPKE_FILE, h, load


@pytest.fixture(scope="module")
def hpke_vectors(vectors_dir: Path) -> dict[str, Any]:
    return load(vectors_dir, HPKE_FILE)


def _decrypt_with_aad() -> Any:
    from cryptography.hazmat.bindings._rust import openssl

    fn = getattr(openssl.hpke, "_decrypt_with_aad", None)
    require(fn is not None, "cryptography has no _decrypt_with_aad; cannot use RFC 9180 AAD")
    return fn


def test_our_x25519_suite_opens_rfc9180_a11(hpke_vectors: dict[str, Any]) -> None:
    """RFC 9180 A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode —
    exactly the suite and key import ``sender_keys`` uses for the X25519 KEM."""
    (v,) = [v for v in hpke_vectors["vectors"] if v["name"] == "A.1.1"]
    kem = sk.kem_by_name(sk.KEM_X25519)
    assert (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) == (0, 0x20, 1, 1)
    # our key import gives the RFC's public key from its private key
    pair = sk.EphemeralKeyPair(kem, bytearray(h(v["skRm"])))
    assert pair.public == h(v["pkRm"])
    enc0 = v["encryptions"][0]
    assert enc0["seq"] == 0
    private = sk.private_key_from_seed(kem, h(v["skRm"]))
    pt = _decrypt_with_aad()(
        kem.suite(), h(v["enc"]) + h(enc0["ct"]), private, h(v["info"]), h(enc0["aad"])
    )
    assert pt == h(hpke_vectors["pt"])
    # and the wrong info (our binding of context) makes it fail
    from cryptography.exceptions import InvalidTag

    with pytest.raises(InvalidTag):
        _decrypt_with_aad()(
            kem.suite(), h(v["enc"]) + h(enc0["ct"]), private, b"other", h(enc0["aad"])
        )


def test_library_opens_rfc9180_a21_chacha(hpke_vectors: dict[str, Any]) -> None:
    """RFC 9180 A.2.1 (ChaCha20-Poly1305): the same X25519 key import, another AEAD."""
    from cryptography.hazmat.primitives import hpke

    (v,) = [v for v in hpke_vectors["vectors"] if v["name"] == "A.2.1"]
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    private = sk.private_key_from_seed(sk.kem_by_name(sk.KEM_X25519), h(v["skRm"]))
    enc0 = v["encryptions"][0]
    pt = _decrypt_with_aad()(
        suite, h(v["enc"]) + h(enc0["ct"]), private, h(v["info"]), h(enc0["aad"])
    )
    assert pt == h(hpke_vectors["pt"])


@pytest.mark.parametrize("kem_name", [sk.KEM_X25519, sk.KEM_HYBRID])
def test_seal_open_round_trip_and_info_binding(kem_name: str) -> None:
    kem = sk.kem_by_name(kem_name)
    pair = sk.EphemeralKeyPair.generate(kem, os.urandom)
    assert len(pair.public) == kem.public_size
    base = os.urandom(sk.SECRET_SIZE)
    ctx = {
        "charter_version": 1,
        "epoch": 3,
        "leader": "a",
        "recipient": "b",
        "roster_hash": b"r" * 32,
    }
    info = sk.seal_info("line", "call", **ctx)  # type: ignore[arg-type]
    sealed = sk.seal(kem, pair.public, base, info)
    assert len(sealed) == kem.sealed_size
    assert pair.open(sealed, info) == base
    # every piece of context is bound: change any one and the secret does not open
    changes: list[dict[str, object]] = [
        {"charter_version": 2},
        {"epoch": 4},
        {"leader": "c"},
        {"recipient": "c"},
        {"roster_hash": b"s" * 32},
    ]
    for changed in (
        sk.seal_info("LINE", "call", **ctx),  # type: ignore[arg-type]
        sk.seal_info("line", "CALL", **ctx),  # type: ignore[arg-type]
        *(sk.seal_info("line", "call", **(ctx | c)) for c in changes),  # type: ignore[arg-type]
    ):
        with pytest.raises(SealedKeyError):
            pair.open(sealed, changed)
    with pytest.raises(SealedKeyError):
        pair.open(sealed[:-1] + bytes([sealed[-1] ^ 1]), info)
    with pytest.raises(SealedKeyError):
        pair.open(sealed[:-1], info)
    # a key sealed to another pair does not open here
    other = sk.EphemeralKeyPair.generate(kem, os.urandom)
    with pytest.raises(SealedKeyError):
        pair.open(sk.seal(kem, other.public, base, info), info)


def test_seeds_come_from_the_injected_rng() -> None:
    kem = sk.kem_by_name(sk.KEM_HYBRID)
    a = sk.EphemeralKeyPair.generate(kem, lambda n: b"\x01" * n)
    b = sk.EphemeralKeyPair.generate(kem, lambda n: b"\x01" * n)
    assert a.public == b.public
    with pytest.raises(UsageError):
        sk.EphemeralKeyPair.generate(kem, lambda n: b"\x01")


def test_erase_destroys_the_private_key() -> None:
    kem = sk.kem_by_name(sk.KEM_HYBRID)
    pair = sk.EphemeralKeyPair.generate(kem, os.urandom)
    seed = pair.seed_view()
    assert seed is not None and any(seed)
    info = b"info"
    sealed = sk.seal(kem, pair.public, os.urandom(32), info)
    ref = weakref.ref(pair)
    pair.erase()
    assert pair.erased and not any(seed)  # the seed buffer itself was overwritten
    with pytest.raises(StateError):
        pair.open(sealed, info)
    del pair
    gc.collect()
    assert ref() is None


def test_bad_public_keys() -> None:
    for name in sk.KEMS:
        kem = sk.kem_by_name(name)
        with pytest.raises(MalformedMessage):
            sk.parse_public_key(kem, b"\x00" * (kem.public_size - 1))
    hybrid = sk.kem_by_name(sk.KEM_HYBRID)
    with pytest.raises(MalformedMessage):  # ML-KEM coefficients out of range
        sk.parse_public_key(hybrid, b"\xff" * hybrid.public_size)
    # an all-zero (low-order) X25519 point cannot be sealed to
    x = sk.kem_by_name(sk.KEM_X25519)
    with pytest.raises(SealedKeyError):
        sk.seal(x, bytes(32), os.urandom(32), b"info")
    with pytest.raises(UsageError):
        sk.kem_by_name("P256")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(sk.KEMS)), st.binary(max_size=1300))
def test_parse_public_key_arbitrary_bytes(kem_name: str, raw: bytes) -> None:
    """Arbitrary bytes give a key or MalformedMessage, nothing else; and sealing to whatever
    parsed gives a sealed key or SealedKeyError."""
    kem = sk.kem_by_name(kem_name)
    try:
        sk.parse_public_key(kem, raw)
    except MalformedMessage:
        return
    try:
        sealed = sk.seal(kem, raw, bytes(32), b"info")
    except SealedKeyError:
        return
    assert len(sealed) == kem.sealed_size


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1200))
def test_open_arbitrary_bytes(data: bytes) -> None:
    pair = sk.EphemeralKeyPair.generate(sk.kem_by_name(sk.KEM_X25519), os.urandom)
    with pytest.raises(SealedKeyError):
        pair.open(data, b"info")


def test_secret_commitment_binds_the_secret_and_its_context() -> None:
    secret = os.urandom(sk.SECRET_SIZE)
    info = sk.secret_commit_info("line", "call", charter_version=1, epoch=3, leader="a")
    commit = sk.secret_commitment(secret, info)
    sk.check_secret_commitment(commit, secret, info)
    with pytest.raises(SealedKeyError):
        sk.check_secret_commitment(commit, os.urandom(sk.SECRET_SIZE), info)
    for other in (
        sk.secret_commit_info("line", "call", charter_version=2, epoch=3, leader="a"),
        sk.secret_commit_info("line", "call", charter_version=1, epoch=4, leader="a"),
        sk.secret_commit_info("line", "call", charter_version=1, epoch=3, leader="b"),
        sk.secret_commit_info("line", "other", charter_version=1, epoch=3, leader="a"),
    ):
        with pytest.raises(SealedKeyError):
            sk.check_secret_commitment(commit, secret, other)
    assert secret.hex() not in commit.hex()


def test_sender_keys_are_distinct_per_sender_epoch_and_roster() -> None:
    secret = os.urandom(sk.SECRET_SIZE)

    def key(**change: object) -> bytes:
        ctx: dict[str, object] = {
            "charter_version": 1,
            "epoch": 3,
            "roster_hash": b"r" * 32,
            "sender": "a",
            "index": 0,
        }
        info = sk.sender_key_info("line", "call", **(ctx | change))  # type: ignore[arg-type]
        return bytes(sk.derive_sender_key(secret, info))

    keys = [
        key(),
        key(sender="b", index=1),
        key(index=1),
        key(epoch=4),
        key(charter_version=2),
        key(roster_hash=b"s" * 32),
    ]
    assert len(set(keys)) == len(keys) and all(len(k) == sk.BASE_KEY_SIZE for k in keys)
    assert key() == key()  # deterministic: every member derives the same key
    assert secret not in keys
