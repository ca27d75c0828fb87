"""Helpers for the operations tests: the real ``hotline`` command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hotline.charter import Role
from hotline.exchange import tls
from hotline.localline import free_port  # noqa: F401 (re-exported: the one picker)
from hotline.provision import create_line, line_terminal_dir


def hotline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 (callers check the code)
        [sys.executable, "-m", "hotline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def hotline_json(*args: str) -> Any:
    result = hotline(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def small_line(root: Path, exchange_url: str = "ws://127.0.0.1:9/v1") -> tuple[Path, Path]:
    """A two-terminal line (alpha of east, bravo of west): the charter and alpha's folder."""
    charter = create_line(
        root,
        "east-west",
        {"east": [("alpha", Role.PRINCIPAL)], "west": [("bravo", Role.PRINCIPAL)]},
        exchanges=(exchange_url,),
    )
    return charter, line_terminal_dir(root, "alpha")


def exchange_dir(root: Path) -> Path:
    folder = root / "exchange"
    tls.create_certificate(folder)
    return folder


class Serving:
    """A ``hotline exchange serve`` process that has printed its ready line."""

    def __init__(self, proc: subprocess.Popen[str], ready: dict[str, Any]) -> None:
        self.proc = proc
        self.ready = ready
        self.url = str(ready["url"])
        self.http = self.url.replace("ws://", "http://").split("/v1/")[0]

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def serve_exchange(folder: Path, *args: str, env: dict[str, str] | None = None) -> Serving:
    """Start ``hotline exchange serve --dir FOLDER --insecure-loopback --json`` on a free
    port and wait for its ready line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotline", "exchange", "serve", "--dir", str(folder),
         "--insecure-loopback", "--listen", "127.0.0.1:0", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"the exchange did not start: {proc.stderr.read()}")
    return Serving(proc, json.loads(line))


class Process:
    """A long-running ``hotline`` process (exchange or terminal) started by a test."""

    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc = proc
        self.name = name

    def stop(self) -> str:
        """SIGTERM (then SIGKILL), and what it wrote on stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def start(*args: str, name: str = "hotline") -> Process:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotline", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    return Process(proc, name)


def start_exchange(folder: Path, port: int, *charters: Path, tls: bool = False) -> Process:
    """``hotline exchange serve`` on 127.0.0.1:PORT; returns once /readyz answers 200."""
    args = ["exchange", "serve", "--dir", str(folder), "--listen", f"127.0.0.1:{port}"]
    if not tls:
        args.append("--insecure-loopback")
    for c in charters:
        args += ["--charter", str(c)]
    process = start(*args, name="exchange")
    scheme = "https" if tls else "http"
    wait_until(
        lambda: _http_ok(f"{scheme}://127.0.0.1:{port}/readyz") or process.proc.poll() is not None,
        30,
        "the exchange to be ready",
    )
    if process.proc.poll() is not None:
        raise AssertionError(f"the exchange stopped: {process.stop()}")
    return process


def start_terminal(folder: Path, charter: Path, *args: str) -> Process:
    """``hotline terminal run``; returns once its control API answers."""
    (folder / "state" / "control.json").unlink(missing_ok=True)
    process = start(
        "terminal", "run", "-t", str(folder), "--charter", str(charter),
        "--interfaces", "loopback", "--no-scheduled-checks", *args,
        name=folder.name,
    )  # fmt: skip

    def up() -> bool:
        if process.proc.poll() is not None:
            return True
        return (folder / "state" / "control.json").exists()

    wait_until(up, 60, f"terminal {folder.name} to start")
    if process.proc.poll() is not None:
        raise AssertionError(f"terminal {folder.name} stopped: {process.stop()}")
    return process


def status(folder: Path) -> Any:
    return hotline_json("call", "status", "-t", str(folder), "--json")


def wait_until(condition: Any, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _http_ok(url: str) -> bool:
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test only asks whether it listens
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False
