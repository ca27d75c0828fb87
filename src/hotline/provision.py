"""Line provisioning: site folders, terminal enrolment, proposing and signing charters.

These are the functions behind ``hotline site init``, ``hotline terminal enroll`` and
``hotline line propose/sign``; the demo and the tests call the same ones. Folder layout
(see ``docs/keys.md``)::

    <site folder>/                 mode 0700, on the operator's machine
        operator.key               the operator's Ed25519 private key, 0600, PKCS#8 PEM
                                   (encrypted when a passphrase is given)
        site.json                  public site record: site id, name, operator public key
        enrolments/<terminal>.json public copy of every enrolment record this site signed

    <terminal folder>/             mode 0700, on the terminal
        identity.key               the terminal's identity key, 0600; never leaves this folder
        enrolment.json             public enrolment record, signed by the site's operator key

Public files (``site.json``, ``enrolment.json``, ``enrolments/``) are what a site hands to the
other sides so that they can propose or check a charter; private keys never travel.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hotline.charter import (
    DEFAULT_POLICY,
    MAX_NAME_LENGTH,
    SIGNATURE_INVALID,
    Charter,
    ExchangeEndpoint,
    Policy,
    Role,
    SfuEndpoint,
    SignedCharter,
    Site,
    Terminal,
    is_valid_id,
    load_charter,
    parse_json_document,
    parse_role,
    read_limited,
    write_charter,
)
from hotline.errors import (
    CharterError,
    CharterFormatError,
    HotlineError,
    KeyStorageError,
    PassphraseError,
    SignatureError,
    StateError,
    UnknownMember,
    UsageError,
)
from hotline.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PublicKey, SigningKey

SITE_KEY_FILE = "operator.key"
SITE_RECORD_FILE = "site.json"
ENROLMENTS_DIR = "enrolments"
TERMINAL_KEY_FILE = "identity.key"
TERMINAL_RECORD_FILE = "enrolment.json"

SITE_RECORD_FORMAT = "hotline site record v1"
TERMINAL_RECORD_FORMAT = "hotline enrolment record v1"
MAX_RECORD_FILE_SIZE = 64 * 1024

#: sub-folders of the root that :func:`create_line` fills
LINE_SITES_DIR = "sites"
LINE_TERMINALS_DIR = "terminals"

Passphrase = bytes | str | None


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteRecord:
    """The public record of a site (``site.json``)."""

    site_id: str
    name: str
    operator_key: PublicKey

    @property
    def site(self) -> Site:
        return Site(self.site_id, self.name, self.operator_key)

    def to_file_bytes(self) -> bytes:
        return _dump(
            {
                "format": SITE_RECORD_FORMAT,
                "site_id": self.site_id,
                "name": self.name,
                "operator_key": self.operator_key.hex(),
            }
        )

    @classmethod
    def from_file_bytes(cls, data: bytes) -> SiteRecord:
        doc = _record_fields(data, "site record", SITE_RECORD_FORMAT, {"site_id", "name"})
        return cls(doc["site_id"], doc["name"], _hex_key(doc, "operator_key", "site record"))


@dataclass(frozen=True)
class TerminalRecord:
    """The public enrolment record of a terminal (``enrolment.json``): the charter's
    :class:`Terminal` plus the operator key that signed it, so it can be checked alone."""

    terminal_id: str
    site_id: str
    name: str
    role: Role
    identity_key: PublicKey
    enrolment_signature: bytes
    operator_key: PublicKey

    @property
    def terminal(self) -> Terminal:
        return Terminal(
            self.terminal_id,
            self.site_id,
            self.name,
            self.role,
            self.identity_key,
            self.enrolment_signature,
        )

    def verify(self) -> None:
        """Raise :class:`SignatureError` unless ``operator_key`` signed this enrolment."""
        self.terminal.verify_enrolment(self.operator_key)

    def to_file_bytes(self) -> bytes:
        return _dump(
            {
                "format": TERMINAL_RECORD_FORMAT,
                "terminal_id": self.terminal_id,
                "site_id": self.site_id,
                "name": self.name,
                "role": str(self.role),
                "identity_key": self.identity_key.hex(),
                "enrolment_signature": self.enrolment_signature.hex(),
                "operator_key": self.operator_key.hex(),
            }
        )

    @classmethod
    def from_file_bytes(cls, data: bytes) -> TerminalRecord:
        what = "enrolment record"
        doc = _record_fields(
            data,
            what,
            TERMINAL_RECORD_FORMAT,
            {"terminal_id", "site_id", "name", "role"},
            extra_hex={"identity_key", "enrolment_signature", "operator_key"},
        )
        signature = _hex(doc, "enrolment_signature", what)
        if len(signature) != SIGNATURE_SIZE:
            raise CharterFormatError(f"{what}: enrolment_signature must be {SIGNATURE_SIZE} bytes")
        return cls(
            terminal_id=doc["terminal_id"],
            site_id=doc["site_id"],
            name=doc["name"],
            role=parse_role(doc["role"], what),
            identity_key=_hex_key(doc, "identity_key", what),
            enrolment_signature=signature,
            operator_key=_hex_key(doc, "operator_key", what),
        )


# --- sites ----------------------------------------------------------------------------------


def init_site(
    dir: Path,
    name: str,
    passphrase: Passphrase = None,
    *,
    display_name: str | None = None,
) -> SiteRecord:
    """Create a site folder: a new operator key (0600) and the public ``site.json``.

    ``name`` is the site id (``[a-z0-9][a-z0-9._-]{0,62}``); ``display_name`` defaults to it.
    """
    _require_id(name, "site name")
    _check_display_name(display_name or name, f"site {name!r}")
    key = SigningKey.generate()
    record = SiteRecord(name, display_name or name, key.public)
    _make_private_dir(dir)
    key.save(dir / SITE_KEY_FILE, _passphrase_bytes(passphrase))
    (dir / ENROLMENTS_DIR).mkdir(mode=0o700)
    _write_new(dir / SITE_RECORD_FILE, record.to_file_bytes())
    return record


def load_site_record(path: Path) -> SiteRecord:
    """A site's public record, from its folder or from a ``site.json`` file."""
    file = path / SITE_RECORD_FILE if path.is_dir() else path
    data = read_limited(file, MAX_RECORD_FILE_SIZE, "site record")
    try:
        return SiteRecord.from_file_bytes(data)
    except CharterFormatError as exc:
        raise CharterFormatError(f"{file}: {exc}") from exc


