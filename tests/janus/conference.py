"""Conferences through a real Janus inside one lab namespace (see ``tests.janus.server``).

:func:`run_in_host` runs a coroutine on an event loop of its own in a thread that joined the
host's namespace, with ICE gathering on the host's lab address only: every socket the loop
opens (HTTP to Janus, ICE, DTLS, RTP) is in that namespace. :func:`keyed_members` gives each
member a :class:`MediaCrypto` keyed by a real key agreement (``tests.e2ee.net``).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from hotline.e2ee.media import MediaCrypto
from hotline.media import engine
from hotline.media.aiortc_patch import FrameCrypto
from hotline.media.sources import MediaSource, SyntheticAudioTrack, SyntheticVideoTrack
from hotline.sfu.conference import SfuConference
from tests.e2ee.net import Net
from tests.netlab import Host, in_namespace

T = TypeVar("T")

#: small pictures keep a conference of several terminals cheap on 2 shared cores
WIDTH, HEIGHT, FPS = 320, 180, 15


def run_in_host(host: Host, main: Callable[[], Awaitable[T]]) -> T:
    """``main()`` on a fresh event loop inside ``host``'s namespace, ICE on its address."""
    before = engine.ice_addresses()

    def target() -> T:
        engine.set_ice_addresses([host.addr])
        try:
            return asyncio.run(main())  # type: ignore[arg-type]
        finally:
            engine.set_ice_addresses(before)

    return in_namespace(host.ns, target)


def keyed_members(
    ids: Sequence[str], seed: int = 1, make: Callable[[], MediaCrypto] = MediaCrypto
) -> tuple[Net, dict[str, MediaCrypto]]:
    """``ids`` agree an epoch (real HPKE, signed roster); each one's keys in its MediaCrypto."""
    cryptos = {i: make() for i in ids}
    net = Net(ids, seed=seed)
    for i in ids:
        net.session_kw = {"key_sink": cryptos[i]}
        net.add_member(i)
    net.set_view(ids)
    net.agreed(ids)
    return net, cryptos


def synthetic_source(name: str) -> MediaSource:
    return MediaSource(
        audio=SyntheticAudioTrack(),
        video=SyntheticVideoTrack(name, WIDTH, HEIGHT, FPS),
        description=f"synthetic {name}",
    )


def room_id() -> int:
    return secrets.randbelow(1 << 40) + 1


class RecordingCrypto(MediaCrypto):
    """The real frame crypto, remembering the SHA-256 of every frame it protected (the
    ciphertext that leaves for the SFU) and of every plaintext it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: set[bytes] = set()
        self.plain: set[bytes] = set()

    def protect(self, kind: str, frame: bytes) -> bytes:
        out = super().protect(kind, frame)
        self.plain.add(hashlib.sha256(frame).digest())
        self.sent.add(hashlib.sha256(out).digest())
        return out


class RecordingPeer:
    """A subscription's frame crypto that remembers the SHA-256 of every frame the SFU
    delivered on it, before it is checked."""

    def __init__(self, inner: FrameCrypto) -> None:
        self.inner = inner
        self.arrived: list[bytes] = []

    def protect(self, kind: str, frame: bytes) -> bytes:
        return self.inner.protect(kind, frame)

    def unprotect(self, kind: str, data: bytes) -> bytes:
        self.arrived.append(hashlib.sha256(data).digest())
        return self.inner.unprotect(kind, data)


def conference(
    url: str,
    ids: Sequence[str],
    cryptos: dict[str, MediaCrypto],
    room: int,
    secret: str,
    **kwargs: Any,
) -> dict[str, SfuConference]:
    return {
        i: SfuConference(
            self_id=i,
            url=url,
            room=room,
            secret=secret,
            crypto=cryptos[i],
            source=synthetic_source(i),
            members=ids,
            **kwargs,
        )
        for i in ids
    }
