"""Which topology a call uses, and the SFU room of a call (pure: no I/O).

Mesh up to the charter's ``mesh_limit`` terminals, through an SFU of the charter above it
(``docs/protocol.md`` §14). Every member computes the same room from the line and call ids,
so no message is needed to agree on it; its secret (which lets the holder destroy or edit
the room, nothing more: the SFU is untrusted and holds no key) is derived the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from hotline.charter.model import SfuEndpoint
from hotline.sfu.janus import MAX_ID

MESH: Final = "mesh"
SFU: Final = "sfu"
Topology = Literal["mesh", "sfu"]

_ROOM_LABEL: Final = b"hotline sfu room v1"
_SECRET_LABEL: Final = b"hotline sfu room secret v1"


def choose(members: int, mesh_limit: int, sfus: Sequence[SfuEndpoint]) -> Topology:
    """``sfu`` when the call has more than ``mesh_limit`` members and the charter names an
    SFU; otherwise ``mesh`` (a charter without an SFU keeps every call a mesh)."""
    return SFU if members > mesh_limit and sfus else MESH


def _digest(label: bytes, line_id: str, call_id: str) -> bytes:
    data = label + b"\x00" + line_id.encode() + b"\x00" + call_id.encode()
    return hashlib.sha256(data).digest()


def room_of(line_id: str, call_id: str) -> int:
    """The VideoRoom room id of a call: 1 .. 2**53 - 1."""
    value = int.from_bytes(_digest(_ROOM_LABEL, line_id, call_id)[:8], "big") % MAX_ID
    return value + 1 if value == 0 else value


def room_secret(line_id: str, call_id: str) -> str:
    return _digest(_SECRET_LABEL, line_id, call_id)[:16].hex()


@dataclass(frozen=True)
class ConferenceSpec:
    """Where a terminal's conference goes: one SFU of the charter and the call's room."""

    self_id: str
    url: str
    #: SHA-256 of the SFU's DER certificate (https), or None (http on loopback)
    tls_fingerprint: bytes | None
    room: int
    secret: str
    #: how many publishers the room takes (the charter's max_participants)
    publishers: int


def conference_spec(
    *,
    self_id: str,
    line_id: str,
    call_id: str,
    sfu: SfuEndpoint,
    publishers: int,
) -> ConferenceSpec:
    pin = bytes.fromhex(sfu.tls_fingerprint[7:]) if sfu.tls_fingerprint else None
    return ConferenceSpec(
        self_id=self_id,
        url=sfu.url,
        tls_fingerprint=pin,
        room=room_of(line_id, call_id),
        secret=room_secret(line_id, call_id),
        publishers=publishers,
    )
