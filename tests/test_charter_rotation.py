"""Handovers (a site's new operator key), replaced enrolments and merged copies, without
processes: the encodings, the store's continuity rule, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotline.charter import CharterStore, Handover, SignedCharter, load_charter
from hotline.errors import CharterError, SignatureError, UnknownMember, UsageError
from hotline.provision import (
    enroll_terminal,
    first_difference,
    init_site,
    merge_charters,
    propose_line,
    rotate_operator_key,
    sign_charter,
    site_enrolments,
    write_draft,
)


def line(root: Path, version: int = 1) -> Path:
    if not (root / "east").exists():
        init_site(root / "east", "east")
        init_site(root / "west", "west")
        enroll_terminal(root / "east", "alpha", "principal", root / "alpha")
        enroll_terminal(root / "west", "bravo", "principal", root / "bravo")
    path = root / f"v{version}.json"
    charter = propose_line("east-west", [root / "east", root / "west"], version=version)
    write_draft(path, charter)
    sign_charter(path, root / "east")
    sign_charter(path, root / "west")
    return path


def test_a_charter_without_handovers_keeps_its_bytes(tmp_path: Path) -> None:
    signed = load_charter(line(tmp_path))
    assert signed.handovers == {}
    assert "handovers" not in json.loads(signed.to_file_bytes())
    assert b"handovers" not in signed.to_wire()
    assert SignedCharter.from_wire(signed.to_wire()) == signed


def test_handover_round_trips_and_is_verified(tmp_path: Path) -> None:
    line(tmp_path)
    rotate_operator_key(tmp_path / "west")
    signed = load_charter(line(tmp_path, 2))
    assert set(signed.handovers) == {"west"}
    signed.verify()
    assert SignedCharter.from_wire(signed.to_wire()) == signed
    assert SignedCharter.from_file_bytes(signed.to_file_bytes()) == signed
    assert signed.check().handovers == {"west": "valid"}
    # a handover whose signature does not cover this body
    bad = signed.handovers["west"]
    forged = signed.with_handover("west", Handover(bad.previous_key, bytes(64)))
    with pytest.raises(SignatureError, match="handover by the previous operator key"):
        forged.verify()
    assert forged.check().handovers == {"west": "invalid"} and not forged.check().ok
    # a handover for a site the charter does not name
    stray = signed.with_handover("north", bad)
    with pytest.raises(UnknownMember, match="handover for site 'north'"):
        stray.verify()


def test_store_accepts_a_new_operator_key_only_with_the_handover(tmp_path: Path) -> None:
    v1 = load_charter(line(tmp_path))
    store = CharterStore(tmp_path / "s.sqlite")
    store.accept(v1)
    rotate_operator_key(tmp_path / "west")
    v2 = load_charter(line(tmp_path, 2))
    without = SignedCharter(v2.charter, v2.signatures)
    without.verify()  # valid on its own: only the store knows the key it replaces
    with pytest.raises(CharterError, match="without a handover"):
        store.accept(without)
    assert store.rejected["charter"] >= 1
    assert store.accept(v2).version == 2
    assert store.accept(without, reanchor=False).version == 2  # the same version: as is


def test_rotated_site_signs_its_enrolments_with_the_new_key(tmp_path: Path) -> None:
    line(tmp_path)
    old, new = rotate_operator_key(tmp_path / "west", None, "new passphrase")
    assert old.operator_key != new.operator_key
    (record,) = site_enrolments(tmp_path / "west")
    assert record.operator_key == new.operator_key
    record.verify()
    assert (tmp_path / "west" / "operator.previous.key").stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / "west").glob(".*.new"))
    with pytest.raises(UsageError, match="the last rotation's key is still kept"):
        rotate_operator_key(tmp_path / "west", "new passphrase")


def test_enroll_replace(tmp_path: Path) -> None:
    line(tmp_path)
    with pytest.raises(UsageError, match="--replace"):
        enroll_terminal(tmp_path / "west", "bravo", "principal", tmp_path / "bravo-2")
    with pytest.raises(UsageError, match="no terminal 'zulu' to replace"):
        enroll_terminal(tmp_path / "west", "zulu", "principal", tmp_path / "z", replace=True)
    with pytest.raises(UsageError, match="not empty"):  # the old folder is kept as it is
        enroll_terminal(tmp_path / "west", "bravo", "principal", tmp_path / "bravo", replace=True)
    assert (tmp_path / "west" / "enrolments" / "bravo.json").exists()  # nothing changed
    enroll_terminal(tmp_path / "west", "bravo", "principal", tmp_path / "bravo-2", replace=True)
    (archived,) = (tmp_path / "west" / "enrolments" / "replaced").glob("bravo-*.json")
    v2 = load_charter(line(tmp_path, 2))
    new_key = v2.charter.terminal("bravo").identity_key
    assert new_key != json.loads(archived.read_text())["identity_key"]
    assert (
        new_key.hex()
        == json.loads((tmp_path / "bravo-2" / "enrolment.json").read_text())["identity_key"]
    )


def test_merge_and_first_difference(tmp_path: Path) -> None:
    line(tmp_path)
    draft = tmp_path / "draft.json"
    sites = [tmp_path / "east", tmp_path / "west"]
    write_draft(draft, propose_line("east-west", sites, created_at=1_700_000_000))
    copies = []
    for site in ("east", "west"):
        copy = tmp_path / f"by-{site}.json"
        copy.write_bytes(draft.read_bytes())
        sign_charter(copy, tmp_path / site)
        copies.append(copy)
    merged = merge_charters(copies)
    merged.verify()
    with pytest.raises(UsageError, match="at least two"):
        merge_charters(copies[:1])
    assert first_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == "a[1].b"
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == "a (the number of entries: 1 and 2)"
    assert first_difference({"a": 1}, {"a": 1}) is None
    other = tmp_path / "other.json"
    write_draft(other, propose_line("east-west", sites, version=5, created_at=1_700_000_000))
    with pytest.raises(CharterError, match="version differs"):
        merge_charters([copies[0], other])
