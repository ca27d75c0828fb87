"""Ephemeral KEM keys, the sealing of the epoch secret with HPKE (RFC 9180), its
commitment, and the derivation of every sender's base key from it.

Each member makes a fresh ephemeral key pair for every epoch (KEM from the charter policy).
The epoch's leader makes a fresh random *epoch secret* and seals it, in HPKE base mode, to
every other roster member's ephemeral public key (n − 1 seals per epoch); the HPKE ``info``
binds line, call, charter version, epoch, leader, recipient and the roster hash
(``cryptography``'s HPKE has no public AAD, so ``info`` carries all the context). The
leader commits to the secret in the signed roster (:func:`secret_commitment`), and every
member checks the secret it opened against that commitment, so all members hold the same
secret. Every sender's SFrame base key is then derived from the secret with HKDF
(:func:`derive_sender_key`), bound to the epoch, the roster hash and the sender.

==================  =========================================  ============================
KEM                 HPKE suite (KEM, KDF, AEAD)                ephemeral public key bytes
==================  =========================================  ============================
``MLKEM768_X25519``  MLKEM768_X25519, HKDF-SHA256, AES-256-GCM  ML-KEM-768 (1184) || X25519 (32)
``X25519``           DHKEM(X25519), HKDF-SHA256, AES-128-GCM    X25519 (32)
==================  =========================================  ============================

Private keys are made from seeds drawn from the injected ``rng`` (32 bytes for X25519, 64
for ML-KEM-768), kept in a ``bytearray`` that :meth:`EphemeralKeyPair.erase` overwrites
with zeros before dropping the key objects. The encapsulation randomness of HPKE comes from
``cryptography`` itself (it has no way to pass it in).
"""

from __future__ import annotations

import hmac as _stdlib_hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes, hmac, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hotline.encoding import encode
from hotline.errors import MalformedMessage, SealedKeyError, StateError, UsageError

KEM_HYBRID: Final = "MLKEM768_X25519"
KEM_X25519: Final = "X25519"
#: size of a sender's base key (the SFrame base_key), bytes
BASE_KEY_SIZE: Final = 32
#: size of the epoch secret the leader seals to every member, bytes
SECRET_SIZE: Final = 32
#: the HPKE ``info`` label of a sealed epoch secret (domain separation)
SEAL_INFO_LABEL: Final = "hotline.e2ee.v2.epoch-secret"
#: the label of the leader's commitment to the epoch secret
SECRET_COMMIT_LABEL: Final = "hotline.e2ee.v2.secret-commitment"  # noqa: S105 (a label)
#: the HKDF ``info`` label of a sender's base key
SENDER_KEY_LABEL: Final = "hotline.e2ee.v2.sender-base-key"

_X25519_SIZE: Final = 32
_MLKEM768_PUBLIC_SIZE: Final = 1184
_MLKEM_SEED_SIZE: Final = 64

Rng = Callable[[int], bytes]
_HpkePublic = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
_HpkePrivate = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


@dataclass(frozen=True)
class Kem:
    """A KEM the charter may choose, with its HPKE suite and sizes."""

    name: str
    public_size: int
    seed_size: int
    #: bytes HPKE adds to the sealed epoch secret: encapsulation + AEAD tag
    overhead: int

    def suite(self) -> hpke.Suite:
        if self.name == KEM_HYBRID:
            return hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
        return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)

    @property
    def sealed_size(self) -> int:
        return SECRET_SIZE + self.overhead


KEMS: Final[dict[str, Kem]] = {
    KEM_HYBRID: Kem(
        KEM_HYBRID,
        _MLKEM768_PUBLIC_SIZE + _X25519_SIZE,
        _MLKEM_SEED_SIZE + _X25519_SIZE,
        hpke.KEM.MLKEM768_X25519.enc_length() + 16,
    ),
    KEM_X25519: Kem(KEM_X25519, _X25519_SIZE, _X25519_SIZE, hpke.KEM.X25519.enc_length() + 16),
}


def kem_by_name(name: str) -> Kem:
    try:
        return KEMS[name]
    except KeyError:
        raise UsageError(f"unknown KEM {name!r} (expected one of {sorted(KEMS)})") from None


def parse_public_key(kem: Kem, raw: bytes) -> _HpkePublic:
    """The HPKE public key encoded as ``raw``; raises :class:`MalformedMessage`."""
    if len(raw) != kem.public_size:
        raise MalformedMessage(f"{kem.name} ephemeral key must be {kem.public_size} bytes")
    try:
        if kem.name == KEM_HYBRID:
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_SIZE]),
                x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_SIZE:]),
            )
        return x25519.X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise MalformedMessage(f"not a valid {kem.name} public key") from exc


def private_key_from_seed(kem: Kem, seed: bytes | bytearray) -> _HpkePrivate:
    """The HPKE private key made from ``seed`` (``kem.seed_size`` bytes)."""
    if len(seed) != kem.seed_size:
        raise UsageError(f"{kem.name} seed must be {kem.seed_size} bytes")
    if kem.name == KEM_HYBRID:
        return hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(seed[:_MLKEM_SEED_SIZE]),
            x25519.X25519PrivateKey.from_private_bytes(seed[_MLKEM_SEED_SIZE:]),
        )
    return x25519.X25519PrivateKey.from_private_bytes(seed)


def _public_bytes(kem: Kem, seed: bytes | bytearray) -> bytes:
    if kem.name == KEM_HYBRID:
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed[:_MLKEM_SEED_SIZE])
        x = x25519.X25519PrivateKey.from_private_bytes(seed[_MLKEM_SEED_SIZE:])
        return m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
    return x25519.X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


