"""Media framing for SFrame, and the thread-safe frame crypto the media engine calls.

Frame layouts (docs/protocol.md, "Frames")::

    video (VP8):  clear prefix (10 bytes on key frames, 3 on delta frames) || SFrame ciphertext
    audio (Opus): SFrame ciphertext

    SFrame ciphertext = header (KID, CTR) || AEAD ciphertext || tag
    AAD               = header || kind byte (b"v" or b"a") || clear prefix

A VP8 frame is a key frame when bit 0 of its first byte is 0 (RFC 6386 §9.1, frame tag).
The clear prefix is the VP8 payload header, left readable so that depacketizers and an SFU
can parse it; it is the SFrame *metadata*, so changing it makes the tag fail. The kind byte
keeps an audio frame from being accepted on the video path and the other way round.

:class:`MediaCrypto` is called from the media engine's encoder and decoder threads, and
driven (keys in, keys out) by :class:`hotline.e2ee.session.CallKeySession` on the call's
thread. One lock guards its state, taken once per frame (a 50 KB frame holds it ~20 µs).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from hotline.e2ee import sframe
from hotline.e2ee.frame_digest import FrameHashes, ReceivedFrame, SentFrame, frame_hash
from hotline.e2ee.sframe import CipherSuite, KeyStore, SFrameKey, SFrameSender
from hotline.errors import (
    CounterExhausted,
    InvalidMediaFrame,
    MalformedFrame,
    NoMediaKey,
    SFrameError,
    UncheckedFrame,
    WrongSender,
)

log = logging.getLogger(__name__)

VIDEO: Final = "video"
AUDIO: Final = "audio"
KINDS: Final = (VIDEO, AUDIO)
#: the byte that names the kind in the AAD
KIND_BYTE: Final = {VIDEO: b"v", AUDIO: b"a"}
#: VP8 payload header kept in clear (RFC 6386 §9.1: 3-byte frame tag, + 7 bytes on key frames)
VP8_KEY_FRAME_PREFIX: Final = 10
VP8_DELTA_FRAME_PREFIX: Final = 3
_AUDIO_AAD: Final = KIND_BYTE[AUDIO]
_VIDEO_AAD: Final = KIND_BYTE[VIDEO]
#: how many past epochs' rosters are remembered to name the sender of a rejected frame
_ROSTER_MEMORY: Final = 16
#: frame hashes kept for the call layer between two of its looks (each way; ~100 s of media)
DEFAULT_HASH_BUFFER: Final = 8192


class FrameCrypto(Protocol):
    """What the media engine calls, from its encoder and decoder threads."""

    def protect(self, kind: str, frame: bytes) -> bytes: ...

    def unprotect(self, kind: str, data: bytes) -> bytes: ...


class KeySink(Protocol):
    """Where the key session puts the keys it agrees (on the call's thread); the frame
    crypto behind it belongs to the media engine: :class:`MediaCrypto` in this process, or
    a browser page's worker that the daemon keys over its local channel."""

    def install_receive_keys(
        self,
        epoch: int,
        roster: Sequence[str],
        keys: Mapping[str, bytes | bytearray],
        suite: CipherSuite | None = None,
    ) -> None: ...

    def activate_send(
        self,
        epoch: int,
        sender_index: int,
        base_key: bytes | bytearray,
        suite: CipherSuite | None = None,
    ) -> None: ...

    def pause_sending(self, reason: str) -> None: ...

    def erase_epochs_through(self, epoch: int) -> None: ...

    def erase_epoch(self, epoch: int) -> None: ...

    def forget_sender(self, member: str) -> None: ...


def vp8_clear_prefix_length(frame: bytes) -> int:
    """How many leading bytes of a VP8 frame stay in clear: 10 on key frames, else 3."""
    if not frame:
        raise MalformedFrame("empty VP8 frame")
    return VP8_KEY_FRAME_PREFIX if frame[0] & 0x01 == 0 else VP8_DELTA_FRAME_PREFIX


@dataclass(frozen=True)
class MediaStats:
    """A snapshot of :class:`MediaCrypto`'s counters."""

    protected: int
    unprotected: int
    #: frames refused by ``unprotect``, by reason (``unknown_kid``, ``bad_tag``, ``replay``,
    #: ``expired_key``, ``malformed_frame``)
    rejected: Mapping[str, int]
    #: frames ``protect`` refused, by reason (``no_media_key``, ``counter_exhausted``, ...)
    refused: Mapping[str, int]
    #: the member whose frame was rejected last (None if unknown or none)
    last_rejected_sender: str | None
    #: the epoch we send in (0 while we cannot send)
    sending_epoch: int
    #: epochs we hold receive keys for
    receive_epochs: tuple[int, ...]
    #: the SFrame cipher suite of our send key (None while we cannot send)
    sending_suite: str | None = None
    #: frames accepted so far by sender (liveness per member where one connection carries
    #: everyone's frames: an SFU)
    unprotected_by_sender: Mapping[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class _Counters:
    rejected: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    last_rejected_sender: str | None = None


class MediaCrypto:
    """Thread-safe SFrame protection of VP8 video and Opus audio frames (a
    :class:`FrameCrypto` and a :class:`KeySink`). With no active send key, ``protect`` raises
    :class:`NoMediaKey`: no key, no media.

    The hash of every frame protected and every frame accepted is recorded
    (:mod:`hotline.e2ee.frame_digest`) for the call layer to sign and check; it takes them
    with :meth:`take_frame_hashes`. At most ``hash_buffer`` are kept each way between two
    takes (the oldest are dropped and counted); 0 records none."""

    def __init__(
        self,
        suite: CipherSuite = sframe.DEFAULT_SUITE,
        *,
        history: int = sframe.DEFAULT_HISTORY,
        replay_window: int = sframe.DEFAULT_REPLAY_WINDOW,
        counter_limit: int = sframe.MAX_COUNTER,
        hash_buffer: int = DEFAULT_HASH_BUFFER,
    ) -> None:
        self.suite = suite
        self._lock = threading.Lock()
        self._store = KeyStore(suite, history=history, replay_window=replay_window)
        self._send: SFrameSender | None = None
        self._send_epoch = 0
        self._pause_reason = "no epoch is active yet"
        self._counter_limit = counter_limit
        self._rosters: dict[int, tuple[str, ...]] = {}
        self._counters = _Counters()
        self._protected = 0
        self._unprotected = 0
        self._by_sender: Counter[str] = Counter()
        #: whether frame hashes are recorded (``hash_buffer`` > 0)
        self.frame_hashes = hash_buffer > 0
        self._sent: deque[SentFrame] = deque(maxlen=max(hash_buffer, 1))
        self._received: deque[ReceivedFrame] = deque(maxlen=max(hash_buffer, 1))
        self._hash_overflow = 0
        #: frames whose hash cannot be recorded are refused (:class:`UncheckedFrame`), not only
        #: counted: the call sets it where the signed digests are what binds a frame to its
        #: sender (through an SFU, strict digests)
        self.hashes_required = False

    # --- the media engine's side (any thread) ------------------------------------------------

    def protect(self, kind: str, frame: bytes) -> bytes:
        """Protect one encoded frame of ``kind`` ("video": VP8, "audio": Opus)."""
        payload: bytes | memoryview
        try:
            if kind == AUDIO:
                metadata, clear, payload = _AUDIO_AAD, b"", frame
            elif kind == VIDEO and frame:
                n = VP8_DELTA_FRAME_PREFIX if frame[0] & 0x01 else VP8_KEY_FRAME_PREFIX
                if len(frame) < n:
                    raise InvalidMediaFrame(f"VP8 frame of {len(frame)} bytes is shorter than {n}")
                clear = frame[:n]
                metadata, payload = _VIDEO_AAD + clear, memoryview(frame)[n:]
            else:
                raise InvalidMediaFrame(
                    "empty video frame" if kind == VIDEO else f"unknown media kind {kind!r}"
                )
            with self._lock:
                sender = self._send
                if sender is None:
                    raise NoMediaKey(f"no media key: {self._pause_reason}")
                ctr = sender.reserve()
                out = sender.key.protect(ctr, payload, metadata, clear)
                self._protected += 1
                if self.frame_hashes:  # in the lock: recorded in counter order
                    if len(self._sent) == self._sent.maxlen:
                        self._hash_overflow += 1
                    self._sent.append(SentFrame(sender.key.kid, ctr, frame_hash(metadata[:1], out)))
            return out
        except (NoMediaKey, CounterExhausted, InvalidMediaFrame, SFrameError) as exc:
            with self._lock:
                refused = self._counters.refused
                refused[exc.reason] = refused.get(exc.reason, 0) + 1
            log.debug("frame not protected: %s", exc.reason)
            raise

    def unprotect(self, kind: str, data: bytes, peer: str | None = None) -> bytes:
        """Check and decrypt one protected frame; returns the encoded frame.

        ``peer``: the member whose peer connection the frame arrived on (mesh calls, see
        :meth:`for_peer`); a frame under any other member's KID is refused
        (:class:`WrongSender`) before it is decrypted. None: no binding (an SFU path).

        Raises an :class:`SFrameError` subclass (also counted, with the sender if known).
        Order: parse, find the key, check the binding, authenticate and decrypt, then check
        and mark the counter in the replay window (a forgery never moves the window).
        """
        kid: int | None = None
        try:
            if kind == AUDIO:
                metadata, clear, start = _AUDIO_AAD, b"", 0
            elif kind == VIDEO and data:
                start = VP8_DELTA_FRAME_PREFIX if data[0] & 0x01 else VP8_KEY_FRAME_PREFIX
                if len(data) <= start:
                    raise MalformedFrame("protected VP8 frame ends inside its clear prefix")
                clear = data[:start]
                metadata = _VIDEO_AAD + clear
            else:
                raise MalformedFrame("empty video frame" if kind == VIDEO else "unknown media kind")
            kid, ctr, hlen = sframe.decode_header(data, start)
            header_end = start + hlen
            with self._lock:
                entry = self._store.lookup_entry(kid)
                if (
                    self.hashes_required
                    and self.frame_hashes
                    and len(self._received) == self._received.maxlen
                ):
                    raise UncheckedFrame(
                        f"{len(self._received)} frame hashes wait for the next digest: "
                        "a frame that cannot be checked is not shown"
                    )
                if peer is not None and entry.sender != peer:
                    raise WrongSender(
                        f"a frame under the KID of {entry.sender[:64]} came from {peer[:64]}"
                    )
                plaintext = entry.key.open(
                    data[start:header_end], ctr, memoryview(data)[header_end:], metadata
                )
                entry.window.accept(ctr)  # refuses a replay; only authentic frames get here
                self._unprotected += 1
                self._by_sender[entry.sender] += 1
                member = entry.sender
        except SFrameError as exc:
            with self._lock:
                rejected = self._counters.rejected
                rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
                sender = peer if isinstance(exc, WrongSender) else self._sender_name(kid)
                self._counters.last_rejected_sender = sender
            log.debug("frame rejected: %s (kid=%s, sender=%s)", exc.reason, kid, sender)
            raise
        if self.frame_hashes:
            record = ReceivedFrame(kid, ctr, frame_hash(metadata[:1], data), member)
            with self._lock:
                if len(self._received) == self._received.maxlen:
                    self._hash_overflow += 1
                self._received.append(record)
        return clear + plaintext if clear else plaintext

    def take_frame_hashes(self) -> FrameHashes:
        """The hashes of the frames protected and accepted since the last call."""
        with self._lock:
            out = FrameHashes(tuple(self._sent), tuple(self._received), self._hash_overflow)
            self._sent.clear()
            self._received.clear()
            self._hash_overflow = 0
        return out

    def member_of(self, kid: int) -> str | None:
        """The member ``kid`` belongs to by its epoch's roster (None: not known here)."""
        with self._lock:
            return self._sender_name(kid)

    def for_peer(self, peer: str) -> PeerFrameCrypto:
        """The frame crypto for the peer connection to ``peer`` (a mesh call): it protects
        like this object and accepts only frames under ``peer``'s KIDs."""
        return PeerFrameCrypto(self, peer)

    def stats(self) -> MediaStats:
        with self._lock:
            c = self._counters
            return MediaStats(
                protected=self._protected,
                unprotected=self._unprotected,
                rejected=dict(c.rejected),
                refused=dict(c.refused),
                last_rejected_sender=c.last_rejected_sender,
                sending_epoch=self._send_epoch if self._send is not None else 0,
                receive_epochs=tuple(sorted({sframe.kid_epoch(k) for k in self._store.kids()})),
                sending_suite=self._send.key.suite.name if self._send is not None else None,
                unprotected_by_sender=dict(self._by_sender),
            )

    def _sender_name(self, kid: int | None) -> str | None:
        if kid is None:
            return None
        name = self._store.sender_of(kid)
        if name is not None:
            return name
        roster = self._rosters.get(sframe.kid_epoch(kid))
        index = sframe.kid_sender_index(kid)
        return roster[index] if roster is not None and index < len(roster) else None

    # --- the key session's side (the call's thread) ------------------------------------------

    def install_receive_keys(
        self,
        epoch: int,
        roster: Sequence[str],
        keys: Mapping[str, bytes | bytearray],
        suite: CipherSuite | None = None,
    ) -> None:
        """Keep ``keys`` (member id -> base key of ``epoch``) for receiving. ``roster`` is the
        epoch's member list sorted by id: a member's position is its KID sender index.
        ``suite``: the epoch's SFrame suite (default: the one this object was made with)."""
        with self._lock:
            self._rosters[epoch] = tuple(roster)
            for old in sorted(self._rosters)[:-_ROSTER_MEMORY]:
                del self._rosters[old]
            for member, base_key in keys.items():
                kid = sframe.make_kid(epoch, roster.index(member))
                self._store.add(kid, member, base_key, suite or self.suite)

    def activate_send(
        self,
        epoch: int,
        sender_index: int,
        base_key: bytes | bytearray,
        suite: CipherSuite | None = None,
    ) -> None:
        """Send from now on under our key of ``epoch`` (counters restart at 0), in ``suite``
        (default: the one this object was made with)."""
        key = SFrameKey(suite or self.suite, sframe.make_kid(epoch, sender_index), base_key)
        with self._lock:
            old = self._send
            self._send = SFrameSender(key, counter_limit=self._counter_limit)
            self._send_epoch = epoch
        if old is not None:
            old.key.erase()

    def pause_sending(self, reason: str) -> None:
        """Stop sending (``protect`` raises :class:`NoMediaKey`) and erase the send key."""
        with self._lock:
            old = self._send
            self._send = None
            self._send_epoch = 0
            self._pause_reason = reason
        if old is not None:
            old.key.erase()

    def erase_epochs_through(self, epoch: int) -> None:
        """Erase the receive keys of ``epoch`` and every older epoch (end of grace)."""
        with self._lock:
            self._store.erase_epochs_through(epoch)
            if self._send is not None and self._send_epoch <= epoch:
                self._send.key.erase()
                self._send = None
                self._send_epoch = 0
                self._pause_reason = f"keys of epoch {epoch} were erased"

    def erase_epoch(self, epoch: int) -> None:
        """Erase the receive keys of exactly ``epoch`` (an attempt that was abandoned)."""
        with self._lock:
            self._store.erase_epoch(epoch)

    def forget_sender(self, member: str) -> None:
        """Erase every receive key of ``member`` (it left the call)."""
        with self._lock:
            self._store.erase_sender(member)

    def receive_kids(self) -> list[int]:
        with self._lock:
            return self._store.kids()


class PeerFrameCrypto:
    """The :class:`FrameCrypto` of one peer connection of a mesh call: frames received on
    it must be under a KID of ``peer`` (the KID's sender index is bound to the connection it
    arrives on). Every member holds every sender key of its epoch, so without this binding a
    member could forge another member's frames; with it, a frame from one connection under
    another member's KID is refused as ``wrong_sender`` and counted."""

    __slots__ = ("media", "peer")

    def __init__(self, media: MediaCrypto, peer: str) -> None:
        self.media = media
        self.peer = peer

    def protect(self, kind: str, frame: bytes) -> bytes:
        return self.media.protect(kind, frame)

    def unprotect(self, kind: str, data: bytes) -> bytes:
        return self.media.unprotect(kind, data, self.peer)

    def __repr__(self) -> str:
        return f"PeerFrameCrypto(peer={self.peer!r})"
