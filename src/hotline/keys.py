"""Operator and terminal identity keys (Ed25519): signing, verification, fingerprints, storage.

Private keys live in one file each, PKCS#8 PEM, mode 0600. With a passphrase the file is
encrypted (PKCS#8 ``BestAvailableEncryption``: PBES2 with AES-256). A private key file that
anyone but its owner can read or write is refused. See ``docs/keys.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hotline.errors import EncodingError, KeyStorageError, PassphraseError, SignatureError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
FINGERPRINT_LABEL = b"hotline key fingerprint v1"
MAX_KEY_FILE_SIZE = 16 * 1024
#: environment variable holding the passphrase for unattended use
PASSPHRASE_ENV = "HOTLINE_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
#: the name of the systemd credential holding the passphrase (LoadCredential=passphrase:FILE)
PASSPHRASE_CREDENTIAL = "passphrase"  # noqa: S105 (a name, not a secret)


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_SIZE:
            raise EncodingError("an Ed25519 public key is 32 bytes")

    def verify(self, signature: bytes, message: bytes, *, what: str = "signature") -> None:
        """Raise :class:`SignatureError` unless ``signature`` is valid over ``message``."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError(f"{what}: a signature is {SIGNATURE_SIZE} bytes")
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(f"{what} does not verify") from exc

    @property
    def fingerprint(self) -> str:
        """30 digits in six groups of five, easy to read aloud and compare by voice."""
        digest = hashlib.sha256(FINGERPRINT_LABEL + self.raw).digest()
        groups = [
            f"{int.from_bytes(digest[i * 5 : i * 5 + 5], 'big') % 100000:05d}" for i in range(6)
        ]
        return " ".join(groups)

    @property
    def short_id(self) -> str:
        """First 8 bytes of SHA-256 of the key, hex: for logs and tables."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def hex(self) -> str:
        return self.raw.hex()

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise EncodingError("public key is not valid hex") from exc
        return cls(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash(self.raw)


class SigningKey:
    """An Ed25519 private key. Never printed, never logged, never serialised unencrypted
    except into its own 0600 file."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = PublicKey(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.short_id})"

    # --- storage ---------------------------------------------------------------------

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the key to a new file with mode 0600. Refuses to overwrite."""
        encryption: serialization.KeySerializationEncryption
        if passphrase:
            encryption = serialization.BestAvailableEncryption(passphrase)
        else:
            encryption = serialization.NoEncryption()
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise KeyStorageError(
                f"{path}: a key file already exists; refusing to overwrite"
            ) from exc
        except OSError as exc:
            raise KeyStorageError(f"{path}: cannot create key file: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> SigningKey:
        """Read a key file, refusing one that group or others can access."""
        try:
            st = path.stat()
        except FileNotFoundError as exc:
            raise KeyStorageError(f"{path}: no such key file") from exc
        except OSError as exc:
            raise KeyStorageError(f"{path}: cannot read key file: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise KeyStorageError(f"{path}: not a regular file")
        if st.st_mode & 0o077:
            raise KeyStorageError(
                f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} let others access this "
                "private key; run: chmod 600 " + str(path)
            )
        if st.st_size > MAX_KEY_FILE_SIZE:
            raise KeyStorageError(f"{path}: {st.st_size} bytes is too large for a key file")
        data = path.read_bytes()
        encrypted = b"ENCRYPTED PRIVATE KEY" in data
        if encrypted and not passphrase:
            raise PassphraseError(
                f"{path}: the key is encrypted; give --passphrase-file or set {PASSPHRASE_ENV}"
            )
        try:
            key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
        except ValueError as exc:
            if encrypted:
                raise PassphraseError(f"{path}: wrong passphrase, or the file is damaged") from exc
            raise KeyStorageError(f"{path}: not a valid PEM private key") from exc
        except TypeError as exc:
            raise KeyStorageError(f"{path}: unexpected key encryption state") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStorageError(f"{path}: not an Ed25519 key")
        return cls(key)


def read_passphrase(passphrase_file: Path | None) -> bytes | None:
    """The passphrase from ``passphrase_file`` (first line), else from the environment
    (``$HOTLINE_PASSPHRASE``), else from the systemd credential ``passphrase``."""
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_bytes()
        except OSError as exc:
            raise PassphraseError(
                f"{passphrase_file}: cannot read passphrase file: {exc.strerror}"
            ) from exc
        line = text.splitlines()[0] if text else b""
        if not line:
            raise PassphraseError(f"{passphrase_file}: the passphrase file is empty")
        return line
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode("utf-8")
    # a systemd service: LoadCredential=passphrase:/etc/hotline/NAME.passphrase puts the
    # file in a private folder named by $CREDENTIALS_DIRECTORY, readable by the service only
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = Path(credentials) / PASSPHRASE_CREDENTIAL
        if path.exists():
            return read_passphrase(path)
    return None
