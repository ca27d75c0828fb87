"""The charter of a line: who the sites are, which terminals they enrolled, and the policy.

A charter is public material only (ids, names, public keys, URLs, policy): it has no field
that could hold a private key. Its *body* (:class:`Charter`) has one canonical byte encoding,
:meth:`Charter.to_bytes` (HCE, see :mod:`hotline.encoding` and ``docs/charter.md``); every site
signs exactly those bytes with its operator key, and a charter is valid only with the
signatures of **all** its sites (:meth:`SignedCharter.verify`). The signed bytes are always
rebuilt from the parsed model, so the layout of the JSON file does not matter but any change
to any field breaks every signature.

Every terminal carries an *enrolment signature*: its site's operator key signing the
line-independent enrolment record (site id, terminal id, name, role, identity key), see
:func:`enrolment_bytes`. The same enrolment can therefore be used in several lines.

:class:`CharterStore` keeps, per line, the highest valid version ever accepted (SQLite) and
refuses anything older: a terminal or exchange never goes back to an older charter.

Modules: :mod:`~hotline.charter.model` (the model, canonical bytes, signatures, the JSON
file), :mod:`~hotline.charter.store` (the store), :mod:`~hotline.charter.jsonio` (strict
reading of small JSON files). Nothing here does network I/O.
"""

from __future__ import annotations

from hotline.charter.jsonio import parse_json_document, read_limited
from hotline.charter.model import (
    CHARTER_FILE_FORMAT,
    CHARTER_KIND,
    DEFAULT_POLICY,
    ENROLMENT_KIND,
    ID_PATTERN,
    KNOWN_CIPHER_SUITES,
    KNOWN_KEMS,
    MAX_CHARTER_FILE_SIZE,
    MAX_EXCHANGES,
    MAX_NAME_LENGTH,
    MAX_SITES,
    MAX_TERMINALS,
    MAX_TURN_RELAYS,
    MAX_URL_LENGTH,
    SIGNATURE_INVALID,
    SIGNATURE_MISSING,
    SIGNATURE_VALID,
    Charter,
    CharterCheck,
    ExchangeEndpoint,
    Policy,
    Role,
    SfuEndpoint,
    SignedCharter,
    Site,
    Terminal,
    enrolment_bytes,
    is_valid_id,
    load_charter,
    parse_role,
    write_charter,
)
from hotline.charter.store import CharterStore

__all__ = [
    "CHARTER_FILE_FORMAT",
    "CHARTER_KIND",
    "DEFAULT_POLICY",
    "ENROLMENT_KIND",
    "ID_PATTERN",
    "KNOWN_CIPHER_SUITES",
    "KNOWN_KEMS",
    "MAX_CHARTER_FILE_SIZE",
    "MAX_EXCHANGES",
    "MAX_NAME_LENGTH",
    "MAX_SITES",
    "MAX_TERMINALS",
    "MAX_TURN_RELAYS",
    "MAX_URL_LENGTH",
    "SIGNATURE_INVALID",
    "SIGNATURE_MISSING",
    "SIGNATURE_VALID",
    "Charter",
    "CharterCheck",
    "CharterStore",
    "ExchangeEndpoint",
    "Policy",
    "Role",
    "SfuEndpoint",
    "SignedCharter",
    "Site",
    "Terminal",
    "enrolment_bytes",
    "is_valid_id",
    "load_charter",
    "parse_json_document",
    "parse_role",
    "read_limited",
    "write_charter",
]
