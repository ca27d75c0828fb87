"""What the key session hands back to the call layer: messages to send and events."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outgoing:
    """A message for the call layer to send: to ``recipient``, or to every current
    participant when ``recipient`` is None."""

    recipient: str | None
    msg_type: str
    body: bytes


@dataclass(frozen=True)
class E2EEEvent:
    """Base class of the session's events."""


@dataclass(frozen=True)
class EpochActivated(E2EEEvent):
    """We now send under ``epoch``; every member has acknowledged its keys. Show the
    ``security_code``."""

    epoch: int
    members: tuple[str, ...]
    security_code: str


@dataclass(frozen=True)
class MemberLagging(E2EEEvent):
    """Epoch ``epoch`` is not complete after the acknowledgement timeout; we still wait for
    ``missing`` (the members whose next message we lack)."""

    epoch: int
    missing: tuple[str, ...]


@dataclass(frozen=True)
class EpochFailed(E2EEEvent):
    """The attempt at ``epoch`` was abandoned (timed out, superseded, participants changed).
    Keys of the previous epoch stay in use unless a member left (then media stays paused)."""

    epoch: int
    reason: str


@dataclass(frozen=True)
class PeerCharterVersion(E2EEEvent):
    """``sender`` signed a message for this call under charter version ``peer_version``
    while this terminal holds ``version``: one of them must get the newer charter before
    they can agree keys. Reported once per sender and version."""

    sender: str
    peer_version: int
    version: int

    @property
    def message(self) -> str:
        return (
            f"peer {self.sender} has charter version {self.peer_version}; "
            f"this terminal has {self.version}"
        )


@dataclass(frozen=True)
class KeyRejected(E2EEEvent):
    """A message from ``sender`` was refused; ``reason`` is the error's reason label."""

    sender: str
    reason: str
    msg_type: str = ""
