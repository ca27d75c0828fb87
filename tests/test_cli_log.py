"""`hotline log show` and `hotline log verify`: happy paths, tampering, bad input."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.calllog import LOG_FILENAME, CallLog
from hotline.cli import main
from hotline.cli.common import console
from hotline.keys import SigningKey

T0 = 1_765_000_000.0
LINE = {"line_id": "sochi-washington", "charter_version": 1}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["hotline", *argv]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def keys() -> tuple[SigningKey, SigningKey]:
    return SigningKey.generate(), SigningKey.generate()


@pytest.fixture
def terminal_dir(tmp_path: Path, keys: tuple[SigningKey, SigningKey]) -> Path:
    """A terminal directory whose log holds one co-signed call."""
    key, peer = keys
    a_dir = tmp_path / "sochi"
    a_dir.mkdir()
    a = CallLog.open(a_dir / LOG_FILENAME, "sochi", key)
    b = CallLog.open(tmp_path / "peer.sqlite", "washington", peer)
    for log in (a, b):
        log.append("call-7", "ring", dict(LINE), T0)
        log.append("call-7", "epoch", {"epoch": 0, "roster": ["sochi", "washington"]}, T0 + 1)
        log.append("call-7", "security_code", {"epoch": 0, "security_code": "42424"}, T0 + 2)
        log.append("call-7", "hangup", {"reason": "[red]local[/]"}, T0 + 3)
    a.append("call-8", "ring", dict(LINE), T0 + 10)
    a.append("call-8", "decline", {"reason": "busy"}, T0 + 11)
    a.sign_summary("call-7", "washington", T0 + 4)
    summary, sig = b.sign_summary("call-7", "sochi", T0 + 4)
    a.add_cosignature("call-7", "washington", peer.public, summary, sig, T0 + 5)
    a.close()
    b.close()
    return a_dir


def test_show_table_and_json(
    capsys: pytest.CaptureFixture[str], terminal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "width", 200)  # one line per entry, for the asserts
    code, out, _ = run(capsys, "log", "show", "--terminal", str(terminal_dir))
    assert code == 0
    assert "call log of sochi" in out
    assert "security_code=42424" in out
    assert "[red]local[/]" in out  # payload text shown literally, not as markup
    assert "8 entries" in out

    code, out, _ = run(capsys, "log", "show", "--terminal", str(terminal_dir), "--call", "call-8")
    assert code == 0
    assert "decline" in out
    assert "42424" not in out

    log_file = terminal_dir / LOG_FILENAME
    code, out, _ = run(capsys, "log", "show", "--log", str(log_file), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["terminal_id"] == "sochi"
    assert [e["event"] for e in doc["entries"]] == [
        "ring",
        "epoch",
        "security_code",
        "hangup",
        "ring",
        "decline",
        "cosign",
        "cosign",
    ]
    assert doc["entries"][6]["payload"]["signer_id"] == "sochi"
    assert len(doc["entries"][6]["payload"]["signature"]) == 128  # bytes as hex


def test_verify_intact(
    capsys: pytest.CaptureFixture[str], terminal_dir: Path, keys: tuple[SigningKey, SigningKey]
) -> None:
    log_file = str(terminal_dir / LOG_FILENAME)
    key_hex = keys[0].public.hex()
    code, out, _ = run(capsys, "log", "verify", "--log", log_file, "--key", key_hex)
    assert code == 0
    assert "intact" in out
    assert "8 entries" in out
    assert "co-signed by washington" in out

    code, out, _ = run(
        capsys, "log", "verify", "--log", log_file, "--key", key_hex, "--json", "--terminal-id",
        "sochi",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True
    assert doc["entries"] == 8
    assert [c["signer_id"] for c in doc["cosignatures"]] == ["sochi", "washington"]


@pytest.mark.parametrize(
    ("statement", "index", "reason"),
    [
        ("UPDATE entries SET time_us = time_us + 1 WHERE idx = 2", 2, "hash_mismatch"),
        ("DELETE FROM entries WHERE idx = 1", 1, "gap"),
        ("DELETE FROM entries WHERE idx >= 6", 6, "truncated"),
        ("UPDATE entries SET signature = zeroblob(64) WHERE idx = 5", 5, "bad_signature"),
    ],
)
def test_verify_reports_the_first_bad_entry(
    capsys: pytest.CaptureFixture[str],
    terminal_dir: Path,
    *,
    keys: tuple[SigningKey, SigningKey],
    statement: str,
    index: int,
    reason: str,
) -> None:
    log_file = terminal_dir / LOG_FILENAME
    conn = sqlite3.connect(log_file)
    with conn:
        conn.execute(statement)
    conn.close()
    key_hex = keys[0].public.hex()
    code, out, _ = run(capsys, "log", "verify", "--log", str(log_file), "--key", key_hex)
    assert code == 1
    assert "NOT INTACT" in out
    assert f"entry {index}" in out
    code, out, _ = run(capsys, "log", "verify", "--log", str(log_file), "--key", key_hex, "--json")
    assert code == 1
    doc = json.loads(out)
    assert (doc["ok"], doc["index"], doc["reason"]) == (False, index, reason)


def test_verify_with_a_wrong_key_fails(
    capsys: pytest.CaptureFixture[str], terminal_dir: Path, keys: tuple[SigningKey, SigningKey]
) -> None:
    code, out, _ = run(
        capsys, "log", "verify", "--terminal", str(terminal_dir), "--key", keys[1].public.hex()
    )
    assert code == 1
    assert "head" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show"], "exactly one of --terminal DIR or --log FILE"),
        (["show", "--log", "{missing}"], "no such call log file"),
        (["show", "--log", "{junk}"], "not a call log"),
        (["verify", "--log", "{log}"], "exactly one of --key HEX or --charter FILE"),
        (["verify", "--log", "{log}", "--key", "abcd"], "--key: "),
        (["verify", "--log", "{log}", "--key", "zz"], "--key: "),
        (["verify", "--log", "{log}", "--charter", "{log}"], "--charter needs --terminal-id"),
        (["verify", "--log", "{log}", "--key", "{hex}", "--terminal-id", "x"], "not 'x'"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    capsys: pytest.CaptureFixture[str],
    terminal_dir: Path,
    *,
    keys: tuple[SigningKey, SigningKey],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite" * 100)
    values = {
        "missing": str(tmp_path / "absent.sqlite"),
        "junk": str(junk),
        "log": str(terminal_dir / LOG_FILENAME),
        "hex": keys[0].public.hex(),
    }
    argv = [a.format(**values) for a in args]
    code, out, err = run(capsys, "log", *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_corrupt_file_verify_in_a_real_process(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    proc = subprocess.run(
        [sys.executable, "-m", "hotline", "log", "verify", "--log", str(junk), "--key", "00" * 32],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "NOT INTACT" in proc.stdout


# --- --charter: an auditor with nothing but the line's charter ---------------------------------


@pytest.fixture
def charter_logs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Logs of two charter terminals with one co-signed call, and the charter file."""
    from tests.charters import KEYS, make_charter, sign_all

    a_key, b_key = KEYS[2], KEYS[4]  # sochi-principal, wh-principal
    charter_file = tmp_path / "charter.json"
    charter_file.write_bytes(sign_all(make_charter()).to_file_bytes())
    a = CallLog.open(tmp_path / "a.sqlite", "sochi-principal", a_key)
    b = CallLog.open(tmp_path / "b.sqlite", "wh-principal", b_key)
    for log in (a, b):
        log.append("c1", "ring", {"line_id": "sochi-washington", "charter_version": 1}, T0)
        roster = ["sochi-principal", "wh-principal"]
        log.append("c1", "epoch", {"epoch": 0, "roster": roster, "security_code": "1"}, T0)
    sa, ga = a.sign_summary("c1", "wh-principal", T0)
    sb, gb = b.sign_summary("c1", "sochi-principal", T0)
    a.add_cosignature("c1", "wh-principal", b_key.public, sb, gb, T0)
    b.add_cosignature("c1", "sochi-principal", a_key.public, sa, ga, T0)
    a.close()
    b.close()
    return tmp_path / "a.sqlite", tmp_path / "b.sqlite", charter_file


