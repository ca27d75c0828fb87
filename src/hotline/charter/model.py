"""The charter model: sites, terminals, policy; canonical bytes; signatures; the file.

See :mod:`hotline.charter` for the overview and ``docs/charter.md`` for the format.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from hotline.charter.jsonio import (
    list_or_empty,
    parse_json_document,
    read_limited,
    to_json,
    unhex,
    unhex_field,
)
from hotline.encoding import INT_MAX, INT_MIN, Value, decode, encode
from hotline.errors import (
    CharterError,
    CharterFormatError,
    CharterIncomplete,
    EncodingError,
    SignatureError,
    StateError,
    UnknownMember,
)
from hotline.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PublicKey

# --- labels and limits ----------------------------------------------------------------------

#: first field of every charter body: binds signatures to "this is a Hotline charter, v1"
CHARTER_KIND = "hotline charter v1"
#: first field of every enrolment record a site signs for one of its terminals
ENROLMENT_KIND = "hotline enrolment v1"
#: the ``format`` field of a charter file
CHARTER_FILE_FORMAT = "hotline charter file v1"

#: a charter file (JSON) larger than this is refused before it is parsed
MAX_CHARTER_FILE_SIZE = 1 << 20
MAX_SITES = 16
MAX_TERMINALS = 256
MAX_EXCHANGES = 8
MAX_TURN_RELAYS = 16
MAX_SFUS = 8
MAX_NAME_LENGTH = 128
MAX_URL_LENGTH = 2048

#: ids of lines, sites and terminals: short, lower case, safe in file names and URLs
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
TLS_FINGERPRINT_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")

#: SFrame cipher suites (RFC 9605 section 4.5) a charter may name: the AEAD ones only
KNOWN_CIPHER_SUITES = frozenset({"AES_128_GCM_SHA256_128", "AES_256_GCM_SHA512_128"})
#: HPKE KEMs for sender keys: the post-quantum hybrid (default) or classic X25519
KNOWN_KEMS = frozenset({"MLKEM768_X25519", "X25519"})
#: what a terminal connects to: wss:// with a pinned certificate, or ws:// on loopback only
EXCHANGE_SCHEMES = frozenset({"ws", "wss"})
TURN_SCHEMES = frozenset({"turn", "turns"})
#: a Janus HTTP API: https:// with a pinned certificate, or http:// on loopback only
SFU_SCHEMES = frozenset({"http", "https"})

#: policy ranges (inclusive)
REKEY_INTERVAL_RANGE = (1, 86_400)
MAX_PARTICIPANTS_RANGE = (2, 64)
READINESS_INTERVAL_RANGE = (1, 30 * 86_400)
PEER_TIMEOUT_RANGE = (5, 3600)
#: most terminals in a mesh call; a call with more goes through one of the charter's SFUs
MESH_LIMIT_RANGE = (2, 64)


class Role(StrEnum):
    """What a terminal is for: the principal's screen, an interpreter's, an aide's, or a
    headless probe that answers readiness checks."""

    PRINCIPAL = "principal"
    INTERPRETER = "interpreter"
    AIDE = "aide"
    PROBE = "probe"


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One side of the line: its id, a human name, and its operator's public key."""

    site_id: str
    name: str
    operator_key: PublicKey

    def to_value(self) -> dict[str, Value]:
        return {"site_id": self.site_id, "name": self.name, "operator_key": self.operator_key.raw}


def enrolment_bytes(
    site_id: str, terminal_id: str, name: str, role: Role, identity_key: PublicKey
) -> bytes:
    """The canonical enrolment record a site's operator key signs for one terminal."""
    return encode(
        {
            "kind": ENROLMENT_KIND,
            "site_id": site_id,
            "terminal_id": terminal_id,
            "name": name,
            "role": str(role),
            "identity_key": identity_key.raw,
        }
    )


@dataclass(frozen=True)
class Terminal:
    """A terminal enrolled by a site: its identity key signs everything it says in a call."""

    terminal_id: str
    site_id: str
    name: str
    role: Role
    identity_key: PublicKey
    #: by the site's operator key, over :meth:`enrolment_bytes`
    enrolment_signature: bytes

    def enrolment_bytes(self) -> bytes:
        return enrolment_bytes(
            self.site_id, self.terminal_id, self.name, self.role, self.identity_key
        )

    def verify_enrolment(self, operator_key: PublicKey) -> None:
        """Raise :class:`SignatureError` unless ``operator_key`` signed this enrolment."""
        operator_key.verify(
            self.enrolment_signature,
            self.enrolment_bytes(),
            what=f"enrolment signature of terminal {self.terminal_id!r} by site {self.site_id!r}",
        )

    def to_value(self) -> dict[str, Value]:
        return {
            "terminal_id": self.terminal_id,
            "site_id": self.site_id,
            "name": self.name,
            "role": str(self.role),
            "identity_key": self.identity_key.raw,
            "enrolment_signature": self.enrolment_signature,
        }


