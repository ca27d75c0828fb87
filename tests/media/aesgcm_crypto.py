"""A small, real AES-128-GCM frame crypto for the media tests (not the SFrame of e2ee/).

Each side has its own send key and the peer's send key as receive key; nonces are a
64-bit counter (never reused under one key). Frame layout: 1 byte kind, 8 bytes counter,
then ciphertext and the 16-byte tag; the 9 header bytes are authenticated.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hotline.errors import CounterExhausted, E2EEError, SFrameError

KIND_IDS = {"audio": 0, "video": 1}
HEADER = 9
TAG = 16
REPLAY_WINDOW = 1024


class AesGcmFrameCrypto:
    def __init__(self, send_key: bytes | None, recv_key: bytes | None) -> None:
        self._send = AESGCM(send_key) if send_key is not None else None
        self._recv = AESGCM(recv_key) if recv_key is not None else None
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._highest: dict[int, int] = {}
        self._seen: dict[int, set[int]] = {0: set(), 1: set()}
        #: test hook: ``corrupt(kind, counter) -> True`` flips a ciphertext bit after protecting
        self.corrupt: Callable[[str, int], bool] | None = None

    def set_keys(self, send_key: bytes, recv_key: bytes) -> None:
        with self._lock:
            self._send = AESGCM(send_key)
            self._recv = AESGCM(recv_key)

    def protect(self, kind: str, frame: bytes) -> bytes:
        aead = self._send
        if aead is None:
            raise E2EEError("no send key yet", reason="no_key")
        ctr = next(self._counter)
        if ctr >= 1 << 64:
            raise CounterExhausted("frame counter exhausted")
        header = bytes([KIND_IDS[kind]]) + ctr.to_bytes(8, "big")
        out = header + aead.encrypt(ctr.to_bytes(12, "big"), frame, header)
        if self.corrupt is not None and self.corrupt(kind, ctr):
            out = out[:-1] + bytes([out[-1] ^ 0x01])
        return out

    def unprotect(self, kind: str, data: bytes) -> bytes:
        aead = self._recv
        if aead is None:
            raise SFrameError("no receive key yet", reason="unknown_key")
        if len(data) < HEADER + TAG:
            raise SFrameError("frame too short", reason="malformed")
        kind_id = data[0]
        if kind_id != KIND_IDS[kind]:
            raise SFrameError("frame of the wrong kind", reason="malformed")
        ctr = int.from_bytes(data[1:HEADER], "big")
        try:
            plain = aead.decrypt(ctr.to_bytes(12, "big"), data[HEADER:], data[:HEADER])
        except InvalidTag:
            raise SFrameError("frame authentication failed", reason="auth_failed") from None
        with self._lock:
            seen = self._seen[kind_id]
            highest = self._highest.get(kind_id, -1)
            if ctr in seen or ctr <= highest - REPLAY_WINDOW:
                raise SFrameError("replayed frame", reason="replay")
            seen.add(ctr)
            if ctr > highest:
                self._highest[kind_id] = ctr
                if len(seen) > 2 * REPLAY_WINDOW:
                    seen.difference_update({c for c in seen if c <= ctr - REPLAY_WINDOW})
        return plain


def crypto_pair() -> tuple[AesGcmFrameCrypto, AesGcmFrameCrypto]:
    """Two matching ends: A's send key is B's receive key and the other way round."""
    ka, kb = os.urandom(16), os.urandom(16)
    return AesGcmFrameCrypto(ka, kb), AesGcmFrameCrypto(kb, ka)
