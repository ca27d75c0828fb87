"""Identity keys: signatures, fingerprints, storage permissions and passphrases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotline.errors import EncodingError, KeyStorageError, PassphraseError, SignatureError
from hotline.keys import PublicKey, SigningKey, read_passphrase


def test_sign_verify_and_tamper() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"message")
    key.public.verify(sig, b"message")
    with pytest.raises(SignatureError):
        key.public.verify(sig, b"messagE")
    with pytest.raises(SignatureError):
        SigningKey.generate().public.verify(sig, b"message")
    with pytest.raises(SignatureError):
        key.public.verify(sig[:10], b"message")


def test_fingerprint_is_readable_and_distinct() -> None:
    a, b = SigningKey.generate().public, SigningKey.generate().public
    groups = a.fingerprint.split(" ")
    assert len(groups) == 6 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert a.fingerprint != b.fingerprint
    assert PublicKey.from_hex(a.hex()) == a
    with pytest.raises(EncodingError):
        PublicKey(b"short")
    with pytest.raises(EncodingError):
        PublicKey.from_hex("zz")


def test_store_plain_and_refuse_overwrite(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "k.pem"
    key.save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert SigningKey.load(path).public == key.public
    with pytest.raises(KeyStorageError, match="already exists"):
        key.save(path)


def test_refuse_readable_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    SigningKey.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyStorageError, match="chmod 600"):
        SigningKey.load(path)


def test_passphrase(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "k.pem"
    key.save(path, b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert SigningKey.load(path, b"correct horse").public == key.public
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        SigningKey.load(path, b"wrong")
    with pytest.raises(PassphraseError, match="encrypted"):
        SigningKey.load(path)


def test_damaged_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    with pytest.raises(KeyStorageError, match="not a valid PEM"):
        SigningKey.load(path)
    with pytest.raises(KeyStorageError, match="no such key file"):
        SigningKey.load(tmp_path / "absent.pem")


def test_read_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pass"
    f.write_bytes(b"s3cret\n")
    assert read_passphrase(f) == b"s3cret"
    f.write_bytes(b"")
    with pytest.raises(PassphraseError, match="empty"):
        read_passphrase(f)
    monkeypatch.setenv("HOTLINE_PASSPHRASE", "fromenv")
    assert read_passphrase(None) == b"fromenv"
    monkeypatch.delenv("HOTLINE_PASSPHRASE")
    assert read_passphrase(None) is None
