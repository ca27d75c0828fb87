"""SFrame (RFC 9605): header, key derivation, nonce, AAD, protect and unprotect.

Terms follow the RFC. A *base key* is the per-sender secret of one epoch; from it and the
*KID* (key identifier) we derive ``sframe_key`` and ``sframe_salt`` (§4.4.2); each frame
carries a header with the KID and a counter ``CTR`` (§4.3); the nonce is ``sframe_salt``
XOR ``CTR`` (§4.4.3); the AEAD's additional data is the header followed by the caller's
*metadata* (§4.4.3); the SFrame ciphertext is ``header || ciphertext || tag``.

Hotline conventions on top of the RFC (see docs/protocol.md):

* **KID layout** (our choice, §5.1 "Sender Keys" leaves it to the application)::

      KID = epoch << 8 | sender_index        epoch in [0, 2^56), sender_index in [0, 256)

  ``sender_index`` is the sender's position in the epoch's roster, sorted by terminal id.
  Both fields have fixed widths, so two different (epoch, sender) pairs never share a KID.
* **Counters** start at 0 for every KID (every KID has a fresh base key) and never repeat:
  :class:`SFrameSender` raises :class:`~hotline.errors.CounterExhausted` instead of
  wrapping.
* **Receivers** keep a sliding replay window per KID (:class:`ReplayWindow`) and a key
  store (:class:`KeyStore`) with a bounded history per sender; keys are erased when the
  session says so (after the grace period) or when the history bound pushes them out.
* Decoding accepts any well-formed header (also non-minimal encodings; the header is
  authenticated, so re-encoding it makes the tag fail); encoding is always minimal.

Suites 6 to 8 (AES-256-CTR with HMAC-SHA-512) come from a later draft, not RFC 9605; they
are marked ``rfc9605=False``.

Nothing here is thread-safe on its own; :mod:`hotline.e2ee.media` adds the locking.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from hotline.errors import (
    BadFrameTag,
    CounterExhausted,
    ExpiredKey,
    MalformedFrame,
    ReplayedFrame,
    UnknownKeyId,
    UsageError,
)

# --- constants ------------------------------------------------------------------------------

#: RFC 9605 §4.4.2 labels
SECRET_KEY_LABEL: Final = b"SFrame 1.0 Secret key "
SECRET_SALT_LABEL: Final = b"SFrame 1.0 Secret salt "

#: largest value of a KID or CTR field (8 bytes, RFC 9605 §4.3)
MAX_FIELD: Final = (1 << 64) - 1
#: the last counter a sender may use under one key; the next frame raises CounterExhausted
MAX_COUNTER: Final = MAX_FIELD

#: KID layout (Hotline): low 8 bits sender index, the 56 bits above them the epoch
KID_SENDER_BITS: Final = 8
MAX_SENDERS: Final = 1 << KID_SENDER_BITS
MAX_EPOCH: Final = (1 << (64 - KID_SENDER_BITS)) - 1

#: default size of the receiver's replay window, in counters
DEFAULT_REPLAY_WINDOW: Final = 1024
#: default number of KIDs a receiver keeps per sender (current, previous in grace, next)
DEFAULT_HISTORY: Final = 3


# --- cipher suites (RFC 9605 §4.5, Table 2 and §8.1) ------------------------------------------


@dataclass(frozen=True)
class CipherSuite:
    """One SFrame cipher suite and its sizes, in the RFC's notation."""

    value: int
    name: str
    #: hash output size (HKDF), bytes
    nh: int
    #: AEAD key size, bytes (for CTR+HMAC suites: encryption key + authentication key)
    nk: int
    #: nonce size, bytes
    nn: int
    #: tag size, bytes
    nt: int
    #: True for the AES-GCM suites, False for AES-CTR + HMAC
    gcm: bool
    #: the AES key part of ``nk`` for CTR+HMAC suites (``Nka``); equals ``nk`` for GCM
    nka: int
    #: defined by RFC 9605 (False for the later draft's suites)
    rfc9605: bool = True

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self.nh == 32 else hashes.SHA512()