def load_site(dir: Path, passphrase: Passphrase = None) -> tuple[SiteRecord, SigningKey]:
    """A site folder's record and its operator key (checked to match each other)."""
    record = load_site_record(dir)
    key = SigningKey.load(dir / SITE_KEY_FILE, _passphrase_bytes(passphrase))
    if key.public != record.operator_key:
        raise KeyStorageError(
            f"{dir / SITE_KEY_FILE}: this key is not the operator key in {SITE_RECORD_FILE}"
        )
    return record, key


def site_enrolments(site_dir: Path) -> list[TerminalRecord]:
    """Every enrolment record kept in a site folder, by terminal id."""
    folder = site_dir / ENROLMENTS_DIR
    if not folder.is_dir():
        return []
    return [load_terminal_record(p) for p in sorted(folder.glob("*.json"))]


# --- terminals ------------------------------------------------------------------------------


def enroll_terminal(  # noqa: PLR0917 (the signature other code is written against)
    site_dir: Path,
    name: str,
    role: Role | str,
    out_dir: Path | None = None,
    passphrase: Passphrase = None,
    site_passphrase: Passphrase = None,
    *,
    display_name: str | None = None,
) -> Path:
    """Create a terminal folder with a new identity key and an enrolment record signed by
    the site's operator key; keep a public copy of the record in the site folder.

    ``name`` is the terminal id; ``out_dir`` defaults to ``<site_dir>/../<name>``. Returns
    the terminal folder.
    """
    _require_id(name, "terminal name")
    _check_display_name(display_name or name, f"terminal {name!r}")
    if not isinstance(role, Role):
        try:
            role = parse_role(role, "role")
        except CharterFormatError as exc:
            raise UsageError(str(exc)) from None
    try:
        site, operator = load_site(site_dir, site_passphrase)
    except PassphraseError as exc:
        raise PassphraseError(
            f"{exc} (for enrolment: the site's key passphrase is --site-passphrase-file)"
        ) from exc
    copy = site_dir / ENROLMENTS_DIR / f"{name}.json"
    if copy.exists():
        raise UsageError(f"{copy}: site {site.site_id!r} already enrolled a terminal {name!r}")
    out = out_dir if out_dir is not None else site_dir.resolve().parent / name
    identity = SigningKey.generate()
    terminal_name = display_name or name
    unsigned = Terminal(name, site.site_id, terminal_name, role, identity.public, b"")
    record = TerminalRecord(
        name,
        site.site_id,
        terminal_name,
        role,
        identity.public,
        operator.sign(unsigned.enrolment_bytes()),
        operator.public,
    )
    data = record.to_file_bytes()
    # the site's copy first: if the site folder cannot take it, nothing else exists yet
    (site_dir / ENROLMENTS_DIR).mkdir(mode=0o700, exist_ok=True)
    _write_new(copy, data)
    try:
        _make_private_dir(out)
        identity.save(out / TERMINAL_KEY_FILE, _passphrase_bytes(passphrase))
        _write_new(out / TERMINAL_RECORD_FILE, data)
    except BaseException:
        copy.unlink(missing_ok=True)  # no enrolment without its terminal
        raise
    return out


