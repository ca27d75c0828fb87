"""The README's and docs/operations.md's commands, run verbatim.

Every fenced ``sh`` block preceded by ``<!-- doc-test: SIDE -->`` is run as written by
``bash -e`` in the folder of that side (a fresh temporary folder per side: the two sides of
a line share no files), in document order. ``<!-- doc-test: copy A -> B: PATH... -->`` is a
hand-over the text describes (a courier, e-mail): the paths are copied from side A's folder
to the same place in side B's. Lines ending in ``&`` start long-running processes (the
exchange, terminals) as the text says; they are stopped at the end.

Each document runs in a network namespace of its own with only a loopback interface, so the
fixed addresses the docs use (127.0.0.1:8443) never meet another test's, and nothing can
leave the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MARK = re.compile(r"^<!-- doc-test: (?P<spec>.+?) -->\s*$")
COPY = re.compile(r"copy (?P<src>[\w.-]+) -> (?P<dst>[\w.-]+): (?P<paths>.+)")
NOT_RUN = re.compile(r"not run: \S.{9,}")
BLOCK_TIMEOUT_S = 120


@dataclass
class Step:
    line: int
    side: str
    script: str = ""
    copy_to: str | None = None
    paths: tuple[str, ...] = ()


def steps(document: Path) -> list[Step]:
    """The marked blocks and hand-overs of ``document``, in order."""
    lines = document.read_text(encoding="utf-8").splitlines()
    found: list[Step] = []
    i = 0
    while i < len(lines):
        mark = MARK.match(lines[i])
        i += 1
        if mark is None:
            continue
        spec = mark.group("spec")
        if spec.startswith("not run"):  # a synopsis, or what needs a machine of its own
            assert NOT_RUN.fullmatch(spec), f"{document}:{i}: say why a block is not run"
            continue
        copy = COPY.fullmatch(spec)
        if copy is not None:
            found.append(
                Step(i, copy["src"], copy_to=copy["dst"], paths=tuple(copy["paths"].split()))
            )
            continue
        assert lines[i].strip() == "```sh", f"{document}:{i + 1}: a doc-test mark needs ```sh"
        end = lines.index("```", i + 1)
        found.append(Step(i, spec, script="\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return found


class Namespace:
    """A network namespace with only loopback, held open by a sleeping process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 3600"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "up":
            self.holder.kill()
            raise AssertionError("could not bring up loopback in a new network namespace")

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net"]

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def run_document(document: Path, root: Path) -> list[str]:
    """Run every step; return a transcript. Raises AssertionError at the first failure."""
    namespace = Namespace()
    sessions: list[int] = []
    transcript: list[str] = []
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOTLINE_PASSPHRASE": "",
    }
    env.pop("HOTLINE_PASSPHRASE")
    try:
        for n, step in enumerate(steps(document)):
            side = root / step.side
            side.mkdir(exist_ok=True)
            where = f"{document.name}:{step.line}"
            if step.copy_to is not None:
                target = root / step.copy_to
                target.mkdir(exist_ok=True)
                for name in step.paths:
                    src, dst = side / name, target / name
                    assert src.exists(), f"{where}: {step.side} has no {name} to hand over"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if src.is_dir():
                        shutil.copytree(src, dst, dirs_exist_ok=True)
                    else:
                        shutil.copy2(src, dst)
                transcript.append(f"{where}: copied {' '.join(step.paths)} to {step.copy_to}")
                continue
            out = root / f"step-{n}.out"
            began = time.monotonic()
            with out.open("w") as sink:
                proc = subprocess.Popen(
                    [*namespace.prefix(), "bash", "-e", "-o", "pipefail", "-c", step.script],
                    cwd=side,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its background jobs are stopped with it at the end
                )
                sessions.append(proc.pid)
                try:
                    code = proc.wait(BLOCK_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    code = None
            text = out.read_text(errors="replace")
            took = time.monotonic() - began
            transcript.append(
                f"{where} ({step.side}) exit {code} in {took:.1f} s:\n{step.script}{text}"
            )
            if code != 0:
                # background processes may still be writing: read once more after a moment
                time.sleep(0.5)
                raise AssertionError(
                    f"{where}: the block run on side {step.side!r} exited {code}:\n"
                    f"{step.script}--- output ---\n{out.read_text(errors='replace')}"
                )
    finally:
        for pgid in sessions:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in sessions):
            time.sleep(0.2)
        for pgid in sessions:
            _signal_group(pgid, signal.SIGKILL)
        namespace.close()
    return transcript


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_every_shell_block_is_run_or_says_why_not() -> None:
    """A command in the docs is either run by this test or marked with the reason it is not
    (a synopsis with placeholders, or what needs systemd or a machine of its own)."""
    for document in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        lines = document.read_text(encoding="utf-8").splitlines()
        unmarked = [
            n + 1
            for n, text in enumerate(lines)
            if text.strip() == "```sh" and (n == 0 or MARK.match(lines[n - 1]) is None)
        ]
        assert not unmarked, f"{document.name}: sh blocks without a doc-test mark at {unmarked}"


