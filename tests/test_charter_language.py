"""A terminal's language (shown with its role: an interpreter's): an optional charter field
that leaves older charters' and enrolments' encoding and signatures as they were."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hotline.charter import Role, SignedCharter, Terminal, enrolment_bytes
from hotline.errors import CharterError, CharterFormatError, SignatureError, UsageError
from hotline.keys import SigningKey
from hotline.provision import enroll_terminal, init_site, load_terminal
from tests.charters import KEYS, make_charter, sign_all
from tests.test_charter import file_doc
from tests.test_cli_line import Run, hotline

__all__ = ["hotline"]  # the fixture


def with_language(terminal: Terminal, site_key: SigningKey, language: str | None) -> Terminal:
    """``terminal`` re-enrolled by its site with ``language``."""
    changed = dataclasses.replace(terminal, language=language)
    signature = site_key.sign(changed.enrolment_bytes())
    return dataclasses.replace(changed, enrolment_signature=signature)


def test_without_a_language_everything_encodes_as_before() -> None:
    charter = make_charter()
    for t in charter.terminals:
        assert t.language is None and "language" not in t.to_value()
        # the enrolment bytes are those of format 1, so old signatures verify
        old = enrolment_bytes(t.site_id, t.terminal_id, t.name, t.role, t.identity_key)
        assert t.enrolment_bytes() == old and b"language" not in old
    again = SignedCharter.from_file_bytes(sign_all(charter).to_file_bytes())
    again.verify()
    assert all(t.language is None for t in again.charter.terminals)


def test_a_language_is_signed_by_the_site_and_by_the_charter() -> None:
    charter = make_charter()
    interpreter = with_language(charter.terminals[1], KEYS[0], "fr")
    assert interpreter.role is Role.INTERPRETER
    charter = dataclasses.replace(
        charter, terminals=(charter.terminals[0], interpreter, *charter.terminals[2:])
    )
    charter.validate()
    signed = sign_all(charter)
    signed.verify()
    again = SignedCharter.from_file_bytes(signed.to_file_bytes())
    again.verify()
    assert again.charter.terminals[1].language == "fr"
    assert again.charter.terminals[0].language is None
    assert SignedCharter.from_wire(signed.to_wire()) == signed
    for change in (
        lambda doc: doc["body"]["terminals"][1].update(language="de"),
        lambda doc: doc["body"]["terminals"][1].pop("language"),
        lambda doc: doc["body"]["terminals"][0].update(language="fr"),
    ):
        doc = file_doc(signed)
        change(doc)
        with pytest.raises(SignatureError):
            SignedCharter.from_file_bytes(json.dumps(doc).encode()).verify()
    # the language is in the operator's enrolment signature too
    forged = dataclasses.replace(interpreter, language="de")
    with pytest.raises(SignatureError):
        forged.verify_enrolment(KEYS[0].public)


@pytest.mark.parametrize("bad", ["", "french!", "f", "en_GB", "a" * 40, "en-"])
def test_a_language_must_be_a_tag(bad: str) -> None:
    charter = make_charter()
    t = with_language(charter.terminals[1], KEYS[0], bad)
    with pytest.raises(CharterError, match="is not a language tag"):
        dataclasses.replace(charter, terminals=(t, *charter.terminals[1:])).validate()


def test_a_language_that_is_not_a_string_is_refused() -> None:
    doc = file_doc(sign_all(make_charter()))
    doc["body"]["terminals"][0]["language"] = 7  # type: ignore[index]
    with pytest.raises(CharterFormatError, match="language must be a string"):
        SignedCharter.from_file_bytes(json.dumps(doc).encode())


def test_enrolment_with_a_language(tmp_path: Path) -> None:
    site = tmp_path / "sites" / "paris"
    init_site(site, "paris")
    out = enroll_terminal(site, "fr-interp", Role.INTERPRETER, language="fr")
    record, _ = load_terminal(out)
    assert record.language == "fr" and record.terminal.language == "fr"
    record.verify()
    plain = enroll_terminal(site, "fr-principal", Role.PRINCIPAL)
    assert b"language" not in (plain / "enrolment.json").read_bytes()
    assert load_terminal(plain)[0].language is None
    with pytest.raises(UsageError, match="is not a language tag"):
        enroll_terminal(site, "x", Role.INTERPRETER, language="français")


def test_the_cli_enrols_with_a_language(hotline: Run) -> None:
    assert hotline("site", "init", "paris").code == 0
    result = hotline(
        "terminal",
        "enroll",
        "fr-interp",
        "--site",
        "paris",
        "--role",
        "interpreter",
        "--language",
        "fr",
        "--json",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["language"] == "fr"
    hotline(
        "terminal", "enroll", "x", "--site", "paris", "--role", "interpreter", "--language", "?"
    ).one_line_error("is not a language tag")