class EphemeralKeyPair:
    """One member's ephemeral KEM key pair for one epoch. :meth:`erase` destroys it."""

    __slots__ = ("__weakref__", "_private", "_seed", "kem", "public")

    def __init__(self, kem: Kem, seed: bytearray) -> None:
        self.kem = kem
        self._seed: bytearray | None = seed
        self.public = _public_bytes(kem, seed)
        self._private: _HpkePrivate | None = private_key_from_seed(kem, seed)

    @classmethod
    def generate(cls, kem: Kem, rng: Rng) -> EphemeralKeyPair:
        seed = bytearray(rng(kem.seed_size))
        if len(seed) != kem.seed_size:
            raise UsageError("the random source returned the wrong number of bytes")
        return cls(kem, seed)

    @property
    def erased(self) -> bool:
        return self._private is None and self._seed is None

    def open(self, sealed: bytes, info: bytes) -> bytes:
        """Open an epoch secret sealed to this key pair; raises :class:`SealedKeyError`."""
        if self._private is None:
            raise StateError("ephemeral private key already erased")
        if len(sealed) != self.kem.sealed_size:
            raise SealedKeyError(f"sealed epoch secret must be {self.kem.sealed_size} bytes")
        try:
            plain = self.kem.suite().decrypt(sealed, self._private, info)
        except Exception as exc:  # cryptography raises InvalidTag / ValueError here
            raise SealedKeyError("sealed epoch secret does not open") from exc
        if len(plain) != SECRET_SIZE:
            raise SealedKeyError(f"epoch secret must be {SECRET_SIZE} bytes")
        return plain

    def erase(self) -> None:
        """Overwrite the seed with zeros and drop the private key objects."""
        if self._seed is not None:
            zeroize(self._seed)
        self._seed = None
        self._private = None

    def seed_view(self) -> bytearray | None:
        """The seed buffer, for tests that check it was zeroed (None once erased)."""
        return self._seed

    def __repr__(self) -> str:
        return f"EphemeralKeyPair({self.kem.name}, erased={self.erased})"


def seal(kem: Kem, public_key: bytes, secret: bytes | bytearray, info: bytes) -> bytes:
    """Seal ``secret`` to ``public_key`` (``enc || ciphertext``); raises
    :class:`SealedKeyError` if the key cannot be used (e.g. a low-order X25519 point)."""
    pk = parse_public_key(kem, public_key)
    try:
        return kem.suite().encrypt(bytes(secret), pk, info)
    except Exception as exc:  # cryptography raises ValueError for unusable keys
        raise SealedKeyError(f"cannot seal to this {kem.name} key") from exc


def seal_info(
    line_id: str,
    call_id: str,
    *,
    charter_version: int,
    epoch: int,
    leader: str,
    recipient: str,
    roster_hash: bytes,
) -> bytes:
    """The HPKE ``info`` of the epoch secret sealed to one member: every piece of context,
    canonically."""
    return encode(
        {
            "t": SEAL_INFO_LABEL,
            "line": line_id,
            "call": call_id,
            "cv": charter_version,
            "epoch": epoch,
            "from": leader,
            "to": recipient,
            "roster": roster_hash,
        }
    )


def secret_commit_info(
    line_id: str, call_id: str, *, charter_version: int, epoch: int, leader: str
) -> bytes:
    """What the leader's commitment to the epoch secret is bound to, canonically. (The
    commitment itself is in the signed roster, so the roster hash covers it.)"""
    return encode(
        {
            "t": SECRET_COMMIT_LABEL,
            "line": line_id,
            "call": call_id,
            "cv": charter_version,
            "epoch": epoch,
            "from": leader,
        }
    )


def secret_commitment(secret: bytes | bytearray, info: bytes) -> bytes:
    """The leader's commitment to the epoch secret, signed in its roster:
    ``HMAC-SHA256(key = secret, msg = info)`` with ``info`` from :func:`secret_commit_info`.
    Every member recomputes it from the secret it opened (:func:`check_secret_commitment`),
    so a leader cannot give different members different secrets under one roster. It
    reveals nothing of the secret (HMAC under a 256-bit random key is a PRF); it binds
    because two secrets with one commitment would be a SHA-256 collision."""
    mac = hmac.HMAC(bytes(secret), hashes.SHA256())
    mac.update(info)
    return mac.finalize()


def check_secret_commitment(commit: bytes, secret: bytes | bytearray, info: bytes) -> None:
    """Raise :class:`SealedKeyError` unless ``commit`` is the commitment to ``secret``
    (constant-time comparison)."""
    if not _stdlib_hmac.compare_digest(secret_commitment(secret, info), commit):
        raise SealedKeyError("the secret sealed to us is not the one the leader committed to")


def sender_key_info(
    line_id: str,
    call_id: str,
    *,
    charter_version: int,
    epoch: int,
    roster_hash: bytes,
    sender: str,
    index: int,
) -> bytes:
    """The HKDF ``info`` of one sender's base key: every piece of context, canonically."""
    return encode(
        {
            "t": SENDER_KEY_LABEL,
            "line": line_id,
            "call": call_id,
            "cv": charter_version,
            "epoch": epoch,
            "roster": roster_hash,
            "sender": sender,
            "index": index,
        }
    )


def derive_sender_key(secret: bytes | bytearray, info: bytes) -> bytearray:
    """One sender's SFrame base key of the epoch: ``HKDF-SHA256(salt = "", ikm = secret,
    info = info, L = 32)`` with ``info`` from :func:`sender_key_info`. Distinct senders,
    epochs or rosters give independent keys."""
    if len(secret) != SECRET_SIZE:
        raise UsageError(f"the epoch secret must be {SECRET_SIZE} bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=BASE_KEY_SIZE, salt=None, info=info)
    return bytearray(hkdf.derive(bytes(secret)))


def zeroize(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place."""
    buf[:] = bytes(len(buf))
