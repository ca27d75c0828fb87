"""The security code: twelve digits in three groups of four, read aloud to compare.

It is a hash of the epoch transcript: the roster hash (which covers the charter version,
line, call, epoch, every member's id, identity key, ephemeral key hash and commitment, and the
leader's commitment to the epoch secret) and
the nonces every member revealed after the roster was fixed. Every member computes it from
the same signed data, so it is identical everywhere; any substitution of a member, an
identity key or an ephemeral key changes the roster hash and so the code.

Nobody can steer it: each member commits to its nonce (in its ephemeral message, hence in
the roster) before it can see anyone else's nonce, and reveals it only after signing the
roster. Once an honest member has committed, the code is a uniformly random function of its
nonce that nobody else can influence; a man in the middle who runs two sessions has one
chance in 10^12 per epoch that the two codes match (docs/protocol.md, "Security code").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final

from hotline.encoding import encode

CODE_LABEL: Final = "hotline.e2ee.v2.security-code"
GROUPS: Final = 3
GROUP_DIGITS: Final = 4
DIGITS: Final = GROUPS * GROUP_DIGITS


def security_code(roster_hash: bytes, reveals: Mapping[str, bytes]) -> str:
    """The code of the epoch with roster ``roster_hash`` and the members' revealed nonces."""
    digest = hashlib.sha256(
        encode(
            {
                "t": CODE_LABEL,
                "roster": roster_hash,
                "reveals": [[m, reveals[m]] for m in sorted(reveals)],
            }
        )
    ).digest()
    # 128 bits reduced mod 10^12: the bias is below 2^-88
    number = int.from_bytes(digest[:16], "big") % 10**DIGITS
    text = f"{number:0{DIGITS}d}"
    return " ".join(text[i : i + GROUP_DIGITS] for i in range(0, DIGITS, GROUP_DIGITS))