SUITES: Final[dict[int, CipherSuite]] = {
    s.value: s
    for s in (
        CipherSuite(1, "AES_128_CTR_HMAC_SHA256_80", 32, 48, 12, 10, False, 16),
        CipherSuite(2, "AES_128_CTR_HMAC_SHA256_64", 32, 48, 12, 8, False, 16),
        CipherSuite(3, "AES_128_CTR_HMAC_SHA256_32", 32, 48, 12, 4, False, 16),
        CipherSuite(4, "AES_128_GCM_SHA256_128", 32, 16, 12, 16, True, 16),
        CipherSuite(5, "AES_256_GCM_SHA512_128", 64, 32, 12, 16, True, 32),
        CipherSuite(6, "AES_256_CTR_HMAC_SHA512_80", 64, 96, 12, 10, False, 32, rfc9605=False),
        CipherSuite(7, "AES_256_CTR_HMAC_SHA512_64", 64, 96, 12, 8, False, 32, rfc9605=False),
        CipherSuite(8, "AES_256_CTR_HMAC_SHA512_32", 64, 96, 12, 4, False, 32, rfc9605=False),
    )
}
SUITES_BY_NAME: Final[dict[str, CipherSuite]] = {s.name: s for s in SUITES.values()}
DEFAULT_SUITE: Final = SUITES_BY_NAME["AES_128_GCM_SHA256_128"]


def suite_by_name(name: str) -> CipherSuite:
    """The suite called ``name`` (RFC 9605 spelling). Raises :class:`UsageError`."""
    try:
        return SUITES_BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown SFrame cipher suite {name!r}") from None


def suite_by_value(value: int) -> CipherSuite:
    try:
        return SUITES[value]
    except KeyError:
        raise UsageError(f"unknown SFrame cipher suite 0x{value:04x}") from None


# --- KID layout (Hotline) --------------------------------------------------------------------


def make_kid(epoch: int, sender_index: int) -> int:
    """The KID of ``sender_index`` in ``epoch``: ``epoch << 8 | sender_index``."""
    if not 0 <= epoch <= MAX_EPOCH:
        raise UsageError(f"epoch {epoch} outside [0, 2^56)")
    if not 0 <= sender_index < MAX_SENDERS:
        raise UsageError(f"sender index {sender_index} outside [0, {MAX_SENDERS})")
    return epoch << KID_SENDER_BITS | sender_index


def kid_epoch(kid: int) -> int:
    return kid >> KID_SENDER_BITS


def kid_sender_index(kid: int) -> int:
    return kid & (MAX_SENDERS - 1)


# --- header (RFC 9605 §4.3) ----------------------------------------------------------------