def load_terminal_record(path: Path) -> TerminalRecord:
    """A terminal's public enrolment record, from its folder or a record file; its
    enrolment signature is checked against the operator key it names."""
    file = path / TERMINAL_RECORD_FILE if path.is_dir() else path
    data = read_limited(file, MAX_RECORD_FILE_SIZE, "enrolment record")
    try:
        record = TerminalRecord.from_file_bytes(data)
        record.verify()
    except (CharterFormatError, SignatureError) as exc:
        raise type(exc)(f"{file}: {exc}") from exc
    return record


def load_terminal(dir: Path, passphrase: Passphrase = None) -> tuple[TerminalRecord, SigningKey]:
    """A terminal folder's enrolment record and identity key (checked to match)."""
    record = load_terminal_record(dir)
    key = SigningKey.load(dir / TERMINAL_KEY_FILE, _passphrase_bytes(passphrase))
    if key.public != record.identity_key:
        raise KeyStorageError(
            f"{dir / TERMINAL_KEY_FILE}: this key is not the identity key in {TERMINAL_RECORD_FILE}"
        )
    return record, key


# --- charters -------------------------------------------------------------------------------


def parse_exchange(text: str) -> ExchangeEndpoint:
    """``URL`` or ``URL#sha256:FP`` (FP: 64 hex digits, colons allowed) to an endpoint."""
    url, sep, pin = text.partition("#")
    if not sep:
        return ExchangeEndpoint(url, None)
    algorithm, _, digits = pin.partition(":")
    digits = digits.replace(":", "").lower()
    if algorithm.lower() != "sha256" or len(digits) != 64 or not _is_hex(digits):
        raise UsageError(
            f"exchange {text!r}: the pin after '#' must be sha256: and 64 hex digits "
            "(the SHA-256 of the exchange's DER certificate)"
        )
    return ExchangeEndpoint(url, f"sha256:{digits}")


def parse_sfu(text: str) -> SfuEndpoint:
    """``URL`` or ``URL#sha256:FP`` to an SFU endpoint (like :func:`parse_exchange`)."""
    try:
        endpoint = parse_exchange(text)
    except UsageError as exc:
        raise UsageError(str(exc).replace("exchange", "SFU")) from exc
    return SfuEndpoint(endpoint.url, endpoint.tls_fingerprint)


