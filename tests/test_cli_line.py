"""The commissioning commands: site init, terminal enroll, line propose/sign/show/verify.

The happy path runs once as real processes (``python -m hotline``); the rest runs the same
entry point in this process. Every bad input must give one line on stderr that says what is
wrong and where, a non-zero exit, and no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hotline.charter import (
    MAX_CHARTER_FILE_SIZE,
    ExchangeEndpoint,
    SignedCharter,
    load_charter,
    write_charter,
)
from hotline.cli import main
from hotline.cli.common import EXIT_CHECK_FAILED, EXIT_ERROR
from hotline.keys import SigningKey
from hotline.provision import load_site


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_line_error(self, *fragments: str) -> None:
        """Assert a refusal: non-zero exit, exactly one line on stderr, no traceback."""
        assert self.code != 0, self.out
        assert "Traceback" not in self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: "), lines[0]
        for fragment in fragments:
            assert fragment in lines[0], lines[0]


Run = Callable[..., Result]


@pytest.fixture
def hotline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Run:
    """Run ``hotline ARGS...`` in-process, in ``tmp_path``, through the real entry point."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOTLINE_PASSPHRASE", raising=False)

    def run(*args: str) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["hotline", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def commission(run: Run) -> Path:
    """Two sites, three terminals, a charter signed by both: the README's walk-through."""
    for args in (
        ("site", "init", "sochi", "--display-name", "Sochi residence"),
        ("site", "init", "washington"),
        ("terminal", "enroll", "ru-principal", "--site", "sochi", "--role", "principal"),
        ("terminal", "enroll", "ru-interpreter", "--site", "sochi", "--role", "interpreter"),
        ("terminal", "enroll", "us-principal", "--site", "washington", "--role", "principal"),
        (
            "line",
            "propose",
            "sochi-washington",
            "--site",
            "sochi",
            "--site",
            "washington",
            "--exchange",
            "ws://127.0.0.1:8765",
            "--out",
            "line.json",
        ),
        ("line", "sign", "line.json", "--site", "sochi"),
        ("line", "sign", "line.json", "--site", "washington"),
    ):
        result = run(*args)
        assert result.code == 0, (args, result.err)
    return Path("line.json")


# --- the happy path as real processes -------------------------------------------------------


def test_commissioning_end_to_end_in_processes(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("HOTLINE_PASSPHRASE", None)

    def run(*args: str) -> Result:
        proc = subprocess.run(  # noqa: PLW1510 (the exit code is checked by the caller)
            [sys.executable, "-m", "hotline", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    path = tmp_path / commission(run)
    verified = run("line", "verify", "line.json")
    assert verified.code == 0, verified.err
    assert "OK: line sochi-washington version 1 is complete" in verified.out
    shown = run("line", "show", "line.json", "--json")
    assert shown.code == 0
    info = json.loads(shown.out)
    signed = load_charter(path)
    assert info["valid"] and info["complete"] and info["problems"] == []
    assert info["digest"] == signed.charter.digest().hex()
    assert [s["signature"] for s in info["sites"]] == ["valid", "valid"]
    fingerprints = {t["terminal_id"]: t["fingerprint"] for t in info["terminals"]}
    assert (
        fingerprints["us-principal"]
        == signed.charter.terminal("us-principal").identity_key.fingerprint
    )
    assert {t["role"] for t in info["terminals"]} == {"principal", "interpreter"}
    refused = run("line", "verify", "absent.json")
    assert refused.code == EXIT_ERROR
    Result(refused.code, refused.out, refused.err).one_line_error(
        "absent.json: no such charter file"
    )


# --- the happy path in process --------------------------------------------------------------


def test_show_for_people(hotline: Run) -> None:
    path = commission(hotline)
    result = hotline("line", "show", str(path))
    assert result.code == 0
    signed = load_charter(path)
    assert signed.charter.digest_code in result.out
    for site in signed.charter.sites:
        assert site.operator_key.fingerprint in result.out
    for terminal in signed.charter.terminals:
        assert terminal.identity_key.fingerprint in result.out
    assert "Sochi residence" in result.out
    assert "MLKEM768_X25519" in result.out and "ws://127.0.0.1:8765" in result.out
    assert "VALID" in result.out


def test_relay_only_and_peer_timeout(hotline: Run) -> None:
    commission(hotline)
    result = hotline(
        "line", "propose", "l", "--site", "sochi", "--turn", "turn:127.0.0.1:3478",
        "--relay-only", "--peer-timeout", "20", "--out", "relayed.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    policy = load_charter(Path("relayed.json")).charter.policy
    assert policy.relay_only and policy.peer_timeout_s == 20
    shown = hotline("line", "show", "relayed.json")
    assert "through the TURN relays only" in shown.out and "after 20 s" in shown.out
    info = json.loads(hotline("line", "show", "relayed.json", "--json").out)
    assert info["policy"]["relay_only"] is True and info["policy"]["peer_timeout_s"] == 20
    info = json.loads(hotline("line", "show", "line.json", "--json").out)
    assert info["policy"]["relay_only"] is False and info["policy"]["peer_timeout_s"] == 60
    assert "direct or relayed" in hotline("line", "show", "line.json").out


def test_verify_json(hotline: Run) -> None:
    path = commission(hotline)
    result = hotline("line", "verify", str(path), "--json")
    assert result.code == 0
    info = json.loads(result.out)
    assert info["valid"] is True and info["sites"] == ["sochi", "washington"]


def test_partial_charter_shows_what_is_missing(hotline: Run) -> None:
    hotline("site", "init", "a")
    hotline("site", "init", "b")
    assert (
        hotline("line", "propose", "l", "--site", "a", "--site", "b", "--out", "l.json").code == 0
    )
    hotline("line", "sign", "l.json", "--site", "a")
    shown = hotline("line", "show", "l.json")
    assert shown.code == 0 and "INCOMPLETE" in shown.out and "missing" in shown.out
    info = json.loads(hotline("line", "show", "l.json", "--json").out)
    assert info["complete"] is False
    assert [s["signature"] for s in info["sites"]] == ["valid", "missing"]
    result = hotline("line", "verify", "l.json")
    assert result.code == EXIT_CHECK_FAILED
    result.one_line_error("l.json", "no signature yet from 'b'")
    as_json = hotline("line", "verify", "l.json", "--json")
    assert as_json.code == EXIT_CHECK_FAILED
    assert json.loads(as_json.out)["reason"] == "charter_incomplete"


def test_passphrases_from_file_and_environment(
    hotline: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pass").write_text("operator secret\n")
    assert hotline("site", "init", "a", "--passphrase-file", "pass").code == 0
    assert b"ENCRYPTED" in (tmp_path / "a" / "operator.key").read_bytes()
    hotline("line", "propose", "l", "--site", "a", "--out", "l.json")
    hotline("line", "sign", "l.json", "--site", "a").one_line_error(
        "a/operator.key", "the key is encrypted"
    )
    (tmp_path / "wrong").write_text("nope\n")
    hotline("line", "sign", "l.json", "--site", "a", "--passphrase-file", "wrong").one_line_error(
        "wrong passphrase"
    )
    monkeypatch.setenv("HOTLINE_PASSPHRASE", "operator secret")
    assert hotline("line", "sign", "l.json", "--site", "a").code == 0
    result = hotline("terminal", "enroll", "t", "--site", "a", "--role", "probe", "--json")
    assert result.code == 0
    info = json.loads(result.out)
    assert info["role"] == "probe" and len(info["fingerprint"].split()) == 6
    assert b"ENCRYPTED" in (tmp_path / "t" / "identity.key").read_bytes()


# --- every bad input: one line, non-zero exit, no traceback --------------------------------


def edit(path: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1))


def test_tampered_charter(hotline: Run) -> None:
    path = commission(hotline)
    edit(path, lambda d: d["body"]["policy"].update(kem="X25519"))  # a downgrade
    result = hotline("line", "verify", str(path))
    assert result.code == EXIT_CHECK_FAILED
    result.one_line_error("line.json", "signature of site 'sochi' on the charter does not verify")
    info = json.loads(hotline("line", "show", str(path), "--json").out)
    assert [s["signature"] for s in info["sites"]] == ["invalid", "invalid"]


def test_tampered_terminal_key(hotline: Run) -> None:
    path = commission(hotline)
    intruder = SigningKey.generate().public.hex()
    edit(path, lambda d: d["body"]["terminals"][0].update(identity_key=intruder))
    hotline("line", "verify", str(path)).one_line_error("enrolment signature of terminal")


def test_wrong_signature(hotline: Run) -> None:
    path = commission(hotline)
    signed = load_charter(path)
    forged = SigningKey.generate().sign(signed.charter.to_bytes()).hex()
    edit(path, lambda d: d["signatures"].update(washington=forged))
    result = hotline("line", "verify", str(path))
    assert result.code == EXIT_CHECK_FAILED
    result.one_line_error("signature of site 'washington' on the charter does not verify")
    edit(path, lambda d: d["signatures"].update(washington="00" * 10))
    hotline("line", "verify", str(path)).one_line_error("a signature is 64 bytes")


def test_missing_signature(hotline: Run) -> None:
    path = commission(hotline)
    edit(path, lambda d: d["signatures"].pop("sochi"))
    result = hotline("line", "verify", str(path))
    assert result.code == EXIT_CHECK_FAILED
    result.one_line_error("no signature yet from 'sochi'")


def test_unknown_site(hotline: Run) -> None:
    path = commission(hotline)
    hotline("site", "init", "moscow")
    result = hotline("line", "sign", str(path), "--site", "moscow")
    assert result.code == EXIT_ERROR
    result.one_line_error("site 'moscow' is not in the charter", "moscow cannot sign it")
    edit(path, lambda d: d["signatures"].update(moscow="00" * 64))
    hotline("line", "verify", str(path)).one_line_error(
        "a signature by site 'moscow', which is not in the charter"
    )


def test_terminal_enrolled_by_a_site_not_in_the_charter(hotline: Run) -> None:
    path = commission(hotline)
    hotline("site", "init", "moscow")
    hotline("terminal", "enroll", "ru-spy", "--site", "moscow", "--role", "aide")
    result = hotline(
        "line", "propose", "l2", "--site", "sochi", "--site", "washington",
        "--terminal", "ru-principal", "--terminal", "ru-spy", "--out", "l2.json",
    )  # fmt: skip
    assert result.code == EXIT_ERROR
    result.one_line_error("ru-spy", "enrolled by site 'moscow', which is not among the sites")
    spy = json.loads(Path("ru-spy/enrolment.json").read_text())
    spy.pop("format")
    spy.pop("operator_key")
    edit(path, lambda d: d["body"]["terminals"].append(spy))
    result = hotline("line", "verify", str(path))
    assert result.code == EXIT_CHECK_FAILED
    result.one_line_error("terminal 'ru-spy' (terminals[3]) is enrolled by site 'moscow'")


def test_duplicate_ids(hotline: Run) -> None:
    path = commission(hotline)
    result = hotline(
        "line", "propose", "l2", "--site", "sochi", "--site", "washington",
        "--terminal", "ru-principal", "--terminal", "ru-principal", "--out", "l2.json",
    )  # fmt: skip
    result.one_line_error("duplicate terminal id 'ru-principal'")
    hotline(
        "line", "propose", "l2", "--site", "sochi", "--site", "sochi", "--out", "x.json"
    ).one_line_error("duplicate site id 'sochi'")
    hotline("terminal", "enroll", "ru-principal", "--site", "washington", "--role", "aide",
            "--out", "us-dup")  # fmt: skip
    hotline(
        "line", "propose", "l3", "--site", "sochi", "--site", "washington", "--out", "y.json"
    ).one_line_error("duplicate terminal id 'ru-principal'")
    hotline(
        "terminal", "enroll", "ru-principal", "--site", "sochi", "--role", "aide"
    ).one_line_error("already enrolled a terminal 'ru-principal'")
    edit(path, lambda d: d["body"]["sites"].append(d["body"]["sites"][0]))
    result = hotline("line", "verify", str(path))
    assert result.code == EXIT_CHECK_FAILED
    result.one_line_error("duplicate site id 'sochi' (sites[0] and sites[2])")


def test_truncated_and_oversized_files(hotline: Run, tmp_path: Path) -> None:
    path = commission(hotline)
    data = path.read_bytes()
    Path("cut.json").write_bytes(data[: len(data) * 2 // 3])
    for command in ("verify", "show", "sign"):
        extra = ("--site", "sochi") if command == "sign" else ()
        result = hotline("line", command, "cut.json", *extra)
        assert result.code == EXIT_ERROR
        result.one_line_error("cut.json", "not valid JSON, truncated or damaged")
    Path("big.json").write_bytes(data + b" " * MAX_CHARTER_FILE_SIZE)
    result = hotline("line", "verify", "big.json")
    assert result.code == EXIT_ERROR
    result.one_line_error("big.json: over the 1048576-byte limit for a charter file")
    Path("empty.json").write_bytes(b"")
    hotline("line", "verify", "empty.json").one_line_error("empty.json: the charter file is empty")
    Path("other.json").write_text('{"format": "something else", "body": {}, "signatures": {}}')
    hotline("line", "verify", "other.json").one_line_error("not a charter file")
    Path("site/x").mkdir(parents=True)
    hotline("line", "propose", "l", "--site", "site/x", "--out", "z.json").one_line_error(
        "site/x/site.json: no such site record"
    )


def test_wrong_key_permissions(hotline: Run) -> None:
    path = commission(hotline)
    os.chmod("washington/operator.key", 0o644)
    result = hotline("line", "sign", str(path), "--site", "washington")
    assert result.code == EXIT_ERROR
    result.one_line_error("washington/operator.key: permissions 0644", "chmod 600")
    hotline("terminal", "enroll", "t", "--site", "washington", "--role", "aide").one_line_error(
        "permissions 0644"
    )


def test_bad_arguments(hotline: Run) -> None:
    commission(hotline)
    hotline("site", "init", "Bad Name").one_line_error("site name 'Bad Name' is not a valid id")
    hotline("site", "init", "sochi").one_line_error("sochi: the folder already exists")
    hotline("terminal", "enroll", "x", "--site", "sochi", "--role", "king").one_line_error(
        "'--role'", "'king' is not one of 'principal', 'interpreter', 'aide', 'probe'"
    )
    hotline("line", "propose", "l", "--site", "sochi", "--kem", "RSA", "--out", "a.json")\
        .one_line_error("'--kem'", "'RSA' is not one of 'MLKEM768_X25519', 'X25519'")  # fmt: skip
    hotline("line", "propose", "l", "--site", "sochi", "--rekey-interval", "0", "--out", "a.json")\
        .one_line_error("rekey_interval_s = 0 is outside")  # fmt: skip
    hotline("line", "propose", "l", "--site", "sochi", "--exchange", "wss://h#sha256:00",
            "--out", "a.json").one_line_error("64 hex digits")  # fmt: skip
    hotline("line", "propose", "l", "--site", "sochi", "--turn", "turn:user:pw@relay",
            "--out", "a.json").one_line_error("carries credentials")  # fmt: skip
    hotline("line", "propose", "l", "--site", "sochi", "--peer-timeout", "1", "--out", "a.json")\
        .one_line_error("peer_timeout_s = 1 is outside 5..3600")  # fmt: skip
    hotline("line", "propose", "l", "--site", "sochi", "--relay-only", "--out", "a.json")\
        .one_line_error("relay_only needs at least one TURN relay")  # fmt: skip
    hotline("line", "propose", "l", "--site", "sochi", "--version", "0", "--out", "a.json")\
        .one_line_error("version 0 must be an integer >= 1")  # fmt: skip
    hotline("line", "propose", "l", "--site", "sochi", "--out", "line.json").one_line_error(
        "line.json: already exists"
    )
    assert not Path("a.json").exists()


def test_force_and_versions(hotline: Run) -> None:
    path = commission(hotline)
    result = hotline(
        "line", "propose", "sochi-washington", "--site", "sochi", "--site", "washington",
        "--version", "2", "--no-recording", "--max-participants", "6", "--out", str(path),
        "--force",
    )  # fmt: skip
    assert result.code == 0, result.err
    signed = load_charter(path)
    assert signed.version == 2 and signed.signatures == {}
    assert signed.charter.policy.max_participants == 6
    assert isinstance(signed, SignedCharter)


@pytest.mark.parametrize(
    ("exchange", "message"),
    [
        ("wss://exchange.example:8443", "no pinned TLS certificate"),
        ("ws://exchange.example:8765", "only to a loopback address"),
        ("http://127.0.0.1:8765", "scheme must be one of ws, wss"),
    ],
)
def test_exchanges_terminals_refuse_fail_early(hotline: Run, exchange: str, message: str) -> None:
    """An exchange entry no terminal would connect to is refused at propose, and a charter
    that holds one (signed before this check existed) does not verify (issue 9, point 17)."""
    path = commission(hotline)
    hotline("line", "propose", "l", "--site", "sochi", "--exchange", exchange, "--out", "x.json")\
        .one_line_error(message)  # fmt: skip
    assert not Path("x.json").exists()
    # the same charter with that exchange entry, signed by both sites (as a tool without
    # this check would have done)
    signed = load_charter(path)
    charter = dataclasses.replace(
        signed.charter, exchanges=(ExchangeEndpoint(exchange, None),), version=2
    )
    bad = SignedCharter(charter)
    for site in ("sochi", "washington"):
        _, key = load_site(Path(site))
        bad = bad.with_signature(site, key.sign(charter.to_bytes()))
    write_charter(path, bad)
    hotline("line", "sign", str(path), "--site", "sochi").one_line_error(message)
    result = hotline("line", "verify", str(path))
    assert result.code == EXIT_CHECK_FAILED, result.out
    assert message in result.err
    assert message in " ".join(hotline("line", "show", str(path)).out.split())


def test_sign_refuses_a_charter_whose_other_signatures_fail(hotline: Run) -> None:
    """A charter changed after a site signed it must not collect more signatures: `line
    sign` says which signature fails and leaves the file alone (issue 9, point 18)."""
    path = commission(hotline)
    data = json.loads(path.read_text())
    data["body"]["policy"]["rekey_interval_s"] = 86_400  # tampered after both signed
    data["signatures"].pop("washington")
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    hotline("line", "sign", str(path), "--site", "washington").one_line_error(
        "refusing to sign", "signature of site 'sochi'", "does not verify"
    )
    assert path.read_bytes() == before
    # re-signing one's own (now stale) signature is how a site renews it: still allowed
    # once every other signature verifies
    data["signatures"] = {"sochi": data["signatures"]["sochi"]}
    path.write_text(json.dumps(data))
    assert hotline("line", "sign", str(path), "--site", "sochi").code == 0
    assert hotline("line", "sign", str(path), "--site", "washington").code == 0
    assert hotline("line", "verify", str(path)).code == 0
    # a signature by a site the charter does not name is refused too
    data = json.loads(path.read_text())
    data["signatures"].pop("washington")
    data["signatures"]["moscow"] = data["signatures"]["sochi"]
    path.write_text(json.dumps(data))
    hotline("line", "sign", str(path), "--site", "washington").one_line_error(
        "refusing to sign", "'moscow'"
    )


def test_check_thresholds_in_the_policy(hotline: Run) -> None:
    commission(hotline)
    result = hotline(
        "line", "propose", "l", "--site", "sochi", "--check-threshold", "green_one_way_ms=100",
        "--check-threshold", "live_loss_permille=20", "--out", "strict.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    t = load_charter(Path("strict.json")).charter.policy.check_thresholds
    assert t.green_one_way_ms == 100 and t.live_loss_permille == 20 and t.amber_one_way_ms == 400
    shown = " ".join(hotline("line", "show", "strict.json").out.split())  # unwrapped
    assert "Check thresholds (signed in this charter)" in shown
    assert "one-way delay <= 100 ms" in shown and "loss > 2 %" in shown
    info = json.loads(hotline("line", "show", "strict.json", "--json").out)
    assert info["policy"]["check_thresholds"]["green_one_way_ms"] == 100
    assert "Check thresholds (defaults)" in hotline("line", "show", "line.json").out
    propose = ("line", "propose", "m", "--site", "sochi", "--out", "m.json")
    hotline(*propose, "--check-threshold", "green_one_way=1").one_line_error(
        "--check-threshold 'green_one_way=1': give NAME=VALUE"
    )
    hotline(*propose, "--check-threshold", "green_one_way_ms=fast").one_line_error(
        "the value must be an integer"
    )
    hotline(*propose, "--check-threshold", "green_one_way_ms=900").one_line_error(
        "green_one_way_ms = 900 is above amber_one_way_ms = 400"
    )
