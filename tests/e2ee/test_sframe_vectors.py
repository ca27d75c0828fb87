"""Every vector of RFC 9605 Appendix C (and the later draft's AES-256-CTR suites).

Source: ``../shared/vectors/sframe-rfc9605.json`` (sframe-wg/sframe test-vectors.json; see
the file's ``_source``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hotline.e2ee import sframe
from hotline.errors import BadFrameTag

from .vectors import SFRAME_FILE, h, load


@pytest.fixture(scope="module")
def vectors(vectors_dir: Path) -> dict[str, Any]:
    return load(vectors_dir, SFRAME_FILE)


def test_header_encoding_rfc9605_c1(vectors: dict[str, Any]) -> None:
    """RFC 9605 §4.3 / Appendix C.1: 289 (KID, CTR) header encodings, both directions."""
    cases = vectors["header"]
    assert len(cases) == 289
    for case in cases:
        encoded = h(case["encoded"])
        assert sframe.encode_header(case["kid"], case["ctr"]) == encoded, case
        assert sframe.decode_header(encoded + b"payload") == (
            case["kid"],
            case["ctr"],
            len(encoded),
        )


@pytest.mark.parametrize("section", ["aes_ctr_hmac", "aes_256_ctr_hmac"])
def test_aes_ctr_hmac_rfc9605_c2(vectors: dict[str, Any], section: str) -> None:
    """RFC 9605 §4.5.1 / Appendix C.2: AES-CTR + HMAC AEAD (suites 1-3; 6-8 from the draft)."""
    assert vectors[section]
    for case in vectors[section]:
        suite = sframe.suite_by_value(case["cipher_suite"])
        key = h(case["key"])
        assert key[: suite.nka] == h(case["enc_key"])
        assert key[suite.nka :] == h(case["auth_key"])
        ct = sframe.aead_encrypt(suite, key, h(case["nonce"]), h(case["aad"]), h(case["pt"]))
        assert ct == h(case["ct"])
        pt = sframe.aead_decrypt(suite, key, h(case["nonce"]), h(case["aad"]), ct)
        assert pt == h(case["pt"])
        tampered = ct[:-1] + bytes([ct[-1] ^ 1])
        with pytest.raises(BadFrameTag):
            sframe.aead_decrypt(suite, key, h(case["nonce"]), h(case["aad"]), tampered)


@pytest.mark.parametrize("section", ["sframe", "sframe_aes_256_ctr_hmac"])
def test_sframe_encryption_rfc9605_c3(vectors: dict[str, Any], section: str) -> None:
    """RFC 9605 §4.4 / Appendix C.3: key derivation, nonce, AAD and SFrame ciphertext."""
    cases = vectors[section]
    assert {c["cipher_suite"] for c in cases} == (
        {1, 2, 3, 4, 5} if section == "sframe" else {6, 7, 8}
    )
    for case in cases:
        suite = sframe.suite_by_value(case["cipher_suite"])
        assert suite.rfc9605 is (section == "sframe")
        kid, ctr, base_key = case["kid"], case["ctr"], h(case["base_key"])
        key_label, salt_label = sframe.key_labels(suite, kid)
        assert key_label == h(case["sframe_key_label"])
        assert salt_label == h(case["sframe_salt_label"])
        secret, key, salt = sframe.derive_key_salt(suite, kid, base_key)
        assert secret == h(case["sframe_secret"])
        assert key == h(case["sframe_key"])
        assert salt == h(case["sframe_salt"])

        sk = sframe.SFrameKey(suite, kid, base_key)
        assert sk.nonce(ctr) == h(case["nonce"])
        header = sframe.encode_header(kid, ctr)
        metadata = h(case["metadata"])
        assert header + metadata == h(case["aad"])  # §4.4.3: AAD = header || metadata
        ciphertext = sframe.protect(sk, ctr, h(case["pt"]), metadata)
        assert ciphertext == h(case["ct"])

        store = sframe.KeyStore(suite)
        store.add(kid, "vector", base_key)
        assert store.unprotect(ciphertext, metadata) == (kid, ctr, h(case["pt"]))
        # the metadata is authenticated: other metadata, other result
        other = sframe.KeyStore(suite)
        other.add(kid, "vector", base_key)
        with pytest.raises(BadFrameTag):
            other.unprotect(ciphertext, metadata + b"!")