def test_verify_with_the_charter(
    capsys: pytest.CaptureFixture[str], charter_logs: tuple[Path, Path, Path]
) -> None:
    a, b, charter = charter_logs
    for log_file, tid in ((a, "sochi-principal"), (b, "wh-principal")):
        code, out, err = run(
            capsys, "log", "verify", "--log", str(log_file), "--charter", str(charter),
            "--terminal-id", tid, "--json",
        )  # fmt: skip
        assert code == 0, err
        doc = json.loads(out)
        assert doc["terminal_id"] == tid
        assert [c["identity_checked"] for c in doc["cosignatures"]] == [True, True]
    # the log of one terminal does not verify as another's
    code, _, err = run(
        capsys, "log", "verify", "--log", str(a), "--charter", str(charter),
        "--terminal-id", "wh-principal",
    )  # fmt: skip
    assert code == 2
    assert "not 'wh-principal'" in err


def test_verify_with_the_charter_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], charter_logs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from tests.charters import make_charter, sign_all

    a, _, charter = charter_logs
    code, _, err = run(
        capsys, "log", "verify", "--log", str(a), "--charter", str(charter),
        "--terminal-id", "nobody",
    )  # fmt: skip
    assert code == 2
    assert "nobody" in err
    assert len(err.strip().splitlines()) == 1
    # a charter missing one site's signature is not a source of keys
    signed = sign_all(make_charter())
    half = type(signed)(signed.charter, {"sochi": signed.signatures["sochi"]})
    half_file = tmp_path / "half.json"
    half_file.write_bytes(half.to_file_bytes())
    code, _, err = run(
        capsys, "log", "verify", "--log", str(a), "--charter", str(half_file),
        "--terminal-id", "sochi-principal",
    )  # fmt: skip
    assert code == 2
    assert "Traceback" not in err
    code, _, err = run(
        capsys, "log", "verify", "--log", str(a), "--charter", str(tmp_path / "none.json"),
        "--terminal-id", "sochi-principal",
    )  # fmt: skip
    assert code == 2
    assert len(err.strip().splitlines()) == 1