def propose_line(  # noqa: PLR0917 (the signature other code is written against)
    line_id: str,
    sites: Sequence[SiteRecord | Site | Path],
    terminals: Sequence[TerminalRecord | Terminal | Path] | None = None,
    exchanges: Iterable[ExchangeEndpoint | str] = (),
    turn_relays: Iterable[str] = (),
    policy: Policy = DEFAULT_POLICY,
    version: int = 1,
    *,
    created_at: int | None = None,
    sfus: Iterable[SfuEndpoint | str] = (),
) -> Charter:
    """Draft a charter (unsigned) from the sites' public records and the enrolments.

    ``sites`` are records or site folders / ``site.json`` files. ``terminals`` are records or
    terminal folders / enrolment files; when None, every enrolment kept in the given site
    folders is taken. Sites are ordered by id, terminals by site then id. The draft is
    checked as :meth:`SignedCharter.verify` would, except for the site signatures.
    """
    site_list: list[Site] = []
    site_sources: dict[str, str] = {}
    for item in sites:
        if isinstance(item, Path):
            site = load_site_record(item).site
        elif isinstance(item, SiteRecord):
            site = item.site
        else:
            site = item
        origin = str(item) if isinstance(item, Path) else "an earlier record"
        if site.site_id in site_sources:
            raise CharterError(
                f"{origin}: duplicate site id {site.site_id!r} "
                f"(also in {site_sources[site.site_id]})"
            )
        site_sources[site.site_id] = origin
        site_list.append(site)
    if terminals is None:
        terminals = [r for p in sites if isinstance(p, Path) for r in site_enrolments(p)]
    by_site = {s.site_id: s for s in site_list}
    terminal_list: list[Terminal] = []
    sources: dict[str, str] = {}
    for member in terminals:
        source = str(member) if isinstance(member, Path) else None
        record = load_terminal_record(member) if isinstance(member, Path) else member
        terminal = record.terminal if isinstance(record, TerminalRecord) else record
        where = f"{source}: " if source else ""
        if terminal.terminal_id in sources:
            raise CharterError(
                f"{where}duplicate terminal id {terminal.terminal_id!r} "
                f"(also in {sources[terminal.terminal_id]})"
            )
        sources[terminal.terminal_id] = source or "an earlier record"
        owner = by_site.get(terminal.site_id)
        if owner is None:
            raise UnknownMember(
                f"{where}terminal {terminal.terminal_id!r} is enrolled by site "
                f"{terminal.site_id!r}, which is not among the sites of line {line_id!r}"
            )
        if isinstance(record, TerminalRecord) and record.operator_key != owner.operator_key:
            raise SignatureError(
                f"{where}terminal {terminal.terminal_id!r} was enrolled with a different "
                f"operator key than site {owner.site_id!r} has"
            )
        terminal_list.append(terminal)
    endpoints = tuple(
        e if isinstance(e, ExchangeEndpoint) else parse_exchange(e) for e in exchanges
    )
    charter = Charter(
        line_id=line_id,
        version=version,
        sites=tuple(sorted(site_list, key=lambda s: s.site_id)),
        terminals=tuple(sorted(terminal_list, key=lambda t: (t.site_id, t.terminal_id))),
        exchanges=endpoints,
        turn_relays=tuple(turn_relays),
        policy=policy,
        created_at=int(time.time()) if created_at is None else created_at,
        sfus=tuple(e if isinstance(e, SfuEndpoint) else parse_sfu(e) for e in sfus),
    )
    check_draft(charter)
    return charter


def check_draft(charter: Charter) -> None:
    """Everything :meth:`SignedCharter.verify` checks except the sites' signatures."""
    charter.validate()
    for t in charter.terminals:
        t.verify_enrolment(charter.site(t.site_id).operator_key)


def write_draft(path: Path, charter: Charter, *, overwrite: bool = False) -> SignedCharter:
    """Write an unsigned charter file (refusing to replace a file unless ``overwrite``)."""
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: already exists; choose another file or pass --force")
    signed = SignedCharter(charter, {})
    write_charter(path, signed)
    return signed


def sign_charter(path: Path, site_dir: Path, passphrase: Passphrase = None) -> SignedCharter:
    """Add (or renew) the signature of the site in ``site_dir`` to the charter file at
    ``path``, after checking that the charter is sound and names this site with this key."""
    signed = load_charter(path)
    record, key = load_site(site_dir, passphrase)
    charter = signed.charter
    try:
        listed = charter.site(record.site_id)
    except UnknownMember as exc:
        raise UnknownMember(f"{path}: {exc}; {site_dir} cannot sign it") from None
    if listed.operator_key != key.public:
        raise CharterError(
            f"{path}: the charter lists another operator key for site {record.site_id!r} "
            f"than {site_dir / SITE_KEY_FILE}; refusing to sign"
        )
    try:
        check_draft(charter)
    except HotlineError as exc:
        raise type(exc)(f"{path}: refusing to sign: {exc}") from None
    _check_other_signatures(path, signed, record.site_id)
    result = signed.with_signature(record.site_id, key.sign(charter.to_bytes()))
    write_charter(path, result)
    return result


def _check_other_signatures(path: Path, signed: SignedCharter, own_site: str) -> None:
    """Refuse to add a signature to a charter another site's signature no longer covers
    (the body changed after it signed, or the signature was altered), or that carries a
    signature by a site it does not name. The site's own old signature may be stale: signing
    again is how it is renewed."""
    check = signed.check()
    for site_id, status in sorted(check.signatures.items()):
        if site_id != own_site and status == SIGNATURE_INVALID:
            raise SignatureError(
                f"{path}: refusing to sign: the signature of site {site_id!r} does not verify "
                "(the charter changed after that site signed it, or the signature was altered)"
            )
    if check.unknown_signers:
        names = ", ".join(repr(s) for s in check.unknown_signers)
        raise UnknownMember(
            f"{path}: refusing to sign: it carries a signature by {names}, not a site of the line"
        )


