"""CharterStore: the highest valid version per line, persisted, and never going back."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from hotline.charter import CharterStore, SignedCharter, Site
from hotline.errors import (
    CharterError,
    CharterIncomplete,
    CharterRollback,
    SignatureError,
    StateError,
)
from tests.charters import KEYS, make_charter, sign_all


def test_accept_and_persist_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "charters.sqlite"
    v1, v2 = sign_all(make_charter(1)), sign_all(make_charter(2))
    with CharterStore(db) as store:
        assert store.current("sochi-washington") is None
        assert store.accept(v1) == v1
        assert store.accept(v2) == v2
        assert store.accept(v2) == v2  # the same charter again is fine
        assert store.lines() == ["sochi-washington"]
    with CharterStore(db) as store:
        assert store.current("sochi-washington") == v2
        with pytest.raises(CharterRollback, match="version 1 is older than version 2"):
            store.accept(v1)
        assert store.rejected["charter_rollback"] == 1
        assert store.current("sochi-washington") == v2


def test_rollback_refused_after_reopen_even_with_reanchor(tmp_path: Path) -> None:
    db = tmp_path / "charters.sqlite"
    with CharterStore(db) as store:
        store.accept(sign_all(make_charter(5)))
    with CharterStore(db) as store, pytest.raises(CharterRollback):
        store.accept(sign_all(make_charter(4)), reanchor=True)


def test_same_version_different_body_is_refused(tmp_path: Path) -> None:
    with CharterStore(tmp_path / "s.sqlite") as store:
        store.accept(sign_all(make_charter(3)))
        with pytest.raises(CharterError, match="different charter with the same version 3"):
            store.accept(sign_all(make_charter(3, created_at=1)))


def test_invalid_charters_are_refused_and_counted(tmp_path: Path) -> None:
    charter = make_charter()
    half = SignedCharter(charter, {"sochi": KEYS[0].sign(charter.to_bytes())})
    with CharterStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(CharterIncomplete):
            store.accept(half)
        forged = half.with_signature("washington", KEYS[9].sign(charter.to_bytes()))
        with pytest.raises(SignatureError):
            store.accept(forged)
        assert store.rejected == {"charter_incomplete": 1, "bad_signature": 1}
        assert store.current(charter.line_id) is None


def test_a_new_version_must_be_signed_by_the_old_sites(tmp_path: Path) -> None:
    # version 2 replaces washington's operator key with one an attacker holds
    v1 = make_charter(1)
    attacker = KEYS[10]
    sites = (v1.sites[0], Site("washington", "Washington", attacker.public))
    v2 = make_charter(2, sites=sites, terminals=v1.terminals[:2])
    body = v2.to_bytes()
    signed_v2 = SignedCharter(v2, {"sochi": KEYS[0].sign(body), "washington": attacker.sign(body)})
    signed_v2.verify()  # valid on its own
    with CharterStore(tmp_path / "s.sqlite") as store:
        store.accept(sign_all(v1))
        with pytest.raises(CharterError, match="changes the operator key of site 'washington'"):
            store.accept(signed_v2)
        dropped = make_charter(3, sites=v1.sites[:1], terminals=v1.terminals[:2])
        signed_dropped = SignedCharter(dropped, {"sochi": KEYS[0].sign(dropped.to_bytes())})
        with pytest.raises(CharterError, match="drops site 'washington'"):
            store.accept(signed_dropped)
        assert store.current("sochi-washington") == sign_all(v1)
        # the local operator may install it by hand
        assert store.accept(signed_v2, reanchor=True) == signed_v2


def test_lines_are_independent(tmp_path: Path) -> None:
    with CharterStore(tmp_path / "s.sqlite") as store:
        store.accept(sign_all(make_charter(7)))
        other = sign_all(make_charter(1, line_id="other-line"))
        assert store.accept(other) == other
        assert store.lines() == ["other-line", "sochi-washington"]


def test_tampered_store_is_detected(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    signed = sign_all(make_charter(1))
    with CharterStore(db) as store:
        store.accept(signed)
    bad = SignedCharter(dataclasses.replace(signed.charter, created_at=5), signed.signatures)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE charters SET signed = ?", (bad.to_wire(),))
    conn.close()
    with CharterStore(db) as store, pytest.raises(CharterError, match="damaged"):
        store.current("sochi-washington")


def test_unopenable_store(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot open the charter store"):
        CharterStore(tmp_path / "missing-dir" / "s.sqlite")
