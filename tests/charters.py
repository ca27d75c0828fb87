"""Charters for tests: a fixed pool of keys and a valid two-site charter to change."""

from __future__ import annotations

import dataclasses

from hotline.charter import (
    DEFAULT_POLICY,
    Charter,
    ExchangeEndpoint,
    Role,
    SignedCharter,
    Site,
    Terminal,
    enrolment_bytes,
)
from hotline.charter.model import CheckThresholds
from hotline.keys import SigningKey

#: readiness checks that do not judge speech quality. PESQ hears what a starved host does to
#: audio: terminal processes sharing two loaded cores drop to ~1.0-2.0 while the line is fine.
#: For tests about something else (set-up, records, alarms, the UI); PESQ itself is tested
#: across the network lab (tests/netlab/test_checks.py), where each terminal is a process.
SPEECH_UNJUDGED = CheckThresholds(green_pesq_x100=100, amber_pesq_x100=100)

# A fixed pool of keys: generating Ed25519 keys per hypothesis example is needless work.
KEYS = [SigningKey.generate() for _ in range(12)]


def make_terminal(
    site_id: str, site_key: SigningKey, terminal_id: str, role: Role, key: SigningKey
) -> Terminal:
    name = terminal_id.title()
    sig = site_key.sign(enrolment_bytes(site_id, terminal_id, name, role, key.public))
    return Terminal(terminal_id, site_id, name, role, key.public, sig)


def make_charter(version: int = 1, **changes: object) -> Charter:
    a, b = KEYS[0], KEYS[1]
    charter = Charter(
        line_id="sochi-washington",
        version=version,
        sites=(Site("sochi", "Sochi", a.public), Site("washington", "Washington", b.public)),
        terminals=(
            make_terminal("sochi", a, "sochi-principal", Role.PRINCIPAL, KEYS[2]),
            make_terminal("sochi", a, "sochi-interpreter", Role.INTERPRETER, KEYS[3]),
            make_terminal("washington", b, "wh-principal", Role.PRINCIPAL, KEYS[4]),
            make_terminal("washington", b, "wh-probe", Role.PROBE, KEYS[5]),
        ),
        exchanges=(ExchangeEndpoint("wss://exchange.example:8443", "sha256:" + "0f" * 32),),
        turn_relays=("turn:relay.example:3478?transport=udp",),
        policy=DEFAULT_POLICY,
        created_at=1_700_000_000,
    )
    return dataclasses.replace(charter, **changes)  # type: ignore[arg-type]


def sign_all(charter: Charter) -> SignedCharter:
    keys = {"sochi": KEYS[0], "washington": KEYS[1]}
    body = charter.to_bytes()
    return SignedCharter(charter, {s.site_id: keys[s.site_id].sign(body) for s in charter.sites})