def create_line(
    root: Path,
    line_id: str,
    sites: Mapping[str, Sequence[tuple[str, Role]]],
    exchanges: Iterable[ExchangeEndpoint | str] = (),
    policy: Policy = DEFAULT_POLICY,
    *,
    turn_relays: Iterable[str] = (),
    version: int = 1,
    created_at: int | None = None,
    sfus: Iterable[SfuEndpoint | str] = (),
) -> Path:
    """Provision a whole line under ``root`` through the functions above and return the
    path of its fully signed charter. Layout: ``root/sites/<site>/``,
    ``root/terminals/<terminal>/`` (keys unencrypted) and ``root/<line>.charter.json``."""
    site_dirs: list[Path] = []
    for site_id, members in sites.items():
        site_dir = line_site_dir(root, site_id)
        init_site(site_dir, site_id)
        site_dirs.append(site_dir)
        for terminal_id, role in members:
            enroll_terminal(site_dir, terminal_id, role, line_terminal_dir(root, terminal_id))
    charter = propose_line(
        line_id,
        site_dirs,
        None,
        exchanges,
        turn_relays,
        policy,
        version,
        created_at=created_at,
        sfus=sfus,
    )
    path = root / f"{line_id}.charter.json"
    write_draft(path, charter)
    for site_dir in site_dirs:
        sign_charter(path, site_dir)
    load_charter(path).verify()
    return path


def line_site_dir(root: Path, site_id: str) -> Path:
    """Where :func:`create_line` put the folder of ``site_id``."""
    return root / LINE_SITES_DIR / site_id


def line_terminal_dir(root: Path, terminal_id: str) -> Path:
    """Where :func:`create_line` put the folder of ``terminal_id``."""
    return root / LINE_TERMINALS_DIR / terminal_id


# --- helpers --------------------------------------------------------------------------------


def _passphrase_bytes(passphrase: Passphrase) -> bytes | None:
    if isinstance(passphrase, str):
        return passphrase.encode("utf-8")
    return passphrase or None


def _require_id(value: str, what: str) -> None:
    if not is_valid_id(value):
        raise UsageError(
            f"{what} {value!r} is not a valid id: use 1-63 of a-z 0-9 . _ - "
            "(starting with a letter or digit)"
        )


def _check_display_name(text: str, what: str) -> None:
    if not 1 <= len(text) <= MAX_NAME_LENGTH or not text.isprintable() or text.strip() != text:
        raise UsageError(
            f"{what}: display name must be 1-{MAX_NAME_LENGTH} printable characters without "
            "leading or trailing spaces"
        )


def _make_private_dir(path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{path}: exists and is not a folder")
        if any(path.iterdir()):
            raise UsageError(f"{path}: the folder already exists and is not empty")
        os.chmod(path, 0o700)
        return
    try:
        path.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise StateError(f"{path}: cannot create the folder: {exc.strerror}") from exc


def _write_new(path: Path, data: bytes) -> None:
    try:
        with path.open("xb") as fh:
            fh.write(data)
    except FileExistsError as exc:
        raise UsageError(f"{path}: already exists; refusing to overwrite") from exc
    except OSError as exc:
        raise StateError(f"{path}: cannot write: {exc.strerror}") from exc


def _dump(doc: dict[str, str]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _record_fields(
    data: bytes,
    what: str,
    kind: str,
    str_fields: set[str],
    *,
    extra_hex: set[str] | None = None,
) -> dict[str, str]:
    hex_fields = extra_hex if extra_hex is not None else {"operator_key"}
    doc = parse_json_document(data, what)
    if not isinstance(doc, dict):
        raise CharterFormatError(f"{what}: expected a JSON object")
    if doc.get("format") != kind:
        raise CharterFormatError(f"not a {what} (format {doc.get('format')!r}, expected {kind!r})")
    expected = {"format"} | str_fields | hex_fields
    missing = sorted(expected - set(doc))
    extra = sorted(set(doc) - expected)
    if missing:
        raise CharterFormatError(f"{what}: missing field {missing[0]!r}")
    if extra:
        raise CharterFormatError(f"{what}: unknown field {extra[0]!r}")
    for key in expected:
        if not isinstance(doc[key], str):
            raise CharterFormatError(f"{what}: {key} must be a string")
    return doc


def _hex(doc: Mapping[str, str], key: str, what: str) -> bytes:
    try:
        return bytes.fromhex(doc[key])
    except ValueError as exc:
        raise CharterFormatError(f"{what}: {key} is not valid hex") from exc


def _hex_key(doc: Mapping[str, str], key: str, what: str) -> PublicKey:
    raw = _hex(doc, key, what)
    if len(raw) != PUBLIC_KEY_SIZE:
        raise CharterFormatError(f"{what}: {key} must be a {PUBLIC_KEY_SIZE}-byte public key")
    return PublicKey(raw)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