@dataclass(frozen=True)
class ExchangeEndpoint:
    """Where terminals meet. The exchange is untrusted; its TLS certificate may be pinned."""

    url: str
    #: ``"sha256:<64 hex>"`` of the DER certificate, or None (plain ws:// on loopback, tests)
    tls_fingerprint: str | None = None

    def to_value(self) -> dict[str, Value]:
        return {"url": self.url, "tls_fingerprint": self.tls_fingerprint}


@dataclass(frozen=True)
class SfuEndpoint:
    """A selective forwarding unit (Janus's HTTP API) conferences may go through. Untrusted
    like the exchange: it forwards frames it cannot read. Its TLS certificate is pinned."""

    url: str
    #: ``"sha256:<64 hex>"`` of the DER certificate, or None (plain http:// on loopback)
    tls_fingerprint: str | None = None

    def to_value(self) -> dict[str, Value]:
        return {"url": self.url, "tls_fingerprint": self.tls_fingerprint}


@dataclass(frozen=True)
class Policy:
    """What every call on the line must use. Each field is checked by :meth:`validate`."""

    #: SFrame cipher suite (RFC 9605), one of :data:`KNOWN_CIPHER_SUITES`
    cipher_suite: str = "AES_128_GCM_SHA256_128"
    #: HPKE KEM sealing sender keys, one of :data:`KNOWN_KEMS`
    kem: str = "MLKEM768_X25519"
    #: seconds between scheduled rekeys during a call
    rekey_interval_s: int = 300
    #: most terminals in one call
    max_participants: int = 4
    #: seconds between readiness checks
    readiness_interval_s: int = 3600
    #: whether any terminal may record a call
    recording_allowed: bool = False
    #: ICE only through the charter's TURN relays (no host or server-reflexive candidates)
    relay_only: bool = False
    #: seconds a member may be unreachable before it is dropped from a call
    peer_timeout_s: int = 60
    #: most terminals in a mesh (one peer connection per pair); a larger call goes through
    #: one of the charter's SFUs, and needs one
    mesh_limit: int = 3

    def validate(self) -> None:
        if self.cipher_suite not in KNOWN_CIPHER_SUITES:
            raise CharterError(
                f"policy: unknown cipher suite {self.cipher_suite!r} "
                f"(known: {', '.join(sorted(KNOWN_CIPHER_SUITES))})"
            )
        if self.kem not in KNOWN_KEMS:
            raise CharterError(
                f"policy: unknown KEM {self.kem!r} (known: {', '.join(sorted(KNOWN_KEMS))})"
            )
        for name, value, (low, high) in (
            ("rekey_interval_s", self.rekey_interval_s, REKEY_INTERVAL_RANGE),
            ("max_participants", self.max_participants, MAX_PARTICIPANTS_RANGE),
            ("readiness_interval_s", self.readiness_interval_s, READINESS_INTERVAL_RANGE),
            ("peer_timeout_s", self.peer_timeout_s, PEER_TIMEOUT_RANGE),
            ("mesh_limit", self.mesh_limit, MESH_LIMIT_RANGE),
        ):
            if not _is_int(value) or not low <= value <= high:
                raise CharterError(f"policy: {name} = {value!r} is outside {low}..{high}")
        if not isinstance(self.recording_allowed, bool):
            raise CharterError("policy: recording_allowed must be true or false")
        if not isinstance(self.relay_only, bool):
            raise CharterError("policy: relay_only must be true or false")

    def to_value(self) -> dict[str, Value]:
        """The policy as signed. The fields of format 1 are always present; a field added
        later (:data:`OPTIONAL_POLICY_DEFAULTS`) only when it differs from its default, so
        that a charter signed before the field existed encodes, and verifies, as before."""
        value: dict[str, Value] = {
            "cipher_suite": self.cipher_suite,
            "kem": self.kem,
            "rekey_interval_s": self.rekey_interval_s,
            "max_participants": self.max_participants,
            "readiness_interval_s": self.readiness_interval_s,
            "recording_allowed": self.recording_allowed,
        }
        for name, default in OPTIONAL_POLICY_DEFAULTS.items():
            current = getattr(self, name)
            if current != default or type(current) is not type(default):
                value[name] = current
        return value


