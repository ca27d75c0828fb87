"""Provisioning through the API: site folders, enrolment, proposing, signing, create_line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hotline.charter import (
    DEFAULT_POLICY,
    CharterStore,
    ExchangeEndpoint,
    Policy,
    Role,
    load_charter,
)
from hotline.errors import (
    CharterError,
    CharterFormatError,
    CharterRollback,
    KeyStorageError,
    PassphraseError,
    SignatureError,
    UnknownMember,
    UsageError,
)
from hotline.keys import SigningKey
from hotline.provision import (
    SITE_KEY_FILE,
    TERMINAL_KEY_FILE,
    TERMINAL_RECORD_FILE,
    SiteRecord,
    create_line,
    enroll_terminal,
    init_site,
    line_site_dir,
    line_terminal_dir,
    load_site,
    load_site_record,
    load_terminal,
    load_terminal_record,
    parse_exchange,
    propose_line,
    sign_charter,
    site_enrolments,
    write_draft,
)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_init_site_layout_and_permissions(tmp_path: Path) -> None:
    record = init_site(tmp_path / "sochi", "sochi", display_name="Sochi residence")
    assert record.site_id == "sochi" and record.name == "Sochi residence"
    assert mode(tmp_path / "sochi") == 0o700
    assert mode(tmp_path / "sochi" / SITE_KEY_FILE) == 0o600
    assert load_site_record(tmp_path / "sochi") == record
    assert load_site_record(tmp_path / "sochi" / "site.json") == record
    loaded, key = load_site(tmp_path / "sochi")
    assert loaded == record and key.public == record.operator_key
    site_json = json.loads((tmp_path / "sochi" / "site.json").read_text())
    assert set(site_json) == {"format", "site_id", "name", "operator_key"}


def test_init_site_refusals(tmp_path: Path) -> None:
    init_site(tmp_path / "a", "a")
    with pytest.raises(UsageError, match="not empty"):
        init_site(tmp_path / "a", "a")
    with pytest.raises(UsageError, match="site name 'Bad' is not a valid id"):
        init_site(tmp_path / "b", "Bad")
    with pytest.raises(UsageError, match="display name"):
        init_site(tmp_path / "c", "c", display_name=" padded")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        init_site(tmp_path / "file", "file")
    # an empty folder that already exists is fine
    (tmp_path / "empty").mkdir()
    init_site(tmp_path / "empty", "empty")


def test_passphrase_protects_keys(tmp_path: Path) -> None:
    site = tmp_path / "s"
    init_site(site, "s", "site secret")
    assert b"ENCRYPTED" in (site / SITE_KEY_FILE).read_bytes()
    with pytest.raises(PassphraseError, match="encrypted"):
        load_site(site)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        load_site(site, b"nope")
    out = enroll_terminal(site, "t1", Role.AIDE, None, b"terminal secret", b"site secret")
    assert out == tmp_path / "t1"
    with pytest.raises(PassphraseError):
        load_terminal(out)
    record, key = load_terminal(out, "terminal secret")
    assert key.public == record.identity_key


def test_enroll_terminal(tmp_path: Path) -> None:
    site = tmp_path / "sites" / "washington"
    init_site(site, "washington")
    out = enroll_terminal(site, "wh-principal", "principal", tmp_path / "t" / "wh")
    assert mode(out) == 0o700 and mode(out / TERMINAL_KEY_FILE) == 0o600
    record, key = load_terminal(out)
    assert record.role is Role.PRINCIPAL and record.site_id == "washington"
    assert record.terminal.identity_key == key.public
    record.verify()
    assert site_enrolments(site) == [record]
    assert not (site / "enrolments" / "wh-principal.json").read_bytes().count(b"PRIVATE")
    with pytest.raises(UsageError, match="already enrolled a terminal 'wh-principal'"):
        enroll_terminal(site, "wh-principal", Role.AIDE, tmp_path / "other")
    with pytest.raises(UsageError, match="unknown role 'king'"):
        enroll_terminal(site, "k", "king")
    with pytest.raises(UsageError, match="terminal name 'A B'"):
        enroll_terminal(site, "A B", Role.AIDE)


def test_enrolment_records_are_checked(tmp_path: Path) -> None:
    site = tmp_path / "s"
    init_site(site, "s")
    out = enroll_terminal(site, "t", Role.INTERPRETER)
    path = out / TERMINAL_RECORD_FILE
    doc = json.loads(path.read_text())
    doc["role"] = "principal"  # promote oneself
    path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match=f"{path}: enrolment signature of terminal 't'"):
        load_terminal_record(out)
    doc["role"] = "interpreter"
    doc["extra"] = "x"
    path.write_text(json.dumps(doc))
    with pytest.raises(CharterFormatError, match="unknown field 'extra'"):
        load_terminal_record(out)
    path.write_text("{")
    with pytest.raises(CharterFormatError, match="truncated or damaged"):
        load_terminal_record(out)


def test_keys_must_match_their_records(tmp_path: Path) -> None:
    site = tmp_path / "s"
    init_site(site, "s")
    out = enroll_terminal(site, "t", Role.PROBE)
    (out / TERMINAL_KEY_FILE).unlink()
    SigningKey.generate().save(out / TERMINAL_KEY_FILE)
    with pytest.raises(KeyStorageError, match="not the identity key"):
        load_terminal(out)
    (site / SITE_KEY_FILE).unlink()
    SigningKey.generate().save(site / SITE_KEY_FILE)
    with pytest.raises(KeyStorageError, match="not the operator key"):
        load_site(site)


def test_wrong_permissions_are_refused(tmp_path: Path) -> None:
    site = tmp_path / "s"
    init_site(site, "s")
    os.chmod(site / SITE_KEY_FILE, 0o640)
    with pytest.raises(KeyStorageError, match="permissions 0640"):
        enroll_terminal(site, "t", Role.AIDE)


def two_sites(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "sochi", tmp_path / "washington"
    init_site(a, "sochi")
    init_site(b, "washington")
    enroll_terminal(a, "ru-principal", Role.PRINCIPAL)
    enroll_terminal(a, "ru-interpreter", Role.INTERPRETER)
    enroll_terminal(b, "us-principal", Role.PRINCIPAL)
    return a, b


def test_propose_sign_verify(tmp_path: Path) -> None:
    a, b = two_sites(tmp_path)
    charter = propose_line(
        "sochi-washington",
        [b, a / "site.json"],
        [tmp_path / "us-principal", tmp_path / "ru-principal"],
        ["wss://ex.example:8443#sha256:" + "AB:" * 31 + "AB"],
        ["turns:relay.example:5349"],
        Policy(kem="X25519"),
        3,
        created_at=1234,
    )
    assert [s.site_id for s in charter.sites] == ["sochi", "washington"]
    assert [t.terminal_id for t in charter.terminals] == ["ru-principal", "us-principal"]
    assert charter.exchanges == (ExchangeEndpoint("wss://ex.example:8443", "sha256:" + "ab" * 32),)
    assert charter.version == 3 and charter.created_at == 1234
    path = tmp_path / "line.json"
    write_draft(path, charter)
    with pytest.raises(UsageError, match="already exists"):
        write_draft(path, charter)
    first = sign_charter(path, a)
    assert set(first.signatures) == {"sochi"}
    again = sign_charter(path, a)  # signing twice is harmless
    assert again == first
    sign_charter(path, b)
    signed = load_charter(path)
    signed.verify()
    assert signed.charter == charter


def test_propose_takes_every_enrolment_of_the_site_folders(tmp_path: Path) -> None:
    a, b = two_sites(tmp_path)
    charter = propose_line("l", [a, b])
    assert {t.terminal_id for t in charter.terminals} == {
        "ru-principal",
        "ru-interpreter",
        "us-principal",
    }
    assert charter.policy == DEFAULT_POLICY and charter.version == 1


def test_propose_refusals(tmp_path: Path) -> None:
    a, b = two_sites(tmp_path)
    moscow = tmp_path / "moscow"
    init_site(moscow, "moscow")
    spy = enroll_terminal(moscow, "spy", Role.AIDE)
    with pytest.raises(UnknownMember, match="enrolled by site 'moscow', which is not among"):
        propose_line("l", [a, b], [spy])
    with pytest.raises(CharterError, match="duplicate terminal id 'ru-principal'"):
        propose_line("l", [a, b], [tmp_path / "ru-principal", tmp_path / "ru-principal"])
    with pytest.raises(CharterError, match="duplicate site id 'sochi'"):
        propose_line("l", [a, a])
    # a site record with the same id but another key: its enrolments no longer match
    impostor = SiteRecord("washington", "Washington", SigningKey.generate().public)
    with pytest.raises(SignatureError, match="different operator key than site 'washington'"):
        propose_line("l", [a, impostor], [tmp_path / "us-principal"])
    with pytest.raises(CharterError, match="unknown KEM"):
        propose_line("l", [a], [], policy=Policy(kem="P256"))
    with pytest.raises(UsageError, match="64 hex digits"):
        propose_line("l", [a], [], ["wss://x#sha256:abc"])
    with pytest.raises(CharterError, match="line id 'L!'"):
        propose_line("L!", [a, b])


def test_sign_refusals(tmp_path: Path) -> None:
    a, b = two_sites(tmp_path)
    path = tmp_path / "line.json"
    write_draft(path, propose_line("l", [a]))
    with pytest.raises(UnknownMember, match="site 'washington' is not in the charter"):
        sign_charter(path, b)
    # the charter names sochi with a key that is not the one in the sochi folder
    other = tmp_path / "other"
    init_site(other, "sochi")
    with pytest.raises(CharterError, match="another operator key for site 'sochi'"):
        sign_charter(path, other)
    doc = json.loads(path.read_text())
    doc["body"]["terminals"][0]["role"] = "aide"
    path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="refusing to sign: enrolment signature"):
        sign_charter(path, a)


def test_parse_exchange() -> None:
    assert parse_exchange("ws://127.0.0.1:9000") == ExchangeEndpoint("ws://127.0.0.1:9000", None)
    fp = "sha256:" + "0a" * 32
    assert parse_exchange("wss://h#SHA256:" + "0A" * 32).tls_fingerprint == fp
    with pytest.raises(UsageError):
        parse_exchange("wss://h#md5:" + "0a" * 16)


def test_create_line_and_the_store(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    path = create_line(
        root,
        "sochi-washington",
        {
            "sochi": [("ru-principal", Role.PRINCIPAL), ("ru-probe", Role.PROBE)],
            "washington": [("us-principal", Role.PRINCIPAL)],
        },
        exchanges=["ws://127.0.0.1:8765"],
    )
    assert path == root / "sochi-washington.charter.json"
    v1 = load_charter(path)
    v1.verify()
    record, key = load_terminal(line_terminal_dir(root, "ru-probe"))
    assert load_site(line_site_dir(root, "sochi"))[0].site == v1.charter.site("sochi")
    assert v1.charter.terminal_by_key(key.public) == record.terminal
    # version 2 from the same site folders, signed by both, supersedes version 1
    v2_path = tmp_path / "v2.json"
    write_draft(
        v2_path, propose_line("sochi-washington", sorted((root / "sites").iterdir()), version=2)
    )
    for site in sorted((root / "sites").iterdir()):
        sign_charter(v2_path, site)
    v2 = load_charter(v2_path)
    db = tmp_path / "terminal.sqlite"
    with CharterStore(db) as store:
        store.accept(v1)
        assert store.accept(v2) == v2
    with CharterStore(db) as store:
        with pytest.raises(CharterRollback):
            store.accept(v1)
        assert store.current("sochi-washington") == v2


def test_create_line_needs_a_fresh_root(tmp_path: Path) -> None:
    create_line(tmp_path, "l", {"a": [("t", Role.PROBE)]})
    with pytest.raises(UsageError, match="not empty"):
        create_line(tmp_path, "l", {"a": [("t", Role.PROBE)]})
