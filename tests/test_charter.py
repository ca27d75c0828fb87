"""The charter model: canonical bytes, signatures of all sites, strict parsing, validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.charter import (
    CHARTER_KIND,
    DEFAULT_POLICY,
    MAX_CHARTER_FILE_SIZE,
    Charter,
    ExchangeEndpoint,
    Policy,
    Role,
    SignedCharter,
    Site,
    Terminal,
    enrolment_bytes,
    load_charter,
)
from hotline.charter.model import DEFAULT_CHECK_THRESHOLDS, CheckThresholds
from hotline.encoding import decode, encode
from hotline.errors import (
    CharterError,
    CharterFormatError,
    CharterIncomplete,
    SignatureError,
    UnknownMember,
)
from hotline.keys import PublicKey, SigningKey
from tests.charters import KEYS, make_charter, make_terminal, sign_all


def test_fully_signed_charter_verifies_and_round_trips() -> None:
    signed = sign_all(make_charter())
    signed.verify()
    assert signed.check().ok
    assert SignedCharter.from_file_bytes(signed.to_file_bytes()) == signed
    assert SignedCharter.from_wire(signed.to_wire()) == signed
    assert Charter.from_bytes(signed.charter.to_bytes()) == signed.charter
    assert signed.line_id == "sochi-washington" and signed.version == 1


def test_canonical_bytes_start_with_the_kind_and_are_hce() -> None:
    charter = make_charter()
    value = decode(charter.to_bytes())
    assert isinstance(value, dict) and value["kind"] == CHARTER_KIND
    assert encode(value) == charter.to_bytes()
    assert len(charter.digest()) == 32
    groups = charter.digest_code.split()
    assert len(groups) == 6 and all(len(g) == 5 and g.isdigit() for g in groups)


def test_lookups() -> None:
    charter = make_charter()
    assert charter.site("sochi").operator_key == KEYS[0].public
    assert charter.terminal("wh-probe").role is Role.PROBE
    assert charter.terminal_by_key(KEYS[3].public).terminal_id == "sochi-interpreter"
    assert [t.terminal_id for t in charter.terminals_of("washington")] == [
        "wh-principal",
        "wh-probe",
    ]
    with pytest.raises(UnknownMember, match="site 'moscow' is not in the charter"):
        charter.site("moscow")
    with pytest.raises(UnknownMember, match="terminal 'x' is not"):
        charter.terminal("x")
    with pytest.raises(UnknownMember, match="no terminal with key"):
        charter.terminal_by_key(KEYS[11].public)


def test_missing_signature_is_incomplete() -> None:
    charter = make_charter()
    signed = SignedCharter(charter, {"sochi": KEYS[0].sign(charter.to_bytes())})
    with pytest.raises(CharterIncomplete, match="no signature yet from 'washington'"):
        signed.verify()
    check = signed.check()
    assert check.signatures == {"sochi": "valid", "washington": "missing"}
    assert not check.complete and not check.ok


def test_wrong_key_signature_is_refused() -> None:
    charter = make_charter()
    body = charter.to_bytes()
    signed = SignedCharter(charter, {"sochi": KEYS[0].sign(body), "washington": KEYS[9].sign(body)})
    with pytest.raises(SignatureError, match="signature of site 'washington'"):
        signed.verify()
    assert signed.check().signatures["washington"] == "invalid"


def test_signature_by_unknown_site_is_refused() -> None:
    signed = sign_all(make_charter()).with_signature("moscow", b"\0" * 64)
    with pytest.raises(UnknownMember, match="site 'moscow', which is not in the charter"):
        signed.verify()
    assert signed.check().unknown_signers == ("moscow",)


def test_old_signatures_do_not_carry_over_to_a_new_version() -> None:
    v1 = sign_all(make_charter())
    v2 = SignedCharter(make_charter(version=2), v1.signatures)
    with pytest.raises(SignatureError):
        v2.verify()


def test_terminal_of_a_site_not_in_the_charter() -> None:
    rogue = make_terminal("moscow", KEYS[6], "rogue", Role.AIDE, KEYS[7])
    charter = make_charter()
    charter = dataclasses.replace(charter, terminals=(*charter.terminals, rogue))
    with pytest.raises(UnknownMember, match=r"terminal 'rogue' \(terminals\[4\]\) is enrolled by"):
        sign_all(charter).verify()


def test_enrolment_signed_by_another_site_is_refused() -> None:
    # washington's operator key signs a terminal that claims to belong to sochi
    forged = make_terminal("sochi", KEYS[1], "forged", Role.PRINCIPAL, KEYS[8])
    charter = make_charter()
    charter = dataclasses.replace(charter, terminals=(*charter.terminals, forged))
    signed = sign_all(charter)
    with pytest.raises(SignatureError, match="enrolment signature of terminal 'forged'"):
        signed.verify()
    assert signed.check().enrolments["forged"] is not None


def test_enrolment_is_bound_to_role() -> None:
    charter = make_charter()
    t = dataclasses.replace(charter.terminals[1], role=Role.PRINCIPAL)
    charter = dataclasses.replace(charter, terminals=(charter.terminals[0], t))
    with pytest.raises(SignatureError, match="terminal 'sochi-interpreter'"):
        sign_all(charter).verify()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"line_id": "Bad Id"}, "line id 'Bad Id' is not a valid id"),
        ({"version": 0}, "version 0 must be an integer >= 1"),
        ({"created_at": -1}, "created_at -1"),
        ({"sites": ()}, "names no site"),
        ({"policy": Policy(kem="RSA")}, "unknown KEM 'RSA'"),
        ({"policy": Policy(cipher_suite="AES_128_CTR_HMAC_SHA256_32")}, "unknown cipher suite"),
        ({"policy": Policy(rekey_interval_s=0)}, "rekey_interval_s = 0 is outside"),
        ({"policy": Policy(max_participants=1)}, "max_participants = 1 is outside"),
        ({"policy": Policy(readiness_interval_s=10**9)}, "readiness_interval_s"),
        ({"exchanges": (ExchangeEndpoint("ftp://x"),)}, "scheme must be one of"),
        ({"exchanges": (ExchangeEndpoint("wss://h", "sha256:12"),)}, "TLS fingerprint"),
        (
            {"exchanges": (ExchangeEndpoint("ws://[::1]"), ExchangeEndpoint("ws://[::1]"))},
            "duplicate exchange URL",
        ),
        # exchange entries every terminal would refuse (issue 9, point 17)
        ({"exchanges": (ExchangeEndpoint("wss://h.example:443"),)}, "no pinned TLS"),
        ({"exchanges": (ExchangeEndpoint("ws://exchange.example:80"),)}, "loopback"),
        ({"exchanges": (ExchangeEndpoint("ws://10.1.2.3:8765"),)}, "loopback"),
        ({"exchanges": (ExchangeEndpoint("http://127.0.0.1:8765"),)}, "scheme must be one of"),
        ({"exchanges": (ExchangeEndpoint("https://h", "sha256:" + "ab" * 32),)}, "scheme must"),
        ({"turn_relays": ("turn:user:pw@relay:3478",)}, "carries credentials"),
        ({"turn_relays": ("http://relay",)}, "scheme must be one of turn, turns"),
        ({"turn_relays": ("turn:",)}, "has no host"),
    ],
)
def test_structural_problems(changes: dict[str, object], message: str) -> None:
    charter = make_charter(**changes)
    with pytest.raises(CharterError, match=message):
        sign_all(charter).verify()
    assert sign_all(charter).check().structure_error is not None


def test_duplicate_ids_and_shared_keys() -> None:
    base = make_charter()
    a = base.sites[0]
    dup_site = dataclasses.replace(base, sites=(*base.sites, a))
    with pytest.raises(
        CharterError, match=r"duplicate site id 'sochi' \(sites\[0\] and sites\[2\]\)"
    ):
        dup_site.validate()
    t0 = base.terminals[0]
    dup_terminal = dataclasses.replace(base, terminals=(*base.terminals, t0))
    with pytest.raises(CharterError, match="duplicate terminal id 'sochi-principal'"):
        dup_terminal.validate()
    same_key = make_terminal("sochi", KEYS[0], "copycat", Role.AIDE, KEYS[2])
    shared = dataclasses.replace(base, terminals=(*base.terminals, same_key))
    with pytest.raises(CharterError, match="use the same public key"):
        shared.validate()
    operator_as_terminal = make_terminal("sochi", KEYS[0], "op", Role.AIDE, KEYS[0])
    mixed = dataclasses.replace(base, terminals=(operator_as_terminal,))
    with pytest.raises(CharterError, match="same public key"):
        mixed.validate()


def test_names_must_be_printable() -> None:
    charter = make_charter(sites=(Site("sochi", "Sochi\nEvil", KEYS[0].public),), terminals=())
    with pytest.raises(CharterError, match="printable"):
        charter.validate()


# --- file format ----------------------------------------------------------------------------


def file_doc(signed: SignedCharter) -> dict[str, object]:
    doc = json.loads(signed.to_file_bytes())
    assert isinstance(doc, dict)
    return doc


def test_whitespace_does_not_matter_but_fields_do() -> None:
    signed = sign_all(make_charter())
    compact = json.dumps(file_doc(signed), separators=(",", ":")).encode()
    SignedCharter.from_file_bytes(compact).verify()
    doc = file_doc(signed)
    doc["body"]["policy"]["recording_allowed"] = True  # type: ignore[index]
    tampered = SignedCharter.from_file_bytes(json.dumps(doc).encode())
    with pytest.raises(SignatureError):
        tampered.verify()
    assert set(tampered.check().signatures.values()) == {"invalid"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "not a charter file"),
        (lambda d: d.pop("signatures"), "missing field 'signatures'"),
        (lambda d: d.update(extra=1), "unknown field 'extra'"),
        (lambda d: d["body"].update(private_key="00"), "unknown field 'private_key'"),
        (lambda d: d["body"].update(kind="x"), "not a Hotline charter"),
        (lambda d: d["body"].update(version="1"), "version must be an integer"),
        (lambda d: d["body"].update(version=True), "version must be an integer"),
        (lambda d: d["body"]["sites"][0].update(operator_key="zz"), r"sites\[0\].operator_key"),
        (lambda d: d["body"]["sites"][0].update(operator_key="00"), "32-byte public key"),
        (lambda d: d["body"]["terminals"][0].update(role="king"), "unknown role 'king'"),
        (lambda d: d["body"]["policy"].update(recording_allowed=0), "true or false"),
        (lambda d: d["signatures"].update(sochi=5), "expected hex"),
    ],
)
def test_malformed_files(mutate: object, message: str) -> None:
    doc = file_doc(sign_all(make_charter()))
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(CharterFormatError, match=message):
        SignedCharter.from_file_bytes(json.dumps(doc).encode())


def test_json_strictness() -> None:
    data = sign_all(make_charter()).to_file_bytes()
    with pytest.raises(CharterFormatError, match="truncated"):
        SignedCharter.from_file_bytes(data[: len(data) // 2])
    with pytest.raises(CharterFormatError, match="duplicate JSON key 'format'"):
        SignedCharter.from_file_bytes(b'{"format": 1, "format": 2}')
    with pytest.raises(CharterFormatError, match=r"not an integer: 1\.5"):
        SignedCharter.from_file_bytes(data.replace(b'"version": 1', b'"version": 1.5'))
    with pytest.raises(CharterFormatError, match="not UTF-8"):
        SignedCharter.from_file_bytes(b"\xff\xfe")
    with pytest.raises(CharterFormatError, match="charter limit"):
        SignedCharter.from_file_bytes(b" " * (MAX_CHARTER_FILE_SIZE + 1))


def test_load_charter_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "line.json"
    with pytest.raises(CharterFormatError, match=f"{path}: no such charter file"):
        load_charter(path)
    path.write_bytes(b"")
    with pytest.raises(CharterFormatError, match="is empty"):
        load_charter(path)
    path.write_bytes(b"{" + b" " * MAX_CHARTER_FILE_SIZE)
    with pytest.raises(CharterFormatError, match="over the 1048576-byte limit"):
        load_charter(path)
    data = sign_all(make_charter()).to_file_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(CharterFormatError, match=f"{path}: charter: not valid JSON"):
        load_charter(path)
    with pytest.raises(CharterFormatError, match="is a folder"):
        load_charter(tmp_path)


# --- properties -----------------------------------------------------------------------------

ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=20,
)


@st.composite
def charters(draw: st.DrawFn) -> tuple[Charter, dict[str, SigningKey]]:
    n_sites = draw(st.integers(1, 3))
    site_ids = draw(st.lists(ids, min_size=n_sites, max_size=n_sites, unique=True))
    terminal_ids = draw(st.lists(ids, max_size=4, unique=True))
    pool = iter(KEYS)
    site_keys = {sid: next(pool) for sid in site_ids}
    sites = tuple(Site(sid, draw(names), site_keys[sid].public) for sid in site_ids)
    terminals = []
    for tid in terminal_ids:
        sid = draw(st.sampled_from(site_ids))
        role = draw(st.sampled_from(list(Role)))
        key = next(pool)
        name = draw(names)
        sig = site_keys[sid].sign(enrolment_bytes(sid, tid, name, role, key.public))
        terminals.append(Terminal(tid, sid, name, role, key.public, sig))
    policy = Policy(
        cipher_suite=draw(st.sampled_from(["AES_128_GCM_SHA256_128", "AES_256_GCM_SHA512_128"])),
        kem=draw(st.sampled_from(["MLKEM768_X25519", "X25519"])),
        rekey_interval_s=draw(st.integers(1, 86_400)),
        max_participants=draw(st.integers(2, 64)),
        readiness_interval_s=draw(st.integers(1, 86_400)),
        recording_allowed=draw(st.booleans()),
        relay_only=draw(st.booleans()),
        peer_timeout_s=draw(st.integers(5, 3600)),
    )
    fp = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
    exchanges = tuple(
        ExchangeEndpoint(f"wss://{host}.example:443", draw(fp))
        for host in draw(st.lists(ids, max_size=2, unique=True))
    )
    relays = tuple(
        f"turns:{h}.example:5349"
        for h in draw(st.lists(ids, min_size=int(policy.relay_only), max_size=2, unique=True))
    )
    charter = Charter(
        line_id=draw(ids),
        version=draw(st.integers(1, 2**40)),
        sites=sites,
        terminals=tuple(terminals),
        exchanges=exchanges,
        turn_relays=relays,
        policy=policy,
        created_at=draw(st.integers(0, 2**40)),
    )
    return charter, site_keys


def sign_with(charter: Charter, keys: dict[str, SigningKey]) -> SignedCharter:
    body = charter.to_bytes()
    return SignedCharter(charter, {sid: k.sign(body) for sid, k in keys.items()})


@settings(max_examples=60, deadline=None)
@given(charters())
def test_round_trip_property(drawn: tuple[Charter, dict[str, SigningKey]]) -> None:
    charter, keys = drawn
    signed = sign_with(charter, keys)
    signed.verify()
    again = SignedCharter.from_file_bytes(signed.to_file_bytes())
    assert again == signed
    assert again.charter.to_bytes() == charter.to_bytes()
    assert Charter.from_bytes(charter.to_bytes()) == charter
    assert SignedCharter.from_wire(signed.to_wire()) == signed


@settings(max_examples=60, deadline=None)
@given(charters(), st.data())
def test_one_bit_flip_breaks_every_signature(
    drawn: tuple[Charter, dict[str, SigningKey]], data: st.DataObject
) -> None:
    charter, keys = drawn
    body = charter.to_bytes()
    signatures = {sid: k.sign(body) for sid, k in keys.items()}
    bit = data.draw(st.integers(0, len(body) * 8 - 1))
    flipped = bytearray(body)
    flipped[bit // 8] ^= 1 << (bit % 8)
    for sid, sig in signatures.items():
        with pytest.raises(SignatureError):
            charter.site(sid).operator_key.verify(sig, bytes(flipped))
    # and if the flipped bytes still parse as a charter, that charter fails as a whole
    try:
        other = Charter.from_bytes(bytes(flipped))
    except CharterError:
        return
    assert other != charter
    with pytest.raises((SignatureError, CharterError)):
        SignedCharter(other, signatures).verify()


def _field_changes(charter: Charter) -> list[Charter]:
    r = dataclasses.replace
    t0 = charter.terminals[0] if charter.terminals else None
    out = [
        r(charter, line_id=charter.line_id + "x"),
        r(charter, version=charter.version + 1),
        r(charter, created_at=charter.created_at + 1),
        r(
            charter,
            sites=(*charter.sites[1:], r(charter.sites[0], name=charter.sites[0].name + "x")),
        ),
        r(charter, turn_relays=(*charter.turn_relays, "turn:extra.example")),
        r(charter, exchanges=(*charter.exchanges, ExchangeEndpoint("ws://127.0.0.2"))),
        r(
            charter,
            policy=r(charter.policy, recording_allowed=not charter.policy.recording_allowed),
        ),
        r(
            charter,
            policy=r(charter.policy, max_participants=charter.policy.max_participants % 64 + 1),
        ),
        r(charter, sites=(*reversed(charter.sites), Site("zz-new", "N", KEYS[11].public))),
    ]
    if t0 is not None:
        other_role = Role.PROBE if t0.role is not Role.PROBE else Role.AIDE
        out.append(r(charter, terminals=(r(t0, role=other_role), *charter.terminals[1:])))
        out.append(r(charter, terminals=charter.terminals[1:]))
    return out


@settings(max_examples=30, deadline=None)
@given(charters())
def test_any_field_change_breaks_every_signature(
    drawn: tuple[Charter, dict[str, SigningKey]],
) -> None:
    charter, keys = drawn
    signed = sign_with(charter, keys)
    for changed in _field_changes(charter):
        assert changed.to_bytes() != charter.to_bytes()
        moved = SignedCharter(changed, signed.signatures)
        statuses = moved.check().signatures
        assert all(statuses[sid] != "valid" for sid in keys if sid in statuses)
        with pytest.raises((SignatureError, CharterError)):
            moved.verify()


def test_public_key_type_is_kept() -> None:
    charter = make_charter()
    assert isinstance(charter.sites[0].operator_key, PublicKey)


# --- known answers (also printed in docs/charter.md) ------------------------------------------

DEFAULT_POLICY_HCE = (
    "6400000006"
    "730000000c" + b"cipher_suite".hex() + "7300000016" + b"AES_128_GCM_SHA256_128".hex()
    + "7300000003" + b"kem".hex() + "730000000f" + b"MLKEM768_X25519".hex()
    + "7300000010" + b"max_participants".hex() + "690000000000000004"
    + "7300000014" + b"readiness_interval_s".hex() + "6900000000" + "00000e10"
    + "7300000011" + b"recording_allowed".hex() + "46"
    + "7300000010" + b"rekey_interval_s".hex() + "69000000000000012c"
)  # fmt: skip


def test_default_policy_bytes() -> None:
    data = encode(DEFAULT_POLICY.to_value())
    assert data.hex() == DEFAULT_POLICY_HCE
    assert len(data) == 194


def test_known_answer() -> None:
    charter = Charter(
        line_id="sochi-washington",
        version=1,
        sites=(
            Site("sochi", "Sochi", PublicKey(b"\x01" * 32)),
            Site("washington", "Washington", PublicKey(b"\x02" * 32)),
        ),
        terminals=(
            Terminal(
                "ru-principal", "sochi", "ru-principal", Role.PRINCIPAL,
                PublicKey(b"\x03" * 32), b"\x04" * 64,
            ),
        ),
        exchanges=(ExchangeEndpoint("wss://exchange.example:8443", "sha256:" + "ab" * 32),),
        turn_relays=("turns:relay.example:5349",),
        policy=DEFAULT_POLICY,
        created_at=1_700_000_000,
    )  # fmt: skip
    data = charter.to_bytes()
    assert len(data) == 1030
    assert data.startswith(bytes.fromhex("6400000009730000000a") + b"created_at")
    assert charter.digest().hex() == (
        "54f3cdccf10085fe398ea43e2dc9a38bb58d98ee004e8a28681d05def4c10a8c"
    )
    assert charter.digest_code == "03697 30606 24675 09966 77160 49313"


# --- hostile files: only our own errors, never a crash -----------------------------------------

VALID_FILE = sign_all(make_charter()).to_file_bytes()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_files_fail_cleanly(data: st.DataObject) -> None:
    raw = bytearray(VALID_FILE)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            raw[pos] = data.draw(st.sampled_from(b'0123456789abcdef"{}[],:-. eE\\\x00\xff'))
        elif op == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 40))]
        else:
            raw[pos:pos] = data.draw(st.sampled_from([b"9" * 30, b"1" * 5000, b"[" * 2000, b'"x"']))
    try:
        signed = SignedCharter.from_file_bytes(bytes(raw))
    except CharterFormatError:
        return
    signed.check()
    try:
        signed.verify()
    except (CharterError, SignatureError):
        return
    # a damaged file may only verify if the damage did not change the charter (white space)
    assert signed == sign_all(make_charter())


def test_huge_numbers_are_refused() -> None:
    doc = json.loads(VALID_FILE)
    doc["body"]["version"] = 2**70
    with pytest.raises(CharterFormatError, match="outside the signed 64-bit range"):
        SignedCharter.from_file_bytes(json.dumps(doc).encode())
    text = VALID_FILE.replace(b'"version": 1', b'"version": ' + b"1" * 5000)
    with pytest.raises(CharterFormatError, match="not valid JSON"):
        SignedCharter.from_file_bytes(text)


def test_lone_surrogates_are_refused() -> None:
    for needle, escaped in ((b'"name": "Sochi"', b'"name": "So\\ud800chi"'),
                            (b'"sochi": "', b'"so\\udfffchi": "00", "sochi": "')):  # fmt: skip
        assert needle in VALID_FILE
        with pytest.raises(CharterFormatError, match="not valid Unicode"):
            SignedCharter.from_file_bytes(VALID_FILE.replace(needle, escaped, 1))


# --- policy fields added after format 1 ------------------------------------------------------


def test_a_charter_signed_before_the_new_policy_fields_still_parses_and_verifies() -> None:
    """A charter body built by hand as format 1 had it (six policy fields), signed over its
    bytes, parses with the defaults and verifies: the new fields are not encoded at their
    defaults."""
    charter = make_charter()
    old_policy = {
        "cipher_suite": "AES_128_GCM_SHA256_128",
        "kem": "MLKEM768_X25519",
        "rekey_interval_s": 300,
        "max_participants": 4,
        "readiness_interval_s": 3600,
        "recording_allowed": False,
    }
    old_body = {**charter.to_value(), "policy": old_policy}
    old_bytes = encode(old_body)
    keys = {"sochi": KEYS[0], "washington": KEYS[1]}
    old_signed = SignedCharter(
        Charter.from_bytes(old_bytes), {sid: k.sign(old_bytes) for sid, k in keys.items()}
    )
    old_signed.verify()
    assert old_signed.charter.policy.relay_only is False
    assert old_signed.charter.policy.peer_timeout_s == 60
    assert old_signed.charter.to_bytes() == old_bytes
    again = SignedCharter.from_file_bytes(old_signed.to_file_bytes())
    again.verify()
    assert "relay_only" not in file_doc(again)["body"]["policy"]  # type: ignore[index]


def test_new_policy_fields_are_signed_when_set() -> None:
    policy = Policy(relay_only=True, peer_timeout_s=30)
    signed = sign_all(make_charter(policy=policy))
    signed.verify()
    again = SignedCharter.from_file_bytes(signed.to_file_bytes())
    assert again.charter.policy == policy
    assert SignedCharter.from_wire(signed.to_wire()) == signed
    value = signed.charter.to_value()["policy"]
    assert isinstance(value, dict) and value["relay_only"] is True
    assert value["peer_timeout_s"] == 30
    # changing either field breaks every signature
    for field in ({"relay_only": False}, {"peer_timeout_s": 31}):
        doc = file_doc(signed)
        doc["body"]["policy"].update(field)  # type: ignore[index]
        if field.get("relay_only") is False:
            del doc["body"]["policy"]["relay_only"]  # type: ignore[index]
        with pytest.raises(SignatureError):
            SignedCharter.from_file_bytes(json.dumps(doc).encode()).verify()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("relay_only", False, "relay_only is present with its default value"),
        ("peer_timeout_s", 60, "peer_timeout_s is present with its default value"),
        ("relay_only", 1, "relay_only must be true or false"),
        ("peer_timeout_s", "60", "peer_timeout_s must be an integer"),
        ("peer_timeout_s", True, "peer_timeout_s must be an integer"),
        ("relay_always", True, "unknown field 'relay_always'"),
    ],
)
def test_new_policy_fields_are_strict(field: str, value: object, message: str) -> None:
    doc = file_doc(sign_all(make_charter()))
    doc["body"]["policy"][field] = value  # type: ignore[index]
    with pytest.raises(CharterFormatError, match=message):
        SignedCharter.from_file_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"policy": Policy(peer_timeout_s=4)}, "peer_timeout_s = 4 is outside 5..3600"),
        ({"policy": Policy(peer_timeout_s=3601)}, "peer_timeout_s = 3601 is outside"),
        (
            {"policy": Policy(relay_only=True), "turn_relays": ()},
            "relay_only needs at least one TURN relay",
        ),
    ],
)
def test_new_policy_fields_are_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(CharterError, match=message):
        make_charter(**changes).validate()


# --- readiness-check thresholds (policy field check_thresholds) -------------------------------


def test_check_thresholds_are_left_out_at_their_defaults_and_signed_when_set() -> None:
    default = make_charter()
    value = default.to_value()["policy"]
    assert isinstance(value, dict) and "check_thresholds" not in value
    assert default.policy.check_thresholds == DEFAULT_CHECK_THRESHOLDS
    t = CheckThresholds(green_one_way_ms=100, green_pesq_x100=380, live_rtt_ms=300)
    signed = sign_all(make_charter(policy=Policy(check_thresholds=t)))
    signed.verify()
    value = signed.charter.to_value()["policy"]
    assert isinstance(value, dict)
    assert value["check_thresholds"] == {
        "green_one_way_ms": 100, "green_pesq_x100": 380, "live_rtt_ms": 300,
    }  # fmt: skip
    again = SignedCharter.from_file_bytes(signed.to_file_bytes())
    again.verify()
    assert again.charter.policy.check_thresholds == t
    assert SignedCharter.from_wire(signed.to_wire()) == signed
    doc = file_doc(signed)
    doc["body"]["policy"]["check_thresholds"]["green_one_way_ms"] = 120  # type: ignore[index]
    with pytest.raises(SignatureError):
        SignedCharter.from_file_bytes(json.dumps(doc).encode()).verify()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, "check_thresholds is present but empty"),
        ({"green_one_way_ms": 150}, "green_one_way_ms is present with its default value"),
        ({"green_one_way": 100}, "unknown field 'green_one_way'"),
        ({"green_one_way_ms": "100"}, "green_one_way_ms must be an integer"),
        ({"green_one_way_ms": True}, "green_one_way_ms must be an integer"),
        ([100], "check_thresholds: expected an object"),
    ],
)
def test_check_thresholds_are_strict(value: object, message: str) -> None:
    doc = file_doc(sign_all(make_charter()))
    doc["body"]["policy"]["check_thresholds"] = value  # type: ignore[index]
    with pytest.raises(CharterFormatError, match=message):
        SignedCharter.from_file_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"green_one_way_ms": 0}, r"check_thresholds.green_one_way_ms = 0 is outside 1..10000"),
        ({"amber_loss_permille": 1001}, "amber_loss_permille = 1001 is outside 0..1000"),
        ({"green_mos_x100": 460}, "green_mos_x100 = 460 is outside 100..450"),
        ({"green_one_way_ms": 500}, "green_one_way_ms = 500 is above amber_one_way_ms = 400"),
        ({"green_pesq_x100": 200}, "green_pesq_x100 = 200 is below amber_pesq_x100 = 250"),
    ],
)
def test_check_thresholds_are_validated(fields: dict[str, int], message: str) -> None:
    policy = Policy(check_thresholds=CheckThresholds(**fields))
    with pytest.raises(CharterError, match=message):
        make_charter(policy=policy).validate()