#: policy fields added after format 1, with their defaults: encoded only when they differ
OPTIONAL_POLICY_DEFAULTS: Mapping[str, bool | int] = MappingProxyType(
    {"relay_only": False, "peer_timeout_s": 60, "mesh_limit": 3}
)


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Charter:
    """The body of a line's charter: everything the sites sign."""

    line_id: str
    version: int
    sites: tuple[Site, ...]
    terminals: tuple[Terminal, ...]
    exchanges: tuple[ExchangeEndpoint, ...]
    turn_relays: tuple[str, ...]
    policy: Policy
    #: unix seconds
    created_at: int
    #: SFUs for conferences above the policy's mesh limit (a field added after format 1:
    #: encoded only when there is one, so older charters encode and verify as before)
    sfus: tuple[SfuEndpoint, ...] = ()

    # --- encoding ---

    def to_value(self) -> dict[str, Value]:
        return {
            "kind": CHARTER_KIND,
            "line_id": self.line_id,
            "version": self.version,
            "created_at": self.created_at,
            "sites": [s.to_value() for s in self.sites],
            "terminals": [t.to_value() for t in self.terminals],
            "exchanges": [e.to_value() for e in self.exchanges],
            "turn_relays": list(self.turn_relays),
            "policy": self.policy.to_value(),
            **({"sfus": [e.to_value() for e in self.sfus]} if self.sfus else {}),
        }

    def to_bytes(self) -> bytes:
        """The canonical HCE encoding of the body: what every site signs."""
        return encode(self.to_value())

    def digest(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`."""
        return hashlib.sha256(self.to_bytes()).digest()

    @property
    def digest_code(self) -> str:
        """The digest as 30 digits in six groups of five, for comparing by voice."""
        return _digit_groups(self.digest())

    @classmethod
    def from_value(cls, value: Value) -> Charter:
        """Parse an HCE value (strict: exact fields, exact types). Does not validate."""
        return _parse_charter(value)

    @classmethod
    def from_bytes(cls, data: bytes) -> Charter:
        """Parse the canonical encoding made by :meth:`to_bytes`. Does not validate."""
        try:
            value = decode(data, max_size=MAX_CHARTER_FILE_SIZE)
        except EncodingError as exc:
            raise CharterFormatError(f"charter: {exc}") from exc
        return _parse_charter(value)

    # --- look-ups ---

    def site(self, site_id: str) -> Site:
        for s in self.sites:
            if s.site_id == site_id:
                return s
        raise UnknownMember(f"site {site_id!r} is not in the charter of line {self.line_id!r}")

    def terminal(self, terminal_id: str) -> Terminal:
        for t in self.terminals:
            if t.terminal_id == terminal_id:
                return t
        raise UnknownMember(
            f"terminal {terminal_id!r} is not in the charter of line {self.line_id!r}"
        )

    def terminal_by_key(self, key: PublicKey) -> Terminal:
        for t in self.terminals:
            if t.identity_key == key:
                return t
        raise UnknownMember(
            f"no terminal with key {key.short_id} in the charter of line {self.line_id!r}"
        )

    def terminals_of(self, site_id: str) -> tuple[Terminal, ...]:
        return tuple(t for t in self.terminals if t.site_id == site_id)

    # --- structural validation ---

    def validate(self) -> None:
        """Raise :class:`CharterError` (or :class:`UnknownMember`) unless the body is well
        formed: ids, names, unique ids and keys, every terminal's site present, URLs,
        policy ranges. Signatures are checked by :meth:`SignedCharter.verify`."""
        _check_id(self.line_id, "line id")
        if not _is_int(self.version) or self.version < 1:
            raise CharterError(f"version {self.version!r} must be an integer >= 1")
        if not _is_int(self.created_at) or self.created_at < 0:
            raise CharterError(f"created_at {self.created_at!r} must be unix seconds >= 0")
        if not self.sites:
            raise CharterError("the charter names no site")
        _check_count(len(self.sites), MAX_SITES, "sites")
        _check_count(len(self.terminals), MAX_TERMINALS, "terminals")
        _check_count(len(self.exchanges), MAX_EXCHANGES, "exchange endpoints")
        _check_count(len(self.turn_relays), MAX_TURN_RELAYS, "TURN relays")
        _check_count(len(self.sfus), MAX_SFUS, "SFUs")

        key_owner: dict[PublicKey, str] = {}

        def claim_key(key: object, owner: str) -> None:
            if not isinstance(key, PublicKey):
                raise CharterError(f"{owner}: the key is not an Ed25519 public key")
            if key in key_owner:
                raise CharterError(f"{owner} and {key_owner[key]} use the same public key")
            key_owner[key] = owner

        site_index: dict[str, int] = {}
        for i, s in enumerate(self.sites):
            where = f"sites[{i}]"
            _check_id(s.site_id, f"{where}: site id")
            _check_name(s.name, f"site {s.site_id!r} ({where})")
            if s.site_id in site_index:
                raise CharterError(
                    f"duplicate site id {s.site_id!r} (sites[{site_index[s.site_id]}] and {where})"
                )
            site_index[s.site_id] = i
            claim_key(s.operator_key, f"site {s.site_id!r} ({where})")

        terminal_index: dict[str, int] = {}
        for i, t in enumerate(self.terminals):
            where = f"terminals[{i}]"
            _check_id(t.terminal_id, f"{where}: terminal id")
            who = f"terminal {t.terminal_id!r} ({where})"
            _check_name(t.name, who)
            if t.terminal_id in terminal_index:
                raise CharterError(
                    f"duplicate terminal id {t.terminal_id!r} "
                    f"(terminals[{terminal_index[t.terminal_id]}] and {where})"
                )
            terminal_index[t.terminal_id] = i
            if t.site_id not in site_index:
                raise UnknownMember(
                    f"{who} is enrolled by site {t.site_id!r}, which is not in the charter"
                )
            if not isinstance(t.role, Role):
                raise CharterError(f"{who}: unknown role {t.role!r}")
            if not isinstance(t.enrolment_signature, bytes) or (
                len(t.enrolment_signature) != SIGNATURE_SIZE
            ):
                raise CharterError(f"{who}: an enrolment signature is {SIGNATURE_SIZE} bytes")
            claim_key(t.identity_key, who)

        urls: set[str] = set()
        for i, e in enumerate(self.exchanges):
            where = f"exchanges[{i}]"
            _check_url(e.url, EXCHANGE_SCHEMES, f"{where}: exchange URL")
            if e.url in urls:
                raise CharterError(f"duplicate exchange URL {e.url!r} ({where})")
            urls.add(e.url)
            if e.tls_fingerprint is not None and (
                not isinstance(e.tls_fingerprint, str)
                or not TLS_FINGERPRINT_PATTERN.fullmatch(e.tls_fingerprint)
            ):
                raise CharterError(
                    f"{where}: TLS fingerprint must be 'sha256:' and 64 lower-case hex digits"
                )
            _check_exchange_reachable(e, where)
        relays: set[str] = set()
        for i, url in enumerate(self.turn_relays):
            where = f"turn_relays[{i}]"
            _check_url(url, TURN_SCHEMES, f"{where}: TURN URL")
            if url in relays:
                raise CharterError(f"duplicate TURN relay {url!r} ({where})")
            relays.add(url)
        sfu_urls: set[str] = set()
        for i, sfu in enumerate(self.sfus):
            where = f"sfus[{i}]"
            _check_url(sfu.url, SFU_SCHEMES, f"{where}: SFU URL")
            if sfu.url in sfu_urls:
                raise CharterError(f"duplicate SFU URL {sfu.url!r} ({where})")
            sfu_urls.add(sfu.url)
            if sfu.tls_fingerprint is not None and (
                not isinstance(sfu.tls_fingerprint, str)
                or not TLS_FINGERPRINT_PATTERN.fullmatch(sfu.tls_fingerprint)
            ):
                raise CharterError(
                    f"{where}: TLS fingerprint must be 'sha256:' and 64 lower-case hex digits"
                )
            _check_sfu_reachable(sfu, where)
        if not isinstance(self.policy, Policy):
            raise CharterError("policy is missing")
        self.policy.validate()
        if self.policy.relay_only and not self.turn_relays:
            raise CharterError("policy: relay_only needs at least one TURN relay in the charter")


# --- signed charters ------------------------------------------------------------------------

SIGNATURE_VALID = "valid"
SIGNATURE_INVALID = "invalid"
SIGNATURE_MISSING = "missing"


@dataclass(frozen=True)
class CharterCheck:
    """Everything :meth:`SignedCharter.check` found, for people (``hotline line show``)."""

    #: the structural problem, or None
    structure_error: str | None
    #: terminal id -> None (enrolment verifies) or the problem
    enrolments: Mapping[str, str | None]
    #: site id -> "valid" | "invalid" | "missing"
    signatures: Mapping[str, str]
    #: signatures by site ids that are not in the charter
    unknown_signers: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return all(v != SIGNATURE_MISSING for v in self.signatures.values())

    @property
    def ok(self) -> bool:
        return (
            self.structure_error is None
            and all(v is None for v in self.enrolments.values())
            and all(v == SIGNATURE_VALID for v in self.signatures.values())
            and not self.unknown_signers
        )


@dataclass(frozen=True)
class SignedCharter:
    """A charter body with the signatures of its sites (site id -> Ed25519 signature over
    ``charter.to_bytes()``)."""

    charter: Charter
    signatures: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signatures", MappingProxyType(dict(self.signatures)))

    def __hash__(self) -> int:
        return hash((self.charter, tuple(sorted(self.signatures.items()))))

    @property
    def line_id(self) -> str:
        return self.charter.line_id

    @property
    def version(self) -> int:
        return self.charter.version

    def with_signature(self, site_id: str, signature: bytes) -> SignedCharter:
        return SignedCharter(self.charter, {**self.signatures, site_id: signature})

    def verify(self) -> None:
        """Raise unless the charter is structurally valid, every terminal's enrolment
        verifies with its site's operator key, no signature comes from a site outside the
        charter, and EVERY site has a valid signature over :meth:`Charter.to_bytes`."""
        charter = self.charter
        charter.validate()
        sites = {s.site_id: s for s in charter.sites}
        for t in charter.terminals:
            t.verify_enrolment(sites[t.site_id].operator_key)
        for site_id in sorted(self.signatures):
            if site_id not in sites:
                raise UnknownMember(f"a signature by site {site_id!r}, which is not in the charter")
        body = charter.to_bytes()
        for s in charter.sites:
            signature = self.signatures.get(s.site_id)
            if signature is None:
                continue
            s.operator_key.verify(
                signature, body, what=f"signature of site {s.site_id!r} on the charter"
            )
        missing = [s.site_id for s in charter.sites if s.site_id not in self.signatures]
        if missing:
            raise CharterIncomplete(
                f"line {charter.line_id!r} version {charter.version}: no signature yet from "
                + ", ".join(repr(m) for m in missing)
            )

    def check(self) -> CharterCheck:
        """Like :meth:`verify`, but collect every finding instead of raising the first."""
        charter = self.charter
        structure_error: str | None = None
        try:
            charter.validate()
        except CharterError as exc:
            structure_error = str(exc)
        keys: dict[str, PublicKey] = {}
        for s in charter.sites:
            if isinstance(s.operator_key, PublicKey):
                keys.setdefault(s.site_id, s.operator_key)
        enrolments: dict[str, str | None] = {}
        for t in charter.terminals:
            key = keys.get(t.site_id)
            if key is None:
                enrolments[t.terminal_id] = f"site {t.site_id!r} is not in the charter"
                continue
            try:
                t.verify_enrolment(key)
                enrolments[t.terminal_id] = None
            except (SignatureError, EncodingError, TypeError) as exc:
                enrolments[t.terminal_id] = str(exc)
        body = charter.to_bytes()
        signatures: dict[str, str] = {}
        for site_id, key in keys.items():
            signature = self.signatures.get(site_id)
            if signature is None:
                signatures[site_id] = SIGNATURE_MISSING
                continue
            try:
                key.verify(signature, body)
                signatures[site_id] = SIGNATURE_VALID
            except SignatureError:
                signatures[site_id] = SIGNATURE_INVALID
        unknown = tuple(sorted(set(self.signatures) - set(keys)))
        return CharterCheck(structure_error, enrolments, signatures, unknown)

    # --- encodings ---

    def to_value(self) -> dict[str, Value]:
        """HCE value ``{"charter": <body>, "signatures": {site_id: bytes}}`` for envelopes."""
        sigs: dict[str, Value] = {k: v for k, v in sorted(self.signatures.items())}
        return {"charter": self.charter.to_value(), "signatures": sigs}

    @classmethod
    def from_value(cls, value: Value) -> SignedCharter:
        obj = _exact_fields(value, "signed charter", {"charter", "signatures"})
        sigs = _exact_fields(obj["signatures"], "signatures", None)
        signatures: dict[str, bytes] = {}
        for site_id, sig in sigs.items():
            if not isinstance(sig, bytes):
                raise CharterFormatError(f"signatures: {site_id!r} is not bytes")
            signatures[site_id] = sig
        return cls(_parse_charter(obj["charter"]), signatures)

    def to_wire(self) -> bytes:
        """Canonical HCE bytes of :meth:`to_value` (what :class:`CharterStore` keeps)."""
        return encode(self.to_value())

    @classmethod
    def from_wire(cls, data: bytes) -> SignedCharter:
        try:
            value = decode(data, max_size=MAX_CHARTER_FILE_SIZE)
        except EncodingError as exc:
            raise CharterFormatError(f"signed charter: {exc}") from exc
        return cls.from_value(value)

    def to_file_bytes(self) -> bytes:
        """The charter file: UTF-8 JSON for people, keys sorted, bytes as hex."""
        doc = {
            "format": CHARTER_FILE_FORMAT,
            "body": to_json(self.charter.to_value()),
            "signatures": {k: v.hex() for k, v in sorted(self.signatures.items())},
        }
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_file_bytes(cls, data: bytes) -> SignedCharter:
        """Parse a charter file. Raises :class:`CharterFormatError`; does not verify."""
        if len(data) > MAX_CHARTER_FILE_SIZE:
            raise CharterFormatError(
                f"{len(data)} bytes is over the {MAX_CHARTER_FILE_SIZE}-byte charter limit"
            )
        doc = _exact_fields(
            parse_json_document(data, "charter"), "charter file", {"format", "body", "signatures"}
        )
        if doc["format"] != CHARTER_FILE_FORMAT:
            raise CharterFormatError(
                f"not a charter file (format {doc['format']!r}, expected {CHARTER_FILE_FORMAT!r})"
            )
        body = _exact_fields(doc["body"], "body", None)
        for i, item in enumerate(list_or_empty(body.get("sites"))):
            unhex_field(item, "operator_key", f"sites[{i}]")
        for i, item in enumerate(list_or_empty(body.get("terminals"))):
            unhex_field(item, "identity_key", f"terminals[{i}]")
            unhex_field(item, "enrolment_signature", f"terminals[{i}]")
        signatures: dict[str, bytes] = {}
        for site_id, sig in _exact_fields(doc["signatures"], "signatures", None).items():
            signatures[site_id] = unhex(sig, f"signatures[{site_id!r}]")
        return cls(_parse_charter(body), signatures)


def load_charter(path: Path) -> SignedCharter:
    """Read and parse a charter file (size-limited). Does NOT verify. Errors name the file."""
    data = read_limited(path, MAX_CHARTER_FILE_SIZE, "charter file")
    try:
        return SignedCharter.from_file_bytes(data)
    except CharterFormatError as exc:
        raise CharterFormatError(f"{path}: {exc}") from exc


def write_charter(path: Path, signed: SignedCharter) -> None:
    """Write a charter file atomically (temporary file + rename)."""
    data = signed.to_file_bytes()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StateError(f"{path}: cannot write the charter: {exc.strerror}") from exc


# --- strict parsing of the body -------------------------------------------------------------


def _exact_fields(value: object, what: str, keys: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CharterFormatError(f"{what}: expected an object")
    if keys is not None:
        missing = sorted(keys - set(value))
        extra = sorted(set(value) - keys)
        if missing:
            raise CharterFormatError(f"{what}: missing field {missing[0]!r}")
        if extra:
            raise CharterFormatError(f"{what}: unknown field {extra[0]!r}")
    for key in value:
        if not isinstance(key, str):
            raise CharterFormatError(f"{what}: a key is not a string")
    return value


def _str(obj: Mapping[str, Any], key: str, what: str) -> str:
    v = obj[key]
    if not isinstance(v, str):
        raise CharterFormatError(f"{what}: {key} must be a string")
    return v


def _int(obj: Mapping[str, Any], key: str, what: str) -> int:
    v = obj[key]
    if not _is_int(v):
        raise CharterFormatError(f"{what}: {key} must be an integer")
    if not INT_MIN <= v <= INT_MAX:
        raise CharterFormatError(f"{what}: {key} is outside the signed 64-bit range")
    return int(v)


def _bytes(obj: Mapping[str, Any], key: str, what: str) -> bytes:
    v = obj[key]
    if not isinstance(v, bytes):
        raise CharterFormatError(f"{what}: {key} must be bytes")
    return v


def _key(obj: Mapping[str, Any], key: str, what: str) -> PublicKey:
    raw = _bytes(obj, key, what)
    if len(raw) != PUBLIC_KEY_SIZE:
        raise CharterFormatError(f"{what}: {key} must be a {PUBLIC_KEY_SIZE}-byte public key")
    return PublicKey(raw)


def _list(obj: Mapping[str, Any], key: str, what: str) -> list[Any]:
    v = obj[key]
    if not isinstance(v, list):
        raise CharterFormatError(f"{what}: {key} must be a list")
    return v


_SITE_FIELDS = {"site_id", "name", "operator_key"}
_TERMINAL_FIELDS = {"terminal_id", "site_id", "name", "role", "identity_key", "enrolment_signature"}
_EXCHANGE_FIELDS = {"url", "tls_fingerprint"}
_POLICY_FIELDS = {
    "cipher_suite",
    "kem",
    "rekey_interval_s",
    "max_participants",
    "readiness_interval_s",
    "recording_allowed",
}
#: charter fields added after format 1: present only when not empty
_OPTIONAL_CHARTER_FIELDS = {"sfus"}
_CHARTER_FIELDS = {
    "kind",
    "line_id",
    "version",
    "created_at",
    "sites",
    "terminals",
    "exchanges",
    "turn_relays",
    "policy",
}


def parse_role(text: object, what: str) -> Role:
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        return Role(text)
    except ValueError as exc:
        raise CharterFormatError(
            f"{what}: unknown role {text!r} (one of: {', '.join(r.value for r in Role)})"
        ) from exc


def _parse_charter(value: object) -> Charter:
    body = _exact_fields(value, "charter", None)
    missing_fields = sorted(_CHARTER_FIELDS - set(body))
    extra_fields = sorted(set(body) - _CHARTER_FIELDS - _OPTIONAL_CHARTER_FIELDS)
    if missing_fields:
        raise CharterFormatError(f"charter: missing field {missing_fields[0]!r}")
    if extra_fields:
        raise CharterFormatError(f"charter: unknown field {extra_fields[0]!r}")
    if body["kind"] != CHARTER_KIND:
        raise CharterFormatError(
            f"charter: kind {body['kind']!r} is not {CHARTER_KIND!r} (not a Hotline charter)"
        )
    sites = []
    for i, item in enumerate(_list(body, "sites", "charter")):
        what = f"sites[{i}]"
        s = _exact_fields(item, what, _SITE_FIELDS)
        sites.append(
            Site(_str(s, "site_id", what), _str(s, "name", what), _key(s, "operator_key", what))
        )
    terminals = []
    for i, item in enumerate(_list(body, "terminals", "charter")):
        what = f"terminals[{i}]"
        t = _exact_fields(item, what, _TERMINAL_FIELDS)
        terminals.append(
            Terminal(
                terminal_id=_str(t, "terminal_id", what),
                site_id=_str(t, "site_id", what),
                name=_str(t, "name", what),
                role=parse_role(t["role"], what),
                identity_key=_key(t, "identity_key", what),
                enrolment_signature=_bytes(t, "enrolment_signature", what),
            )
        )
    exchanges = []
    for i, item in enumerate(_list(body, "exchanges", "charter")):
        what = f"exchanges[{i}]"
        e = _exact_fields(item, what, _EXCHANGE_FIELDS)
        fp = e["tls_fingerprint"]
        if fp is not None and not isinstance(fp, str):
            raise CharterFormatError(f"{what}: tls_fingerprint must be a string or null")
        exchanges.append(ExchangeEndpoint(_str(e, "url", what), fp))
    sfus = []
    if "sfus" in body:
        items = _list(body, "sfus", "charter")
        if not items:
            # one encoding per charter: no SFU is encoded as no field
            raise CharterFormatError("charter: sfus is present but empty")
        for i, item in enumerate(items):
            what = f"sfus[{i}]"
            e = _exact_fields(item, what, _EXCHANGE_FIELDS)
            fp = e["tls_fingerprint"]
            if fp is not None and not isinstance(fp, str):
                raise CharterFormatError(f"{what}: tls_fingerprint must be a string or null")
            sfus.append(SfuEndpoint(_str(e, "url", what), fp))
    relays = []
    for i, url in enumerate(_list(body, "turn_relays", "charter")):
        if not isinstance(url, str):
            raise CharterFormatError(f"turn_relays[{i}] must be a string")
        relays.append(url)
    p = _exact_fields(body["policy"], "policy", None)
    missing = sorted(_POLICY_FIELDS - set(p))
    extra = sorted(set(p) - _POLICY_FIELDS - set(OPTIONAL_POLICY_DEFAULTS))
    if missing:
        raise CharterFormatError(f"policy: missing field {missing[0]!r}")
    if extra:
        raise CharterFormatError(f"policy: unknown field {extra[0]!r}")
    if not isinstance(p["recording_allowed"], bool):
        raise CharterFormatError("policy: recording_allowed must be true or false")
    relay_only = p.get("relay_only", False)
    if not isinstance(relay_only, bool):
        raise CharterFormatError("policy: relay_only must be true or false")
    peer_timeout_s = _int(p, "peer_timeout_s", "policy") if "peer_timeout_s" in p else 60
    mesh_limit = _int(p, "mesh_limit", "policy") if "mesh_limit" in p else 3
    for name, default in OPTIONAL_POLICY_DEFAULTS.items():
        if name in p and p[name] == default:
            # one encoding per charter: a field equal to its default is left out
            raise CharterFormatError(f"policy: {name} is present with its default value")
    policy = Policy(
        cipher_suite=_str(p, "cipher_suite", "policy"),
        kem=_str(p, "kem", "policy"),
        rekey_interval_s=_int(p, "rekey_interval_s", "policy"),
        max_participants=_int(p, "max_participants", "policy"),
        readiness_interval_s=_int(p, "readiness_interval_s", "policy"),
        recording_allowed=p["recording_allowed"],
        relay_only=relay_only,
        peer_timeout_s=peer_timeout_s,
        mesh_limit=mesh_limit,
    )
    return Charter(
        line_id=_str(body, "line_id", "charter"),
        version=_int(body, "version", "charter"),
        sites=tuple(sites),
        terminals=tuple(terminals),
        exchanges=tuple(exchanges),
        turn_relays=tuple(relays),
        policy=policy,
        created_at=_int(body, "created_at", "charter"),
        sfus=tuple(sfus),
    )


# --- small checks ---------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def _check_id(value: object, what: str) -> None:
    if not is_valid_id(value):
        raise CharterError(
            f"{what} {value!r} is not a valid id (1-63 of a-z 0-9 . _ -, starting with a "
            "letter or digit)"
        )


def _check_name(value: object, what: str) -> None:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_NAME_LENGTH
        or not value.isprintable()
        or value.strip() != value
    ):
        raise CharterError(
            f"{what}: name {value!r} must be 1-{MAX_NAME_LENGTH} printable characters "
            "without leading or trailing spaces"
        )


def _check_count(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise CharterError(f"{n} {what} is more than the limit of {limit}")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (plain ws:// is allowed only there)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_exchange_reachable(endpoint: ExchangeEndpoint, where: str) -> None:
    """Refuse an entry every terminal would refuse to connect to (``ExchangeClient``):
    wss:// without a pinned certificate, plain ws:// to anything but loopback."""
    parts = urlsplit(endpoint.url)
    if parts.scheme == "wss" and endpoint.tls_fingerprint is None:
        raise CharterError(
            f"{where}: exchange {endpoint.url!r} has no pinned TLS certificate "
            "(give it as URL#sha256:<64 hex>); terminals refuse an unpinned wss:// exchange"
        )
    if parts.scheme == "ws" and not is_loopback_host(parts.hostname or ""):
        raise CharterError(
            f"{where}: exchange {endpoint.url!r}: plain ws:// is allowed only to a loopback "
            "address (127.0.0.1, ::1); use wss:// with a pinned certificate"
        )


def _check_sfu_reachable(endpoint: SfuEndpoint, where: str) -> None:
    """Refuse an SFU every terminal would refuse (``hotline.sfu.janus.check_url``): https://
    without a pinned certificate, plain http:// to anything but loopback."""
    parts = urlsplit(endpoint.url)
    if parts.scheme == "https" and endpoint.tls_fingerprint is None:
        raise CharterError(
            f"{where}: SFU {endpoint.url!r} has no pinned TLS certificate "
            "(give it as URL#sha256:<64 hex>); terminals refuse an unpinned https:// SFU"
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        raise CharterError(
            f"{where}: SFU {endpoint.url!r}: plain http:// is allowed only to a loopback "
            "address (127.0.0.1, ::1); use https:// with a pinned certificate"
        )


def _check_url(url: object, schemes: Iterable[str], what: str) -> None:
    allowed = sorted(schemes)
    if not isinstance(url, str) or not 1 <= len(url) <= MAX_URL_LENGTH or not url.isprintable():
        raise CharterError(f"{what} must be 1-{MAX_URL_LENGTH} printable characters")
    if any(c.isspace() for c in url):
        raise CharterError(f"{what} {url!r} contains white space")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise CharterError(f"{what} {url!r} is not a valid URL") from exc
    if parts.scheme not in allowed:
        raise CharterError(f"{what} {url!r}: scheme must be one of {', '.join(allowed)}")
    if "@" in url:
        raise CharterError(
            f"{what} {url!r} carries credentials; they belong in each site's local "
            "configuration, never in the charter"
        )
    host = parts.hostname if parts.netloc else parts.path.split(":", 1)[0]
    if not host:
        raise CharterError(f"{what} {url!r} has no host")
    if parts.netloc:
        try:
            port = parts.port
        except ValueError as exc:  # not a number, or outside 0-65535
            raise CharterError(f"{what} {url!r}: the port is not a number from 1 to 65535") from exc
        if port == 0:
            raise CharterError(f"{what} {url!r}: port 0 cannot be reached")


def _digit_groups(digest: bytes) -> str:
    return " ".join(
        f"{int.from_bytes(digest[i * 5 : i * 5 + 5], 'big') % 100000:05d}" for i in range(6)
    )