def test_docs_have_marked_blocks() -> None:
    readme = steps(ROOT / "README.md")
    operations = steps(ROOT / "docs" / "operations.md")
    assert len(readme) == 1 and "hotline call dial" in readme[0].script
    sides = {s.side for s in operations if s.copy_to is None}
    assert sides == {"sochi", "washington"}, sides
    assert any(s.copy_to for s in operations)
    commands = "".join(s.script for s in operations)
    for verb in ("site init", "terminal enroll", "exchange init", "line propose", "line sign",
                 "line show", "line verify", "exchange serve", "terminal run", "call dial",
                 "check run", "log verify", "exchange events", "backup", "restore",
                 "exchange stop", "terminal stop", "terminal install-charter",
                 "exchange install-charter", "site rotate-key"):  # fmt: skip
        assert f"hotline {verb}" in commands, verb


@pytest.mark.timeout(300)  # ~65 s on 2 cores; twice that on a host loaded beside it
def test_the_docs_commands_run_verbatim(tmp_path: Path) -> None:
    require(
        os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "nsenter", "ip")),
        "needs root with unshare, nsenter and ip (a network namespace per document)",
    )
    require(shutil.which("curl") is not None, "needs curl (the daily checks use it)")
    documents = {"readme": ROOT / "README.md", "operations": ROOT / "docs" / "operations.md"}
    for name in documents:
        (tmp_path / name).mkdir()
    with ThreadPoolExecutor(len(documents)) as pool:  # two namespaces: they run side by side
        futures = {n: pool.submit(run_document, d, tmp_path / n) for n, d in documents.items()}
        transcripts = {n: f.result() for n, f in futures.items()}
    readme = "\n".join(transcripts["readme"])
    assert "OK: line moscow-washington version 1 is complete" in readme
    assert "security code:" in readme
    operations = "\n".join(transcripts["operations"])
    assert "OK: line sochi-washington version 1 is complete" in operations
    assert "security code:" in operations
    assert re.search(r"line check to us-probe: (GREEN|AMBER)", operations), operations
    # the runbook, rehearsed: a restore, a replaced terminal key, a rotated operator key
    # with its handover, and a stolen one re-anchored by hand, the line proven after it
    assert "site folder restored" in operations
    for version in (2, 3, 4):
        assert f"OK: line sochi-washington version {version} is complete" in operations
    assert "version 2 installed (was 1)" in operations
    assert "version 3 installed (was 2)" in operations
    assert operations.count("version 4 re-anchored by hand (was 3)") == 5  # 4 terminals, 1 exchange
    assert len(re.findall(r"line check to us-probe: (?:GREEN|AMBER)", operations)) == 2
    assert re.search(r"the terminal in terminals/us-principal stopped \(pid \d+\)", operations)
