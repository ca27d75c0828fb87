"""What every command shares: parallel signing (``line merge``), JSON documents with a
schema version and ``ok``, one-line usage errors, choices in ``--help``, output that is not
hard-wrapped when piped, shell completion."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.charter import KNOWN_CIPHER_SUITES, KNOWN_KEMS, load_charter
from hotline.cli.line import CipherSuite, Kem


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 (callers check the code)
        [sys.executable, "-m", "hotline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "40", **(env or {})},
    )


def ok(*args: str, cwd: Path) -> str:
    result = run(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sites with a terminal each, and one unsigned draft."""
    root = tmp_path_factory.mktemp("line")
    for site in ("a", "b", "c"):
        ok("site", "init", site, cwd=root)
        ok("terminal", "enroll", f"t-{site}", "--site", site, "--role", "principal", cwd=root)
    ok("line", "propose", "abc", "--site", "a", "--site", "b", "--site", "c", "-o", "draft.json",
       cwd=root)  # fmt: skip
    return root


def test_parallel_signatures_merge(three_sites: Path, tmp_path: Path) -> None:
    root = tmp_path
    shutil.copytree(three_sites, root, dirs_exist_ok=True)
    for site in ("a", "b", "c"):  # the proposer sends the draft to every site at once
        shutil.copy(root / "draft.json", root / f"by-{site}.json")
        signed = json.loads(ok("line", "sign", f"by-{site}.json", "--site", site, "--json",
                               cwd=root))  # fmt: skip
        assert signed["ok"] is True and signed["schema"] == 1
        assert signed["complete"] is False and site not in signed["missing"]
    merged = json.loads(ok("line", "merge", "by-a.json", "by-b.json", "-o", "two.json", "--json",
                           cwd=root))  # fmt: skip
    assert merged["ok"] is True and merged["missing"] == ["c"] and merged["complete"] is False
    text = ok("line", "merge", "two.json", "by-c.json", "by-a.json", "-o", "line.json", cwd=root)
    assert "every site has signed" in text
    assert run("line", "verify", "line.json", cwd=root).returncode == 0
    assert set(load_charter(root / "line.json").signatures) == {"a", "b", "c"}

    # a copy of different content is refused, naming the field
    doc = json.loads((root / "by-c.json").read_text())
    doc["body"]["policy"]["max_participants"] = 3
    (root / "changed.json").write_text(json.dumps(doc))
    one_line_error(
        run("line", "merge", "by-a.json", "changed.json", "-o", "x.json", cwd=root),
        2,
        "changed.json: not a copy of the same charter as by-a.json: policy.max_participants",
    )
    assert not (root / "x.json").exists()
    # a signature that does not verify is refused, naming the site
    doc = json.loads((root / "by-b.json").read_text())
    sig = doc["signatures"]["b"]
    doc["signatures"]["b"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    (root / "forged.json").write_text(json.dumps(doc))
    one_line_error(
        run("line", "merge", "by-a.json", "forged.json", "-o", "x.json", cwd=root),
        2,
        "forged.json: the signature of site 'b' does not verify",
    )
    # a failing --json command still prints one document, with ok false
    failed = run("line", "merge", "by-a.json", "forged.json", "-o", "x.json", "--json", cwd=root)
    assert failed.returncode == 2
    doc = json.loads(failed.stdout)
    assert set(doc) == {"schema", "ok", "reason", "error", "exit_code"}
    assert doc["ok"] is False and doc["exit_code"] == 2 and "site 'b'" in doc["error"]
    one_line_error(run("line", "merge", "by-a.json", "-o", "x.json", cwd=root), 2, "at least two")
    one_line_error(
        run("line", "merge", "by-a.json", "by-b.json", "-o", "by-c.json", cwd=root),
        2,
        "already exists",
    )


def test_every_report_is_a_json_document_with_schema_and_ok(three_sites: Path) -> None:
    root = three_sites
    ok("exchange", "init", "--dir", "ex", cwd=root)
    docs = {
        "propose": ["line", "propose", "abc", "--site", "a", "--site", "b", "--site", "c",
                    "-o", "again.json", "--force", "--json"],
        "show": ["line", "show", "draft.json", "--json"],
        "fingerprint": ["exchange", "fingerprint", "--dir", "ex", "--json"],
        "init": ["exchange", "init", "--dir", "ex2", "--json"],
        "site": ["site", "init", "d", "--json"],
        "enroll": ["terminal", "enroll", "t-d", "--site", "d", "--role", "aide", "--json"],
        "config": ["config", "show", "--exchange", "ex", "--json"],
        "version": ["version", "--json"],
    }  # fmt: skip
    for name, args in docs.items():
        doc = json.loads(ok(*args, cwd=root))
        assert doc["schema"] == 1 and doc["ok"] is True, (name, doc)
    fingerprint = json.loads(ok(*docs["fingerprint"], cwd=root))["tls_fingerprint"]
    assert fingerprint == ok("exchange", "fingerprint", "--dir", "ex", cwd=root).strip()
    verdict = run("line", "verify", "draft.json", "--json", cwd=root)
    assert verdict.returncode == 1
    assert json.loads(verdict.stdout)["ok"] is False


def test_piped_output_is_never_hard_wrapped(three_sites: Path) -> None:
    """COLUMNS=40 and a pipe: a fingerprint, a digest and a path stay on one line each."""
    root = three_sites
    show = ok("line", "show", "draft.json", cwd=root)
    digest = json.loads(ok("line", "show", "draft.json", "--json", cwd=root))["digest_code"]
    assert f"Charter digest (read aloud): {digest}" in show.splitlines()
    name = "a-rather-long-file-name-for-a-charter.json"
    propose = ok("line", "propose", "abc", "--site", "a", "--site", "b", "--site", "c",
                 "-o", name, "--force", cwd=root)  # fmt: skip
    first = propose.splitlines()[0]
    assert first.endswith("-> a-rather-long-file-name-for-a-charter.json"), propose
    digests = [line for line in propose.splitlines() if line.startswith("  charter digest:")]
    assert len(digests) == 1 and re.fullmatch(r"  charter digest: \d{5}( \d{5}){5}", digests[0])


def test_usage_errors_are_one_line_and_exit_2(three_sites: Path) -> None:
    root = three_sites
    one_line_error(run("line", "bogus", cwd=root), 2, "No such command 'bogus'")
    one_line_error(
        run("line", "propose", "x", "--site", "a", "-o", "y.json", "--cipher-suite", "ROT13",
            cwd=root), 2, "'--cipher-suite'", "ROT13")  # fmt: skip
    one_line_error(
        run("terminal", "run", "-t", "t-a", "--charter", "draft.json", "--control-port", "70000",
            cwd=root), 2, "--control-port 70000", "0 to 65535")  # fmt: skip
    one_line_error(
        run("terminal", "run", "-t", "t-a", "--charter", "draft.json", "--control-port", "x",
            cwd=root), 2, "'--control-port'")  # fmt: skip
    one_line_error(
        run("terminal", "run", "-t", "t-a", "--charter", "draft.json", "--log-level", "loud",
            cwd=root), 2, "'--log-level'", "'debug', 'info', 'warning', 'error'")  # fmt: skip


def test_help_shows_choices(three_sites: Path) -> None:
    env = {"COLUMNS": "200"}
    propose = run("line", "propose", "--help", cwd=three_sites, env=env).stdout
    assert "AES_128_GCM_SHA256_128|AES_256_GCM_SHA512_128" in propose
    assert "MLKEM768_X25519|X25519" in propose
    enroll = run("terminal", "enroll", "--help", cwd=three_sites, env=env).stdout
    assert "principal|interpreter|aide|probe" in enroll
    terminal = run("terminal", "run", "--help", cwd=three_sites, env=env).stdout
    assert "debug|info|warning|error" in terminal and "text|json" in terminal
    assert "loopback|all|IP" in terminal
    # the enums are the charter's own lists
    assert {s.value for s in CipherSuite} == KNOWN_CIPHER_SUITES
    assert {k.value for k in Kem} == KNOWN_KEMS


def test_shell_completion(three_sites: Path) -> None:
    # typer detects the shell it is run from (a parent process): here bash, as for a user
    hotline = Path(sys.executable).parent / "hotline"
    script = subprocess.run(
        ["bash", "-c", f"{hotline} --show-completion; echo exit=$?"],
        check=False, capture_output=True, text=True, timeout=60, cwd=three_sites,
    )  # fmt: skip
    assert "exit=0" in script.stdout and "_HOTLINE_COMPLETE=complete_bash" in script.stdout, script
    assert "complete -o default -F _hotline_completion hotline" in script.stdout, script
    words = run(
        cwd=three_sites,
        env={"_HOTLINE_COMPLETE": "complete_bash", "COMP_WORDS": "hotline li", "COMP_CWORD": "1"},
    )
    assert "line" in words.stdout.split(), words
    words = run(
        cwd=three_sites,
        env={
            "_HOTLINE_COMPLETE": "complete_bash",
            "COMP_WORDS": "hotline terminal enroll x --role ",
            "COMP_CWORD": "5",
        },
    )
    assert {"principal", "interpreter", "aide", "probe"} <= set(words.stdout.split()), words
