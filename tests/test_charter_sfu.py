"""The charter's SFUs and the policy's mesh limit: optional fields that leave older charters'
encoding and signatures as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotline.charter import Policy, SfuEndpoint, SignedCharter, load_charter
from hotline.errors import CharterError, CharterFormatError, SignatureError
from tests.charters import make_charter, sign_all
from tests.test_charter import file_doc
from tests.test_cli_line import Run, commission, hotline

__all__ = ["hotline"]  # the fixture

PIN = "sha256:" + "ab" * 32


def test_a_charter_without_sfus_encodes_as_before() -> None:
    charter = make_charter()
    value = charter.to_value()
    assert "sfus" not in value
    assert "mesh_limit" not in value["policy"]  # type: ignore[operator]
    assert charter.policy.mesh_limit == 3
    again = SignedCharter.from_file_bytes(sign_all(charter).to_file_bytes())
    again.verify()
    assert again.charter.sfus == ()


def test_sfus_and_mesh_limit_are_signed_when_set() -> None:
    sfus = (SfuEndpoint("https://sfu.sochi.example:8089/janus", PIN),)
    charter = make_charter(sfus=sfus, policy=Policy(max_participants=10, mesh_limit=2))
    charter.validate()
    signed = sign_all(charter)
    signed.verify()
    again = SignedCharter.from_file_bytes(signed.to_file_bytes())
    again.verify()
    assert again.charter.sfus == sfus
    assert again.charter.policy.mesh_limit == 2
    assert SignedCharter.from_wire(signed.to_wire()) == signed
    for change in (
        lambda doc: doc["body"]["sfus"][0].update(url="https://evil.example:8089/janus"),
        lambda doc: doc["body"]["sfus"][0].update(tls_fingerprint="sha256:" + "cd" * 32),
        lambda doc: doc["body"]["policy"].update(mesh_limit=9),
        lambda doc: doc["body"].pop("sfus"),
    ):
        doc = file_doc(signed)
        change(doc)
        with pytest.raises(SignatureError):
            SignedCharter.from_file_bytes(json.dumps(doc).encode()).verify()


@pytest.mark.parametrize(
    ("sfus", "message"),
    [
        ((SfuEndpoint("https://sfu.example/janus"),), "no pinned TLS certificate"),
        ((SfuEndpoint("http://sfu.example:8088/janus"),), "plain http:// is allowed only"),
        ((SfuEndpoint("wss://sfu.example:8989", PIN),), "scheme must be one of http, https"),
        ((SfuEndpoint("https://sfu.example/janus", "md5:00"),), "TLS fingerprint must be"),
        (
            (SfuEndpoint("http://127.0.0.1:8088/janus"),) * 2,
            "duplicate SFU URL",
        ),
        ((SfuEndpoint("http://127.0.0.1:1/j"),) * 9, "9 SFUs is more than the limit of 8"),
    ],
)
def test_sfus_are_validated(sfus: tuple[SfuEndpoint, ...], message: str) -> None:
    with pytest.raises(CharterError, match=message):
        make_charter(sfus=sfus).validate()


def test_a_loopback_sfu_needs_no_pin() -> None:
    make_charter(sfus=(SfuEndpoint("http://127.0.0.1:8088/janus"),)).validate()


@pytest.mark.parametrize("limit", [1, 65, True])
def test_the_mesh_limit_is_validated(limit: object) -> None:
    with pytest.raises(CharterError, match="mesh_limit"):
        make_charter(policy=Policy(mesh_limit=limit)).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: doc["body"].update(sfus=[]), "sfus is present but empty"),
        (lambda doc: doc["body"]["policy"].update(mesh_limit=3), "present with its default"),
        (lambda doc: doc["body"]["policy"].update(mesh_limit="4"), "must be an integer"),
        (lambda doc: doc["body"].update(sfus=[{"url": "http://127.0.0.1:1/j"}]), "missing"),
        (lambda doc: doc["body"].update(sfu=[]), "unknown field 'sfu'"),
    ],
)
def test_sfu_fields_are_strict(edit: object, message: str) -> None:
    doc = file_doc(sign_all(make_charter()))
    edit(doc)  # type: ignore[operator]
    with pytest.raises(CharterFormatError, match=message):
        SignedCharter.from_file_bytes(json.dumps(doc).encode())


def test_line_propose_names_sfus_and_the_mesh_limit(hotline: Run) -> None:
    commission(hotline)
    result = hotline(
        "line", "propose", "sochi-washington", "--site", "sochi", "--site", "washington",
        "--exchange", "ws://127.0.0.1:8765", "--sfu", f"https://sfu.example:8089/janus#{PIN}",
        "--sfu", "http://127.0.0.1:8088/janus", "--mesh-limit", "2", "--max-participants",
        "10", "--version", "2", "--out", "line.json", "--force",
    )  # fmt: skip
    assert result.code == 0, result.err
    charter = load_charter(Path("line.json")).charter
    assert charter.sfus == (
        SfuEndpoint("https://sfu.example:8089/janus", PIN),
        SfuEndpoint("http://127.0.0.1:8088/janus", None),
    )
    assert charter.policy.mesh_limit == 2
    shown = " ".join(hotline("line", "show", "line.json").out.split())  # rich wraps lines
    assert "mesh up to 2 terminals" in shown
    assert "SFU: https://sfu.example:8089/janus" in shown
    info = json.loads(hotline("line", "show", "line.json", "--json").out)
    assert info["sfus"][0] == {"url": "https://sfu.example:8089/janus", "tls_fingerprint": PIN}
    assert info["policy"]["mesh_limit"] == 2
    for args, message in (
        (("--sfu", "https://sfu.example/janus"), "no pinned TLS certificate"),
        (("--sfu", "http://sfu.example/janus"), "plain http:// is allowed only"),
        (("--sfu", "https://sfu.example/janus#sha256:00"), "SFU 'https://sfu.example"),
        (("--mesh-limit", "1"), "mesh_limit = 1 is outside 2..64"),
    ):
        hotline("line", "propose", "l", "--site", "sochi", *args, "--out", "a.json")\
            .one_line_error(message)  # fmt: skip
    assert not Path("a.json").exists()
