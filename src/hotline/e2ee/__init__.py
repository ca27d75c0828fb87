"""End-to-end encryption of a call: SFrame per frame, an epoch secret sealed over HPKE from
which every sender's key is derived, signed rosters, epochs and the security code. Pure: no
I/O; time and randomness are passed in.

=====================  ==========================================================
module                 concept
=====================  ==========================================================
``sframe``             RFC 9605: header, key derivation, AEADs, counters, replay
                       window, key store; the KID layout (epoch << 8 | sender)
``media``              codec framing (VP8 clear prefix, Opus) and ``MediaCrypto``,
                       the thread-safe ``FrameCrypto`` the media engine calls;
                       ``for_peer`` binds a mesh connection to its peer's KIDs
``sender_keys``        ephemeral KEM keys, HPKE sealing of the epoch secret, its
                       commitment, the derivation of every sender's base key
``messages``           wire formats of the ``e2ee.*`` messages
``roster``             who proposes a roster, what a member checks before signing
``epochs``             the per-epoch state machine (transition table)
``security_code``      the code read aloud
``steps``              the protocol steps of an epoch and the checks on each message
``session``            ``CallKeySession``: ties it together for the call layer
``events``             ``Outgoing`` and the events the session reports
=====================  ==========================================================

The specification is ``docs/protocol.md``; the threat model ``docs/threat-model.md``.
"""

from hotline.e2ee.events import (
    E2EEEvent,
    EpochActivated,
    EpochFailed,
    KeyRejected,
    MemberLagging,
    Outgoing,
    PeerCharterVersion,
)
from hotline.e2ee.media import FrameCrypto, MediaCrypto, MediaStats, PeerFrameCrypto
from hotline.e2ee.session import CallKeySession

__all__ = [
    "CallKeySession",
    "E2EEEvent",
    "EpochActivated",
    "EpochFailed",
    "FrameCrypto",
    "KeyRejected",
    "MediaCrypto",
    "MediaStats",
    "MemberLagging",
    "Outgoing",
    "PeerCharterVersion",
    "PeerFrameCrypto",
]