def _field(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def encode_header(kid: int, ctr: int) -> bytes:
    """The minimal SFrame header for ``kid`` and ``ctr`` (each in [0, 2^64))."""
    if not 0 <= kid <= MAX_FIELD or not 0 <= ctr <= MAX_FIELD:
        raise UsageError("KID and CTR must fit in 64 bits")
    config = 0
    tail = b""
    if kid < 8:
        config |= kid << 4
    else:
        kid_bytes = _field(kid)
        config |= 0x80 | (len(kid_bytes) - 1) << 4
        tail = kid_bytes
    if ctr < 8:
        config |= ctr
    else:
        ctr_bytes = _field(ctr)
        config |= 0x08 | (len(ctr_bytes) - 1)
        tail += ctr_bytes
    return bytes((config,)) + tail


def decode_header(data: bytes | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """Parse the header at ``data[offset:]``: ``(kid, ctr, header_length)``.

    Raises :class:`MalformedFrame` if ``data`` ends inside the header.
    """
    if len(data) <= offset:
        raise MalformedFrame("empty SFrame ciphertext")
    config = data[offset]
    pos = offset + 1
    if config & 0x80:
        end = pos + ((config >> 4) & 0x07) + 1
        kid = int.from_bytes(data[pos:end], "big")
        pos = end
    else:
        kid = (config >> 4) & 0x07
    if config & 0x08:
        end = pos + (config & 0x07) + 1
        ctr = int.from_bytes(data[pos:end], "big")
        pos = end
    else:
        ctr = config & 0x07
    if pos > len(data):
        raise MalformedFrame("SFrame header truncated")
    return kid, ctr, pos - offset


# --- key derivation (RFC 9605 §4.4.2) ------------------------------------------------------


def _hkdf_extract(suite: CipherSuite, salt: bytes, ikm: bytes | bytearray) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2): HMAC-Hash(salt, IKM); an empty salt means Nh zeros."""
    name = "sha256" if suite.nh == 32 else "sha512"
    return hmac.digest(salt or bytes(suite.nh), bytes(ikm), name)


def _hkdf_expand(suite: CipherSuite, prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(suite.hash_algorithm(), length, info).derive(prk)


def key_labels(suite: CipherSuite, kid: int) -> tuple[bytes, bytes]:
    """The ``sframe_key_label`` and ``sframe_salt_label`` for ``kid``."""
    tail = kid.to_bytes(8, "big") + suite.value.to_bytes(2, "big")
    return SECRET_KEY_LABEL + tail, SECRET_SALT_LABEL + tail


def derive_key_salt(
    suite: CipherSuite, kid: int, base_key: bytes | bytearray
) -> tuple[bytes, bytes, bytes]:
    """``(sframe_secret, sframe_key, sframe_salt)`` for ``kid`` from ``base_key``."""
    if not 0 <= kid <= MAX_FIELD:
        raise UsageError("KID must fit in 64 bits")
    secret = _hkdf_extract(suite, b"", base_key)
    key_label, salt_label = key_labels(suite, kid)
    key = _hkdf_expand(suite, secret, key_label, suite.nk)
    salt = _hkdf_expand(suite, secret, salt_label, suite.nn)
    return secret, key, salt


# --- AEAD (RFC 9605 §4.5) --------------------------------------------------------------------


class _CtrHmac:
    """AES-CTR with truncated HMAC (RFC 9605 §4.5.1)."""

    __slots__ = ("_auth_key", "_enc_key", "_hash", "_nt")

    def __init__(self, suite: CipherSuite, key: bytes) -> None:
        self._enc_key = key[: suite.nka]
        self._auth_key = key[suite.nka :]
        self._nt = suite.nt
        self._hash = "sha256" if suite.nh == 32 else "sha512"

    def _tag(self, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        auth_data = (
            len(aad).to_bytes(8, "big")
            + len(ct).to_bytes(8, "big")
            + self._nt.to_bytes(8, "big")
            + nonce
            + aad
            + ct
        )
        return hmac.digest(self._auth_key, auth_data, self._hash)[: self._nt]

    def _ctr(self, nonce: bytes, data: bytes | memoryview) -> bytes:
        ctx = Cipher(algorithms.AES(self._enc_key), modes.CTR(nonce + bytes(4))).encryptor()
        return ctx.update(data) + ctx.finalize()

    def encrypt(self, nonce: bytes, pt: bytes | memoryview, aad: bytes) -> bytes:
        ct = self._ctr(nonce, pt)
        return ct + self._tag(nonce, aad, ct)

    def decrypt(self, nonce: bytes, ct_tag: bytes | memoryview, aad: bytes) -> bytes:
        if len(ct_tag) < self._nt:
            raise MalformedFrame("SFrame ciphertext shorter than its tag")
        ct, tag = bytes(ct_tag[: -self._nt]), bytes(ct_tag[-self._nt :])
        if not hmac.compare_digest(self._tag(nonce, aad, ct), tag):
            raise BadFrameTag("SFrame tag does not verify")
        return self._ctr(nonce, ct)


class _Gcm:
    __slots__ = ("_aead", "_nt")

    def __init__(self, suite: CipherSuite, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._nt = suite.nt

    def encrypt(self, nonce: bytes, pt: bytes | memoryview, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, pt, aad)

    def decrypt(self, nonce: bytes, ct_tag: bytes | memoryview, aad: bytes) -> bytes:
        if len(ct_tag) < self._nt:
            raise MalformedFrame("SFrame ciphertext shorter than its tag")
        try:
            return self._aead.decrypt(nonce, ct_tag, aad)
        except InvalidTag:
            raise BadFrameTag("SFrame tag does not verify") from None


def aead_encrypt(suite: CipherSuite, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
    """The suite's AEAD.Encrypt (RFC 9605 §4.5): ciphertext followed by the tag."""
    return (_Gcm(suite, key) if suite.gcm else _CtrHmac(suite, key)).encrypt(nonce, pt, aad)


def aead_decrypt(suite: CipherSuite, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    """The suite's AEAD.Decrypt; raises :class:`BadFrameTag` or :class:`MalformedFrame`."""
    return (_Gcm(suite, key) if suite.gcm else _CtrHmac(suite, key)).decrypt(nonce, ct, aad)


# --- one KID's key material -----------------------------------------------------------------


_BYTE: Final = tuple(bytes((i,)) for i in range(256))


class SFrameKey:
    """``sframe_key`` and ``sframe_salt`` of one KID, with its AEAD ready to use.

    The KID half of the header is computed once; per frame only the CTR is encoded.
    """

    __slots__ = (
        "__weakref__",
        "_aead",
        "_gcm",
        "_kid_bytes",
        "_kid_config",
        "_nn",
        "_nt",
        "_salt",
        "kid",
        "suite",
    )

    def __init__(self, suite: CipherSuite, kid: int, base_key: bytes | bytearray) -> None:
        _, key, salt = derive_key_salt(suite, kid, base_key)
        self.suite = suite
        self.kid = kid
        self._nn = suite.nn
        self._nt = suite.nt
        self._gcm = suite.gcm
        self._salt = int.from_bytes(salt, "big")
        self._aead: AESGCM | _CtrHmac | None = AESGCM(key) if suite.gcm else _CtrHmac(suite, key)
        if kid < 8:
            self._kid_config, self._kid_bytes = kid << 4, b""
        else:
            kid_bytes = _field(kid)
            self._kid_config, self._kid_bytes = 0x80 | (len(kid_bytes) - 1) << 4, kid_bytes

    def nonce(self, ctr: int) -> bytes:
        """RFC 9605 §4.4.3: ``sframe_salt`` XOR ``CTR``, left-padded to ``Nn`` bytes."""
        return (self._salt ^ ctr).to_bytes(self._nn, "big")

    def header(self, ctr: int) -> bytes:
        """The header for ``ctr`` under this KID (same bytes as :func:`encode_header`)."""
        if ctr < 8:
            return _BYTE[self._kid_config | ctr] + self._kid_bytes
        n = (ctr.bit_length() + 7) >> 3
        if n > 8:
            raise UsageError("CTR must fit in 64 bits")
        return _BYTE[self._kid_config | 0x08 | (n - 1)] + self._kid_bytes + ctr.to_bytes(n, "big")

    def protect(
        self, ctr: int, plaintext: bytes | memoryview, metadata: bytes = b"", prefix: bytes = b""
    ) -> bytes:
        """``prefix || header || ct || tag``: the SFrame ciphertext of ``plaintext`` at
        counter ``ctr`` (RFC 9605 §4.4.3), after ``prefix`` (bytes the caller sends in clear;
        they are authenticated only if they are also in ``metadata``)."""
        aead = self._aead
        if aead is None:
            raise ExpiredKey(f"key of KID {self.kid} was erased")
        header = self.header(ctr)
        nonce = (self._salt ^ ctr).to_bytes(self._nn, "big")
        return prefix + header + aead.encrypt(nonce, plaintext, header + metadata)

    def open(
        self, header: bytes, ctr: int, body: bytes | memoryview, metadata: bytes = b""
    ) -> bytes:
        """Decrypt ``body`` (after the header) of a frame whose header was already parsed.
        Raises :class:`BadFrameTag`, :class:`MalformedFrame` or :class:`ExpiredKey`."""
        aead = self._aead
        if aead is None:
            raise ExpiredKey(f"key of KID {self.kid} was erased")
        if len(body) < self._nt:
            raise MalformedFrame("SFrame ciphertext shorter than its tag")
        nonce = (self._salt ^ ctr).to_bytes(self._nn, "big")
        if not self._gcm:
            return aead.decrypt(nonce, body, header + metadata)
        try:
            return aead.decrypt(nonce, body, header + metadata)
        except InvalidTag:
            raise BadFrameTag("SFrame tag does not verify") from None

    def __repr__(self) -> str:  # never the key or the salt
        return f"SFrameKey({self.suite.name}, kid={self.kid}, erased={self._aead is None})"

    def erase(self) -> None:
        """Drop the derived key (the AEAD object) and the salt; later use raises."""
        self._aead = None
        self._salt = 0


def protect(key: SFrameKey, ctr: int, plaintext: bytes, metadata: bytes = b"") -> bytes:
    """RFC 9605 §4.4.3 protect, with an explicit counter (see :class:`SFrameSender`)."""
    return key.protect(ctr, plaintext, metadata)


def unprotect(
    lookup: Callable[[int], SFrameKey], ciphertext: bytes, metadata: bytes = b""
) -> tuple[int, int, bytes]:
    """RFC 9605 §4.4.4 unprotect: ``(kid, ctr, plaintext)``. ``lookup`` maps a KID to its key
    or raises (:class:`UnknownKeyId`, :class:`ExpiredKey`). No replay check here."""
    kid, ctr, hlen = decode_header(ciphertext)
    key = lookup(kid)
    return kid, ctr, key.open(ciphertext[:hlen], ctr, ciphertext[hlen:], metadata)


# --- sender ----------------------------------------------------------------------------------


class SFrameSender:
    """Protects frames under one KID with counters 0, 1, 2, ... that never repeat.

    Raises :class:`CounterExhausted` once ``counter_limit`` has been used, before any
    counter could repeat. Not thread-safe: the caller serialises calls.
    """

    __slots__ = ("_limit", "key", "next_counter")

    def __init__(self, key: SFrameKey, *, counter_limit: int = MAX_COUNTER) -> None:
        if not 0 <= counter_limit <= MAX_COUNTER:
            raise UsageError("counter limit must be in [0, 2^64)")
        self.key = key
        self.next_counter = 0
        self._limit = counter_limit

    def __repr__(self) -> str:
        return f"SFrameSender({self.key!r}, next_counter={self.next_counter})"

    def reserve(self) -> int:
        """Take the next counter (raises :class:`CounterExhausted` past the limit)."""
        ctr = self.next_counter
        if ctr > self._limit:
            raise CounterExhausted(
                f"SFrame counter of KID {self.key.kid} exhausted; a new epoch is needed"
            )
        self.next_counter = ctr + 1
        return ctr

    def protect(self, plaintext: bytes | memoryview, metadata: bytes = b"") -> bytes:
        ctr = self.next_counter
        if ctr > self._limit:
            self.reserve()  # raises CounterExhausted
        self.next_counter = ctr + 1
        return self.key.protect(ctr, plaintext, metadata)


# --- receiver: replay window and key store ---------------------------------------------------


class ReplayWindow:
    """Sliding window over counters (like IPsec's): accepts each counter at most once, and
    refuses counters more than ``size - 1`` below the highest accepted one."""

    __slots__ = ("_bits", "_highest", "_mask", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        if size < 1:
            raise UsageError("replay window must hold at least one counter")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest = -1
        self._bits = 0  # bit i set: counter (highest - i) was accepted

    def check(self, ctr: int) -> None:
        """Raise :class:`ReplayedFrame` if ``ctr`` would be refused (does not record it)."""
        if ctr > self._highest:
            return
        offset = self._highest - ctr
        if offset >= self.size:
            raise ReplayedFrame(f"counter {ctr} is older than the replay window")
        if self._bits >> offset & 1:
            raise ReplayedFrame(f"counter {ctr} was already received")

    def accept(self, ctr: int) -> None:
        """Check ``ctr`` and record it. Call only after the frame authenticated."""
        highest = self._highest
        if ctr > highest:
            shift = ctr - highest
            self._bits = 1 if shift >= self.size else ((self._bits << shift) | 1) & self._mask
            self._highest = ctr
            return
        self.check(ctr)
        self._bits |= 1 << (highest - ctr)


@dataclass
class _ReceiveEntry:
    key: SFrameKey
    sender: str
    window: ReplayWindow


class KeyStore:
    """The receiver's keys, by KID, with a replay window each.

    At most ``history`` KIDs are kept per sender; adding one more erases that sender's
    oldest. :meth:`erase_epochs_through` erases whole epochs (the session calls it when the
    grace period after an epoch change ends). A KID whose epoch was erased gives
    :class:`ExpiredKey`; any other missing KID gives :class:`UnknownKeyId`.
    """

    def __init__(
        self,
        suite: CipherSuite,
        *,
        history: int = DEFAULT_HISTORY,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        if history < 1:
            raise UsageError("key history must keep at least one key per sender")
        self.suite = suite
        self.history = history
        self.replay_window = replay_window
        self._entries: dict[int, _ReceiveEntry] = {}
        self._by_sender: dict[str, deque[int]] = {}
        #: highest epoch erased as a whole (grace period over); -1: none
        self.erased_through = -1
        #: KIDs erased individually (history bound, removed sender), newest last, bounded
        self._evicted: deque[int] = deque(maxlen=4 * MAX_SENDERS)

    def add(
        self,
        kid: int,
        sender: str,
        base_key: bytes | bytearray,
        suite: CipherSuite | None = None,
    ) -> None:
        """Derive and keep the key of ``kid`` (``sender``'s, for one epoch), under ``suite``
        (default: the store's; an epoch bound to a newer charter may use another)."""
        if kid in self._entries or kid_epoch(kid) <= self.erased_through:
            raise UsageError(f"KID {kid} is already known or already erased")
        self._entries[kid] = _ReceiveEntry(
            SFrameKey(suite or self.suite, kid, base_key), sender, ReplayWindow(self.replay_window)
        )
        kids = self._by_sender.setdefault(sender, deque())
        kids.append(kid)
        while len(kids) > self.history:
            self._drop(kids.popleft())

    def _drop(self, kid: int) -> None:
        entry = self._entries.pop(kid, None)
        if entry is not None:
            entry.key.erase()
            self._evicted.append(kid)

    def lookup(self, kid: int) -> SFrameKey:
        return self.entry(kid).key

    def entry(self, kid: int) -> _ReceiveEntry:
        entry = self._entries.get(kid)
        if entry is None:
            if kid_epoch(kid) <= self.erased_through or kid in self._evicted:
                raise ExpiredKey(f"keys of KID {kid} (epoch {kid_epoch(kid)}) were erased")
            raise UnknownKeyId(f"no key for KID {kid} (epoch {kid_epoch(kid)})")
        return entry

    def lookup_entry(self, kid: int) -> _ReceiveEntry:
        """Like :meth:`entry`, with the common case first."""
        return self._entries.get(kid) or self.entry(kid)

    def sender_of(self, kid: int) -> str | None:
        entry = self._entries.get(kid)
        return entry.sender if entry is not None else None

    def erase_epochs_through(self, epoch: int) -> None:
        """Erase every key of ``epoch`` and of all older epochs."""
        for kid in [k for k in self._entries if kid_epoch(k) <= epoch]:
            entry = self._entries.pop(kid)
            entry.key.erase()
            self._by_sender[entry.sender].remove(kid)
        self.erased_through = max(self.erased_through, epoch)

    def erase_epoch(self, epoch: int) -> None:
        """Erase every key of exactly ``epoch`` (later frames under it: :class:`ExpiredKey`)."""
        for kid in [k for k in self._entries if kid_epoch(k) == epoch]:
            self._by_sender[self._entries[kid].sender].remove(kid)
            self._drop(kid)

    def erase_sender(self, sender: str) -> None:
        """Erase every key of ``sender`` (a member who left)."""
        for kid in self._by_sender.pop(sender, deque()):
            self._drop(kid)

    def kids(self) -> list[int]:
        return sorted(self._entries)

    def unprotect(self, ciphertext: bytes, metadata: bytes = b"") -> tuple[int, int, bytes]:
        """Unprotect and record the counter: ``(kid, ctr, plaintext)``.

        Order: parse, find the key, authenticate and decrypt, then check and mark the
        counter in the replay window (a forgery never moves the window).
        """
        kid, ctr, hlen = decode_header(ciphertext)
        entry = self._entries.get(kid) or self.entry(kid)
        plaintext = entry.key.open(ciphertext[:hlen], ctr, memoryview(ciphertext)[hlen:], metadata)
        entry.window.accept(ctr)  # refuses a replay; only authentic frames get here
        return kid, ctr, plaintext
